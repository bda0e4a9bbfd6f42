"""The whole code location loads, validates, and runs for real on a PostgreSQL-backed instance."""

from __future__ import annotations

import re
import subprocess

import dagster as dg
import psycopg

from search_migration import db
from search_migration.local import demo_seed
from search_migration.definitions import defs
from search_migration.source import contract
from search_migration.write_path import handover, meili_index
from search_migration.defs.ui import RUNBOOK_URL

from .support.processes import DAGSTER, postgres_dagster_home
from .support.servers import REPO


def test_definitions_load():
    """The public contract by name: what runbooks, sensors' run requests and operators refer to."""
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"cn_relay/events_outbox", "legacy/meili_index", "backfill_high_watermark",
                    "post_search_documents", "search_drift_report", "shadow_read_report"}
    jobs = {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    assert jobs == {"catchup_job", "cutover_job", "rollback_job", "replay_failed_job", "observe_sources_job",
                    "tail_job"}
    assert {s.name for s in repo.sensor_defs} == {"high_watermark_sensor", "topic_partitions_sensor"}
    assert {s.name for s in repo.schedule_defs} == {"observe_sources_job_schedule"}
    partitions = defs.resolve_assets_def("post_search_documents").partitions_def
    assert [d.partitions_def.name for d in partitions.partitions_defs
            if isinstance(d.partitions_def, dg.DynamicPartitionsDefinition)] == ["topics"]


README_ANCHORS = set(re.findall(r'<a id="([^"]+)"></a>', (REPO / "README.md").read_text()))


def runbook_anchor(metadata) -> str:
    """The README anchor a definition's runbook link points at (it must exist: the UI links there)."""
    url = metadata["runbook"].value
    assert url.startswith(f"{RUNBOOK_URL}#"), url
    anchor = url.split("#", 1)[1]
    assert anchor in README_ANCHORS, f"{url}: README.md has no <a id=\"{anchor}\">"
    return anchor


def test_every_asset_and_check_tells_an_operator_what_it_is_and_links_its_runbook():
    graph = defs.get_repository_def().asset_graph
    keys = graph.get_all_asset_keys()
    assert len(keys) == 6
    for key in keys:
        node = graph.get(key)
        assert len(node.description or "") > 60, key
        assert node.owners == ["team:search-migration"] and node.group_name, key
        assert {"stage", "domain"} <= set(node.tags), key
        runbook_anchor(node.metadata)
    checks = {k.name: graph.get_check_spec(k) for k in graph.asset_check_keys}
    assert len(checks) == 10
    for name, spec in checks.items():
        assert spec.description.startswith("Gate: "), name
        assert runbook_anchor(spec.metadata) == f"gate-{name}"


def test_every_job_sensor_and_schedule_has_a_description_tags_and_runbook():
    repo = defs.get_repository_def()
    defined = [j for j in repo.get_all_jobs() if not j.name.startswith("__")] + repo.sensor_defs + repo.schedule_defs
    assert len(defined) == 9
    for d in defined:
        assert len(d.description or "") > 40, d.name
        assert d.owners == ["team:search-migration"], d.name
        assert {"stage", "domain"} <= set(d.tags), d.name
        runbook_anchor(d.metadata)


def test_dagster_definitions_validate(servers, database_url):
    env = servers.env(DATABASE_URL=database_url, DAGSTER_PG_URL=database_url)
    result = subprocess.run([*DAGSTER, "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_observation_run_on_postgres_instance(servers, database_url, own_meili, namespace, tmp_path, monkeypatch):
    # A Meilisearch of the test's own: the legacy observation counts every `topic_*` index it holds
    meili = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    seeded = demo_seed.seed(database_url, meili, posts=2_000, topics=5, seed=3, namespace=namespace)
    with db.connect(database_url) as conn:  # our consumer starts where the product's indexer stands
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="observe after handover")
    home = postgres_dagster_home(tmp_path)
    for name, value in servers.env(DATABASE_URL=database_url, DAGSTER_PG_URL=database_url,
                                   MEILI_URL=own_meili.meili_url, MEILI_MASTER_KEY=own_meili.meili_master_key).items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        result = defs.resolve_job_def("observe_sources_job").execute_in_process(instance=instance)
        assert result.success
        observations = {
            e.event_specific_data.asset_observation.asset_key.to_user_string():
                e.event_specific_data.asset_observation.metadata
            for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"
        }
        assert observations["cn_relay/events_outbox"]["outbox_head_seq"].value == seeded.outbox_head
        assert observations["cn_relay/events_outbox"]["consumer_lag"].value == 0
        with db.connect(database_url) as conn:  # the product's definition of searchable, per topic
            live_rows = sum(contract.live_rows_per_topic(conn).values())
        assert observations["legacy/meili_index"]["documents"].value == live_rows
        assert observations["legacy/meili_index"]["topic_indexes"].value == 5
    # the run really went to PostgreSQL storage, not a temporary SQLite
    with psycopg.connect(database_url) as conn:
        runs = conn.execute("SELECT status FROM public.runs WHERE run_id = %s", (result.run_id,)).fetchall()
    assert runs == [("SUCCESS",)]
