"""`search-migration status [--json]` reports the backfill as it stands, from the database alone."""

from __future__ import annotations

import json

from search_migration import backfill
from search_migration import db
from search_migration.backfill import PartitionOptions
from search_migration.local.demo_corpus import topic_ids

from .support.backfill import capture, WINDOWS
from .support.processes import run_cli
from .support.writes import seed_source, set_mode


def status(servers, url: str, *args: str):
    return run_cli("status", *args, env=servers.env(DATABASE_URL=url, MEILI_INDEX="unused"))


def test_status_before_and_during_a_backfill(servers, migrated_url):
    seed_source(migrated_url, 600, 2)
    out = status(servers, migrated_url)
    assert out.returncode == 0, out.stderr
    assert "backfill: not started" in out.stdout

    with db.connect(migrated_url) as conn:
        set_mode(conn, "dual")
        wm = capture(conn, by="test")
        conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES ('search_indexer', %s)",
                     (wm.seq - 5,))
    topic = topic_ids(2)[0]
    done = [backfill.run_partition(migrated_url, f"k{i}", topic, w, owner="t", options=PartitionOptions(page_size=7))
            for i, w in enumerate(WINDOWS[:3])]
    rows_done = sum(r.rows_done for r in done)
    assert 0 < rows_done < wm.manifest_rows

    out = status(servers, migrated_url, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    b = report["backfill"]
    assert (b["high_watermark"], b["rows_total"], b["rows_done"]) == (wm.seq, wm.manifest_rows, rows_done)
    assert b["partitions"] == {"succeeded": 3}
    # the rate comes from pages committed in the last minute; the ETA is what remains at that rate
    assert b["rows_per_second"] > 0 and b["eta_seconds"] > 0
    assert abs(b["eta_seconds"] - (wm.manifest_rows - rows_done) / b["rows_per_second"]) < 0.05 * b["eta_seconds"] + 1
    assert report["outbox"]["lag"] == 5

    text = status(servers, migrated_url)
    assert f"backfill: {rows_done}/{wm.manifest_rows} rows" in text.stdout and "succeeded 3" in text.stdout

    # nothing moved in the last minute: no honest ETA
    with db.connect(migrated_url) as conn:
        conn.execute("UPDATE cn_search.backfill_page_log SET logged_at = logged_at - interval '10 minutes'")
        p = backfill.progress(conn)
    assert p.rows_per_second == 0 and p.eta_seconds is None and p.rows_done == rows_done
