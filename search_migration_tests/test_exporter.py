"""The /metrics endpoint, scraped over HTTP, against real state after a dead letter and a retry."""

from __future__ import annotations

import re
import urllib.request

from search_migration import db
from search_migration.ops import exporter
from search_migration.cutover import flags
from search_migration.write_path import consumer

from .support.servers import REPO, free_port
from .support.writes import FAST, new_posts


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z0-9_]+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def test_metrics_read_durable_state(seeded, meili):
    with db.connect(seeded) as conn:
        flags.set_flags(conn, {"search_write_mode": "dual"}, by="test", reason="metrics test")
        rows = new_posts(conn, 3, "metrics")
        # a row the product stored malformed (raw_json is not a signed event): a dead letter for every engine
        conn.execute("UPDATE cn_relay.events SET raw_json = '\"garbled\"'::jsonb WHERE event_id = %s", (rows[1][0],))
        conn.execute("CREATE FUNCTION cn_search.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'injected'; END $$; CREATE TRIGGER refuse BEFORE INSERT "
                     "ON cn_search.post_search_documents FOR EACH ROW EXECUTE FUNCTION cn_search.refuse();")
        assert consumer.catch_up(conn, meili, retry=FAST).stalled
        conn.execute("DROP TRIGGER refuse ON cn_search.post_search_documents")
        assert not consumer.catch_up(conn, meili, retry=FAST).stalled
        new_posts(conn, 4, "backlog")  # not caught up: the backlog
    port = free_port()
    server, thread = exporter.serve(lambda: db.connect(seeded), "127.0.0.1", port)
    try:
        m = scrape(port)
    finally:
        server.shutdown()
    assert m['search_dual_write_errors_total{backend="pg",operation="upsert"}'] == 1
    assert m['search_dual_write_errors_total{backend="source",operation="upsert"}'] == 1
    assert m['search_dual_write_retries_total{backend="pg",operation="upsert"}'] == 1
    assert m['search_dead_letters{backend="source",reason="malformed_payload"}'] == 1
    assert m['outbox_backlog{consumer="search-migration"}'] == 4
    assert m['search_migration_stage{stage="dual"}'] == 1 and m['search_migration_stage{stage="legacy"}'] == 0
    assert m['search_migration_flag{flag="search_write_mode",value="dual"}'] == 1
    assert {"backfill_processed_rows", "backfill_eta_seconds", "shadow_overlap_at_10", "shadow_latency_delta_ms"} <= set(m)
    # freshness: every row the catch-up applied observed once per engine (the 3 new posts' outbox rows)
    for backend in ("pg", "meili"):
        count = m[f'search_index_freshness_seconds_count{{backend="{backend}"}}']
        assert count >= 3 and m[f'search_index_freshness_seconds_bucket{{backend="{backend}",le="+Inf"}}'] == count
        assert m[f'search_index_freshness_seconds_sum{{backend="{backend}"}}'] > 0


def test_the_grafana_dashboard_uses_only_exported_metric_names(seeded):
    import json

    port = free_port()
    server, _ = exporter.serve(lambda: db.connect(seeded), "127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            exported = set(re.findall(r"^# TYPE (\S+) ", resp.read().decode(), re.M))
    finally:
        server.shutdown()
    exported |= {f"{name}_total" for name in exported}  # counters are exposed with their _total samples
    dashboard = json.loads((REPO / "ops" / "grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"]
            for m in re.findall(r"\b((?:search|shadow|backfill|outbox)_[a-z0-9_]+)\b", t["expr"])}
    assert used and used <= exported, used - exported
