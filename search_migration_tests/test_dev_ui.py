"""README command 1 for real: `search-migration dev` seeds, starts `dagster dev`, and the UI serves the
project's assets; a run launched the way the UI launches it succeeds through the queue and daemon."""

from __future__ import annotations

import time

from search_migration import db
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.source import contract
from search_migration.write_path import handover

from .support.ui import DevServer, asset_nodes, launch_run, run_status


def test_dev_serves_assets_and_runs_through_the_daemon(dev: DevServer):
    port = dev.port
    nodes = dev.wait_for(lambda: asset_nodes(port), 240, "the Dagster UI to list assets")
    keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
    assert {"cn_relay/events_outbox", "legacy/meili_index"} <= keys

    run_id = launch_run(port, "observe_sources_job")  # asserts LaunchRunSuccess
    status = dev.wait_for(lambda: run_status(port, run_id), 240, "the queued run to finish")
    assert status == "SUCCESS"


TERMINATE = """mutation($runId: String!) { terminateRun(runId: $runId) { __typename
  ... on TerminateRunSuccess { run { runId } } ... on PythonError { message } } }"""
LOGS = """query($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection {
  events { __typename ... on MessageEvent { message } } } } }"""


def test_the_tail_run_is_a_normal_run_in_the_ui_and_cancel_drains_it(dev: DevServer):
    """Issue 17: the tail run launched as the UI launches runs applies a product post within seconds, shows
    its log, and Terminate (cancel) makes it finish its batch, commit its offsets and end as CANCELED."""
    url = dev.database_url
    with db.connect(url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="ui-test", reason="tail run in the UI")
    run_id = launch_run(dev.port, "tail_job")

    def tail_state():
        with db.connect(url) as conn:
            row = conn.execute("SELECT state FROM cn_search.tail_runs WHERE run_id = %s", (run_id,)).fetchone()
        return row and row[0] == "tailing"
    dev.wait_for(tail_state, 240, "the tail run to make its first pass")
    with db.connect(url) as conn:
        topic = contract.topic_ids(conn)[0]
        seqs = ProductWriter(conn).publish(build_event(pubkey=pubkey_of("ui-test"), topics=[topic],
                                                       content="tail run in the UI", created_at=int(time.time())))
    dev.wait_for(lambda: _offset(url) >= max(seqs), 60, "the tail run to apply the post")

    assert dev.graphql(TERMINATE, {"runId": run_id})["terminateRun"]["__typename"] == "TerminateRunSuccess"
    assert dev.wait_for(lambda: run_status(dev.port, run_id), 120, "the tail run to end") == "CANCELED"
    with db.connect(url) as conn:
        assert conn.execute("SELECT state, end_reason FROM cn_search.tail_runs WHERE run_id = %s",
                            (run_id,)).fetchone() == ("ended", "stopped")
    messages = [e.get("message", "") for e in dev.graphql(LOGS, {"runId": run_id})["logsForRun"]["events"]]
    assert any("finishing the batch in hand" in m for m in messages), messages[-10:]
    assert any(m.startswith("tail ended (stopped)") for m in messages), messages[-10:]
    # the sensor may have started a tail of its own meanwhile (the handover is real): cancel it too
    for other in dev.graphql('{ runsOrError(filter: {pipelineName: "tail_job", statuses: [QUEUED, STARTING, '
                             'STARTED]}) { ... on Runs { results { runId } } } }')["runsOrError"]["results"]:
        dev.graphql(TERMINATE, {"runId": other["runId"]})


def _offset(url: str) -> int:
    with db.connect(url) as conn:
        return contract.consumer_offset(conn, contract.CONSUMER)
