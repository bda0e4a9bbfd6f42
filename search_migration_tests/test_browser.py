"""The operator's view for real: Debian's chromium (driven by browser/operator_view.mjs) on a live `dagster dev`
with the demo corpus sees the migration's assets, gates and topic × week partitions, launches a backfill of a few
partitions from the Materialize dialog, and those partitions' documents land in PostgreSQL.

Screenshots go to the test's tmp dir; SEARCH_MIGRATION_SCREENSHOTS=docs/screenshots refreshes the README's.
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from search_migration import backfill
from search_migration import db
from search_migration.backfill.partition_keys import topic_partition_key
from search_migration.defs.backfill import BACKFILL_START, window_of
from search_migration.gates.policy import DRIFT_CHECKS, QUALITY_CHECKS

from .support.backfill import actual, expected
from .support.servers import REPO
from .support.ui import DEV_TOPICS as TOPICS, DevServer, backfill_status, graphql, launch_asset_run, run_status
from .support.writes import set_mode

BROWSER = REPO / "browser"
CHROMIUM = "/usr/bin/chromium"
ASSETS = ["events_outbox", "meili_index", "backfill_high_watermark", "post_search_documents", "search_drift_report",
          "shadow_read_report"]


@pytest.fixture
def browser():
    missing = [p for p in (Path(CHROMIUM), BROWSER / "node_modules" / "playwright-core") if not p.exists()]
    assert not missing, f"{missing} missing: run scripts/browser-setup (scripts/test runs it)"


def operator_view(config: dict, tmp_path: Path) -> dict:
    """One phase of browser/operator_view.mjs; on failure, its message names the step and the screenshot."""
    shots = Path(os.environ.get("SEARCH_MIGRATION_SCREENSHOTS") or tmp_path / "screenshots").resolve()
    shots.mkdir(parents=True, exist_ok=True)
    config = {**config, "chromium": CHROMIUM, "screenshots": str(shots), "failures": str(tmp_path)}
    proc = subprocess.run([shutil.which("node") or "node", "operator_view.mjs", json.dumps(config)], cwd=BROWSER,
                          capture_output=True, text=True, timeout=360)
    assert proc.returncode == 0, f"operator_view.mjs {config['phase']}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def topic_keys(port: int) -> list[str]:
    node = graphql(port, """{ assetNodeOrError(assetKey: {path: ["post_search_documents"]}) {
        ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }""")["assetNodeOrError"]
    return next(d["partitionKeys"] for d in node["partitionKeysByDimension"] if d["name"] == "topic")


def backfill_runs(port: int, backfill_id: str) -> list[str]:
    runs = graphql(port, """query($id: String!) { runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
        ... on Runs { results { status } } } }""", {"id": backfill_id})["runsOrError"]["results"]
    return [r["status"] for r in runs]


@pytest.mark.timeout(900)
def test_an_operator_backfills_partitions_from_the_ui(browser, dev: DevServer, tmp_path):
    port, database_url = dev.port, dev.database_url
    dev.wait_for(lambda: len(topic_keys(port)) == TOPICS, 300, "topic_partitions_sensor to add the demo topics")
    with db.connect(database_url) as conn:
        set_mode(conn, "dual", reason="browser test: backfill needs dual")
    watermark_run = launch_asset_run(port, "backfill_high_watermark")
    assert dev.wait_for(lambda: run_status(port, watermark_run), 240, "the watermark run") == "SUCCESS"

    with db.connect(database_url) as conn:
        wm = backfill.latest_watermark(conn)
        # the two busiest topics and, within them, the two busiest weeks: partitions with documents to copy
        topics = [t for (t,) in conn.execute("SELECT topic_id FROM cn_search.backfill_manifest GROUP BY 1 "
                                             "ORDER BY count(*) DESC, 1 LIMIT 2")]
        weeks = [w for (w,) in conn.execute(
            "SELECT to_char(to_timestamp(chunk_at - (chunk_at - %s) %% 604800) AT TIME ZONE 'UTC', 'YYYY-MM-DD') "
            "FROM cn_search.backfill_manifest WHERE topic_id = ANY(%s) GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 2",
            (calendar.timegm(time.strptime(BACKFILL_START, "%Y-%m-%d")), topics))]
        # a post dated outside the partitions' span (backdated by years) is chunked into the edge week
        floor, ceiling = conn.execute("SELECT chunk_floor, chunk_ceiling FROM cn_search.backfill_watermarks "
                                      "WHERE watermark_id = %s", (wm.watermark_id,)).fetchone()
    keys = {f"{w}|{topic_partition_key(t)}" for w in weeks for t in topics}

    # Dagster's first-visit newsletter dialog (shown on localhost) would cover the page at a random moment:
    # mark it seen on the server, as dismissing it in the UI does
    assert graphql(port, "mutation { setNuxSeen }")["setNuxSeen"]
    launched = operator_view({"phase": "launch", "base": f"http://127.0.0.1:{port}", "assets": ASSETS,
                              "checks": {"search_drift_report": list(DRIFT_CHECKS),
                                         "shadow_read_report": list(QUALITY_CHECKS)},
                              "weeks": weeks, "topics": [topic_partition_key(t) for t in topics]}, tmp_path)
    backfill_id = launched["backfillId"]
    b = graphql(port, 'query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill '
                      '{ partitionNames assetSelection { path } } } }', {"id": backfill_id})["partitionBackfillOrError"]
    assert set(b["partitionNames"]) == keys and b["assetSelection"] == [{"path": ["post_search_documents"]}]

    status = dev.wait_for(lambda: backfill_status(port, backfill_id), 480, "the UI's backfill to finish")
    counts = status["assetBackfillData"]["assetBackfillStatuses"][0]
    assert status["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), status
    assert counts["numPartitionsMaterialized"] == counts["numPartitionsTargeted"] == len(keys)
    runs = backfill_runs(port, backfill_id)
    assert runs and set(runs) == {"SUCCESS"}, runs

    with db.connect(database_url) as conn:
        created = {e: min(max(c, floor), ceiling - 1)
                   for e, c in conn.execute("SELECT event_id, created_at FROM cn_relay.events")}
        windows = {topic: [] for topic in topics}
        for key in keys:
            topic, window = window_of(key)
            windows[topic].append(window)
        want = {r for r in expected(conn, wm.seq) if r[0] in windows and any(
            w.start <= created[r[1]] < w.end for w in windows[r[0]])}
        got = actual(conn)
    assert want and got == want  # exactly the chosen partitions, every document at its watermark version

    after = operator_view({"phase": "after", "base": f"http://127.0.0.1:{port}", "backfillId": backfill_id}, tmp_path)
    shots = launched["screenshots"] + after["screenshots"]
    assert [Path(s).stem for s in shots] == ["asset-graph", "gates", "partitions", "launch-backfill",
                                             "backfill-completed", "asset-overview"]
    for s in shots:
        data = Path(s).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000, s
