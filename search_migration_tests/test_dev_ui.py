"""README command 1 for real: `search-migration dev` seeds, starts `dagster dev`, and the UI serves the
project's assets; a run launched the way the UI launches it succeeds through the queue and daemon."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from .conftest import dagster_dev

RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        payload = json.loads(resp.read())
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen):
    """Poll an observable condition (the UI answering, a run finishing) with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"dagster dev exited while waiting for {what}"
        try:
            value = predicate()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def dev(servers, database_url, index_uid, tmp_path):
    with dagster_dev(servers.env(DATABASE_URL=database_url, MEILI_INDEX=index_uid), tmp_path, 3000, 6) as running:
        yield running


def test_dev_serves_assets_and_runs_through_the_daemon(dev):
    port, proc = dev
    nodes = wait_for(lambda: graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"],
                     240, "the Dagster UI to list assets", proc)
    keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
    assert {"cn_relay/events_outbox", "legacy/meili_index"} <= keys

    launched = graphql(port, """
        mutation($selector: JobOrPipelineSelector!) {
          launchRun(executionParams: {selector: $selector, mode: "default"}) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
          }
        }""", {"selector": {"repositoryLocationName": "search_migration", "repositoryName": "__repository__",
                            "jobName": "observe_sources_job"}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    status = wait_for(
        lambda: (s := graphql(port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }",
                              {"id": run_id})["runOrError"]["status"]) in RUN_DONE and s,
        240, "the queued run to finish", proc)
    assert status == "SUCCESS"
