"""The backfill through real Dagster runs: a killed run resumes; a UI backfill copies the demo corpus."""

from __future__ import annotations

import pytest

from search_migration import backfill
from search_migration import db
from search_migration.local import demo_seed
from search_migration.cutover import flags
from search_migration.local.demo_corpus import topic_ids
from search_migration.backfill.partition_keys import topic_partition_key

from .conftest import dagster_dev, poll
from .drills.helpers import busiest_week, checkpointed, dagster_home, kill_group, materialize, partition_key
from .test_backfill import actual, expected
from .test_dev_ui import graphql, wait_for


def test_a_sigkilled_run_resumes_after_its_checkpoint(servers, migrated_url, tmp_path):
    with db.connect(migrated_url) as conn:
        demo_seed.write_source(conn, 2000, 2, 42)
        flags.set_flags(conn, {"search_write_mode": "dual"}, by="test", reason="backfill test")
        wm = backfill.capture_watermark(conn, by="test")
        topic, start, _ = busiest_week(conn)
    key = partition_key(topic, start)
    env = servers.env(DATABASE_URL=migrated_url, DAGSTER_HOME=str(dagster_home(tmp_path, topic_ids(2))),
                      MEILI_INDEX="unused")
    config = {"page_size": 5, "max_rows_per_second": 6, "lease_timeout_seconds": 3}

    run = materialize(env, key, config, tmp_path / "killed.log")
    with db.connect(migrated_url) as conn:
        poll(checkpointed(conn, run, tmp_path / "killed.log", key, 5), 240, "the first checkpoint")
        kill_group(run)
        done_at_kill, total = conn.execute(
            "SELECT c.rows_done, j.rows_total FROM cn_search.backfill_checkpoints c "
            "JOIN cn_search.backfill_jobs j USING (partition_key) WHERE partition_key = %s", (key,)).fetchone()
        assert 0 < done_at_kill < total, "the kill must land mid-partition"
        assert conn.execute("SELECT status FROM cn_search.backfill_jobs WHERE partition_key = %s",
                            (key,)).fetchone()[0] == "running"  # nobody marked it: the process just died
        # the dead holder's lease expires (heartbeat older than the timeout) before the retry
        poll(lambda: conn.execute("SELECT heartbeat_at < now() - interval '3 seconds' FROM cn_search.backfill_jobs "
                                  "WHERE partition_key = %s", (key,)).fetchone()[0], 60, "the lease to expire")
        done_before_retry = conn.execute("SELECT rows_done FROM cn_search.backfill_checkpoints "
                                         "WHERE partition_key = %s", (key,)).fetchone()[0]

        config["max_rows_per_second"] = 0
        retry = materialize(env, key, config, tmp_path / "retry.log")
        assert retry.wait(timeout=300) == 0, (tmp_path / "retry.log").read_text()[-3000:]

        status, attempts, copied, skipped = conn.execute(
            "SELECT status, attempts, rows_copied, rows_skipped FROM cn_search.backfill_jobs "
            "WHERE partition_key = %s", (key,)).fetchone()
        assert (status, attempts) == ("succeeded", 2)
        tokens = conn.execute("SELECT lease_token, sum(rows_done) FROM cn_search.backfill_page_log "
                              "WHERE partition_key = %s GROUP BY 1 ORDER BY min(page_id)", (key,)).fetchall()
        # the retry started after the checkpoint: it walked only the rows the killed run had not committed
        assert len(tokens) == 2 and tokens[0][1] == done_before_retry and tokens[1][1] == total - done_before_retry
        assert copied + skipped == total
        # the final state equals an uninterrupted copy of the window, with no duplicate (post, topic)
        window = backfill.Window(start, start + 604800)
        want = {r for r in expected(conn, wm.seq) if r[0] == topic and window.start <= conn.execute(
            "SELECT created_at FROM cn_relay.events WHERE event_id = %s", (r[1],)).fetchone()[0] < window.end}
        got = actual(conn)
        assert got == want and len(want) == copied
        assert conn.execute("SELECT count(*) = count(DISTINCT (post_id, topic_id)) "
                            "FROM cn_search.post_search_documents").fetchone()[0]


# --------------------------------------------------------------------------- the UI path

REPO_SELECTOR = {"repositoryLocationName": "search_migration", "repositoryName": "__repository__"}
POSTS, TOPICS = 10_000, 20


@pytest.fixture
def dagster_dev_demo(servers, database_url, index_uid, tmp_path):
    with dagster_dev(servers.env(DATABASE_URL=database_url, MEILI_INDEX=index_uid), tmp_path, POSTS, TOPICS) as running:
        yield running


def launch_asset_run(port: int, asset: str) -> str:
    launched = graphql(port, """
        mutation($selector: JobOrPipelineSelector!) {
          launchRun(executionParams: {selector: $selector, mode: "default"}) {
            __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message }
          }
        }""", {"selector": {**REPO_SELECTOR, "jobName": "__ASSET_JOB",
                            "assetSelection": [{"path": [asset]}]}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def run_status(port: int, run_id: str) -> str | None:
    s = graphql(port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                {"id": run_id})["runOrError"]["status"]
    return s if s in {"SUCCESS", "FAILURE", "CANCELED"} else None


BACKFILL_STATUS = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
  status
  assetBackfillData { assetBackfillStatuses { ... on AssetPartitionsStatusCounts {
    numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed } } }
} } }"""


@pytest.mark.timeout(1800)  # ~3 min on a 2-core machine: one multi_run(1000) run of 820 partitions
def test_a_ui_backfill_copies_the_demo_corpus_at_the_watermark(dagster_dev_demo, database_url):
    port, proc = dagster_dev_demo
    wait_for(lambda: graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"], 400,
             "the Dagster UI to list assets", proc)

    # the watermark refuses while writes are meili_only ...
    refused = launch_asset_run(port, "backfill_high_watermark")
    assert wait_for(lambda: run_status(port, refused), 240, "the refused run", proc) == "FAILURE"
    with db.connect(database_url) as conn:
        assert backfill.latest_watermark(conn) is None
        flags.set_flags(conn, {"search_write_mode": "dual"}, by="test", reason="start dual writes")
    # ... and captures once they are dual
    captured = launch_asset_run(port, "backfill_high_watermark")
    assert wait_for(lambda: run_status(port, captured), 240, "the watermark run", proc) == "SUCCESS"

    for t in topic_ids(TOPICS):
        added = graphql(port, """mutation($r: RepositorySelector!, $key: String!) {
            addDynamicPartition(repositorySelector: $r, partitionsDefName: "topics", partitionKey: $key) {
              __typename } }""", {"r": REPO_SELECTOR, "key": topic_partition_key(t)})["addDynamicPartition"]
        assert added["__typename"] in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"), added

    launched = graphql(port, """mutation($params: LaunchBackfillParams!) {
        launchPartitionBackfill(backfillParams: $params) {
          __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                       {"params": {"assetSelection": [{"path": ["post_search_documents"]}],
                                   "allPartitions": True}})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    def finished():
        b = graphql(port, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        return b if b["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED") else None
    b = wait_for(finished, 900, "the backfill to finish", proc)
    counts = b["assetBackfillData"]["assetBackfillStatuses"][0]
    assert b["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), b
    assert counts["numPartitionsFailed"] == 0
    assert counts["numPartitionsMaterialized"] == counts["numPartitionsTargeted"] > 0

    with db.connect(database_url) as conn:
        wm = backfill.latest_watermark(conn)
        want, got = expected(conn, wm.seq), actual(conn)
        for t in topic_ids(TOPICS):  # per topic, by id and content hash
            assert {r for r in got if r[0] == t} == {r for r in want if r[0] == t}, t
        assert got == want and len(want) > POSTS
        assert conn.execute("SELECT count(*) FROM cn_search.post_search_documents WHERE is_deleted").fetchone()[0] == 0
        p = backfill.progress(conn)
        assert p.rows_done == p.rows_total == wm.manifest_rows and p.partitions == {"succeeded": counts[
            "numPartitionsTargeted"]}
