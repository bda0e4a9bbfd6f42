"""The backfill through the Dagster UI: a UI backfill of every partition copies the demo corpus at the
watermark. (A killed run resuming after its checkpoint is drills/test_sigkill.py.)"""

from __future__ import annotations

import pytest

from search_migration import backfill
from search_migration import db
from search_migration.backfill.partition_keys import topic_partition_key
from search_migration.source import contract

from .support.backfill import actual, expected
from .support.ui import DEV_POSTS as POSTS, DEV_TOPICS as TOPICS
from .support.ui import REPO_SELECTOR, DevServer, asset_nodes, backfill_status, launch_asset_run, run_status
from .support.writes import set_mode


@pytest.mark.timeout(1800)  # ~3 min on a 2-core machine: one multi_run(1000) run of 820 partitions
def test_a_ui_backfill_copies_the_demo_corpus_at_the_watermark(dev: DevServer):
    port, database_url = dev.port, dev.database_url
    dev.wait_for(lambda: asset_nodes(port), 400, "the Dagster UI to list assets")

    # the watermark refuses while writes are meili_only ...
    refused = launch_asset_run(port, "backfill_high_watermark")
    assert dev.wait_for(lambda: run_status(port, refused), 240, "the refused run") == "FAILURE"
    with db.connect(database_url) as conn:
        assert backfill.latest_watermark(conn) is None
        set_mode(conn, "dual", reason="start dual writes")
    # ... and captures once they are dual
    captured = launch_asset_run(port, "backfill_high_watermark")
    assert dev.wait_for(lambda: run_status(port, captured), 240, "the watermark run") == "SUCCESS"

    with db.connect(database_url) as conn:
        topics = contract.topic_ids(conn)  # the product's topics, as the demo wrote them
    assert len(topics) == TOPICS and all(t.startswith("kukuri:") for t in topics)
    for t in topics:
        added = dev.graphql("""mutation($r: RepositorySelector!, $key: String!) {
            addDynamicPartition(repositorySelector: $r, partitionsDefName: "topics", partitionKey: $key) {
              __typename } }""", {"r": REPO_SELECTOR, "key": topic_partition_key(t)})["addDynamicPartition"]
        assert added["__typename"] in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"), added

    launched = dev.graphql("""mutation($params: LaunchBackfillParams!) {
        launchPartitionBackfill(backfillParams: $params) {
          __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                           {"params": {"assetSelection": [{"path": ["post_search_documents"]}],
                                       "allPartitions": True}})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    b = dev.wait_for(lambda: backfill_status(port, backfill_id), 900, "the backfill to finish")
    counts = b["assetBackfillData"]["assetBackfillStatuses"][0]
    assert b["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), b
    assert counts["numPartitionsFailed"] == 0
    assert counts["numPartitionsMaterialized"] == counts["numPartitionsTargeted"] > 0

    with db.connect(database_url) as conn:
        wm = backfill.latest_watermark(conn)
        want, got = expected(conn, wm.seq), actual(conn)
        for t in topics:  # per topic, by id and content hash
            assert {r for r in got if r[0] == t} == {r for r in want if r[0] == t}, t
        assert got == want and len(want) > POSTS
        assert conn.execute("SELECT count(*) FROM cn_search.post_search_documents WHERE is_deleted").fetchone()[0] == 0
        p = backfill.progress(conn)
        assert p.rows_done == p.rows_total == wm.manifest_rows and p.partitions == {"succeeded": counts[
            "numPartitionsTargeted"]}
