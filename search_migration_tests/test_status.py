"""`search-migration status [--json]` reports the backfill as it stands, from the database alone."""

from __future__ import annotations

import json

import pytest

from search_migration import backfill
from search_migration import db
from search_migration.backfill import PartitionOptions
from search_migration.source import contract

from .support.backfill import capture, WINDOWS
from .support.processes import run_cli
from .support.writes import seed_source, set_mode


@pytest.fixture
def dagster_home(tmp_path):
    """A Dagster instance of its own (no gate evaluated yet): `status` reads the gates from it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def status(servers, url: str, *args: str, home=None):
    return run_cli("status", *args, env=servers.env(DATABASE_URL=url, **({"DAGSTER_HOME": str(home)} if home else {})))


def test_status_before_and_during_a_backfill(servers, database_url, dagster_home):
    migrated_url = database_url
    seed_source(migrated_url, 600, 2, namespace="status")
    out = status(servers, migrated_url, home=dagster_home)
    assert out.returncode == 0, out.stderr
    assert "backfill: not started" in out.stdout
    assert "gates:" in out.stdout and "never evaluated" in out.stdout

    with db.connect(migrated_url) as conn:
        set_mode(conn, "dual")
        wm = capture(conn, by="test")
        contract.set_consumer_offset(conn, contract.CONSUMER, wm.seq - 5)  # our consumer, 5 rows behind
        topic = contract.topic_ids(conn)[0]
    done = [backfill.run_partition(migrated_url, f"k{i}", topic, w, owner="t", options=PartitionOptions(page_size=7))
            for i, w in enumerate(WINDOWS[:3])]
    rows_done = sum(r.rows_done for r in done)
    assert 0 < rows_done < wm.manifest_rows

    out = status(servers, migrated_url, "--json", home=dagster_home)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    b = report["backfill"]
    assert (b["high_watermark"], b["rows_total"], b["rows_done"]) == (wm.seq, wm.manifest_rows, rows_done)
    assert b["partitions"] == {"succeeded": 3}
    # the rate comes from pages committed in the last minute; the ETA is what remains at that rate
    assert b["rows_per_second"] > 0 and b["eta_seconds"] > 0
    assert abs(b["eta_seconds"] - (wm.manifest_rows - rows_done) / b["rows_per_second"]) < 0.05 * b["eta_seconds"] + 1
    assert report["outbox"]["lag"] == 5

    text = status(servers, migrated_url, home=dagster_home)
    assert f"backfill: {rows_done}/{wm.manifest_rows} rows" in text.stdout and "succeeded 3" in text.stdout

    # nothing moved in the last minute: no honest ETA
    with db.connect(migrated_url) as conn:
        conn.execute("UPDATE cn_search.backfill_page_log SET logged_at = logged_at - interval '10 minutes'")
        p = backfill.progress(conn)
    assert p.rows_per_second == 0 and p.eta_seconds is None and p.rows_done == rows_done


def test_status_exits_non_zero_when_a_section_fails(servers, migrated_url, dagster_home):
    with db.connect(migrated_url) as conn:
        conn.execute("ALTER TABLE cn_search.dead_letters RENAME TO dead_letters_elsewhere")
    out = status(servers, migrated_url, home=dagster_home)
    assert out.returncode == 1
    assert "dead_letters: error: UndefinedTable" in out.stdout
    assert "stage: legacy" in out.stdout and "backfill: not started" in out.stdout  # the others still report
    assert out.stderr.strip() == "error: status sections failed: dead_letters"
    # without a Dagster instance the gates cannot be read: that is a failed section too
    alone = status(servers, migrated_url, home=dagster_home / "missing")
    assert alone.returncode == 1 and "gates: error: no Dagster instance" in alone.stdout
