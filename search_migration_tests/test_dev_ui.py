"""README command 1 for real: `search-migration dev` seeds, starts `dagster dev`, and the UI serves the
project's assets; a run launched the way the UI launches it succeeds through the queue and daemon."""

from __future__ import annotations

from .support.ui import DevServer, asset_nodes, launch_run, run_status


def test_dev_serves_assets_and_runs_through_the_daemon(dev: DevServer):
    port = dev.port
    nodes = dev.wait_for(lambda: asset_nodes(port), 240, "the Dagster UI to list assets")
    keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
    assert {"cn_relay/events_outbox", "legacy/meili_index"} <= keys

    run_id = launch_run(port, "observe_sources_job")  # asserts LaunchRunSuccess
    status = dev.wait_for(lambda: run_status(port, run_id), 240, "the queued run to finish")
    assert status == "SUCCESS"
