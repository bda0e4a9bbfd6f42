"""Drills (issue 16, rules 3, 4 and 5): control moves that cannot lose a row or lie.

- Rule 3: a rollback from `complete` decides the reverse catch-up from Meilisearch's own offset and
  flips reads only once it reached the head. Meilisearch down, or a catch-up holding the consumer,
  is a one-line refusal with reads left on PostgreSQL; running it again is safe and finishes the job.
- Rule 4: one control move at a time. A cutover and a rollback launched together end in one
  consistent stage; the loser refuses naming the winner; both attempts are on record, in order.
- Rule 5: the gate policy is code. Thresholds are not run config, and a report evaluated under a
  lowered policy cannot open the cutover.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from search_migration import db
from search_migration.cutover import flags, stages
from search_migration.definitions import defs
from search_migration.local import services
from search_migration.source import contract
from search_migration.write_path import consumer, meili_index

from ..support import invariants
from .helpers import at_complete, seed_handed_over
from ..support.backfill import backfill_all
from ..support.cutover import TEST_POLICY, evaluations, failure_message, run_job, use_policy
from ..support.processes import DAGSTER, postgres_dagster_home
from ..support.servers import REPO
from ..support.writes import FAST, new_posts, set_mode, topic


def _at_complete_with_pg_only_writes(url: str, meili) -> None:
    """At `complete`, with posts that only PostgreSQL gets."""
    at_complete(url, meili)
    with db.connect(url) as conn:
        new_posts(conn, 25, "pg-only", topic(conn))
        consumer.catch_up(conn, meili, retry=FAST)


def _meili_offset(url: str) -> tuple[int, int]:
    with db.connect(url) as conn:
        return consumer.side_offsets(conn, contract.CONSUMER, ["meili"])["meili"], contract.outbox_head(conn)


def test_an_interrupted_rollback_from_complete_never_flips_reads_to_a_stale_meilisearch(
        servers, database_url, namespace, own_meili, monkeypatch):
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    seed_handed_over(database_url, own, namespace, posts=400, topics=3, seed=11)
    for name, value in servers.env(DATABASE_URL=database_url, MEILI_URL=own_meili.meili_url,
                                   MEILI_MASTER_KEY=own_meili.meili_master_key).items():
        monkeypatch.setenv(name, value)
    _at_complete_with_pg_only_writes(database_url, own)
    behind, head = _meili_offset(database_url)
    assert behind < head

    with dg.instance_for_test() as instance:
        services.down(own_meili)  # Meilisearch down in the middle of the rollback
        down = run_job(instance, "rollback_job", target_stage="shadow", shadow_rate=50)
        assert not down.success and "reads stay on PostgreSQL" in failure_message(down)
        with db.connect(database_url) as conn:
            assert flags.get(conn, "search_read_backend") == "pg"  # never on a stale Meilisearch
            assert flags.get(conn, "search_write_mode") == "dual"  # the interrupted attempt's first step
        services.up(own_meili)

        with db.connect(database_url) as holder, consumer.consumer_lock(holder, contract.CONSUMER):
            busy = run_job(instance, "rollback_job", target_stage="shadow", shadow_rate=50)
        message = failure_message(busy)
        assert not busy.success and "another catch-up is running" in message
        with db.connect(database_url) as conn:
            assert flags.get(conn, "search_read_backend") == "pg"

        again = run_job(instance, "rollback_job", target_stage="shadow", shadow_rate=50)
        assert again.success, failure_message(again)
    meili_at, head = _meili_offset(database_url)
    assert meili_at >= head
    with db.connect(database_url) as conn:
        assert stages.current(flags.read_all(conn)) == "shadow"
        inv = invariants.check(conn, contract.outbox_head(conn), own)
        assert inv.ok, inv.as_dict()
        outcomes = [r[0] for r in conn.execute("SELECT outcome FROM cn_search.control_moves ORDER BY move_id")]
    assert outcomes == ["refused", "refused", "applied"]


def _job_run(env: dict, job: str, config: dict, log: Path) -> subprocess.Popen:
    """One real run of a control job in its own process (run config as a file: JSON is YAML)."""
    op = {"cutover_job": "cutover_op", "rollback_job": "rollback_op"}[job]
    config_file = log.with_suffix(".yaml")
    config_file.write_text(json.dumps({"ops": {op: {"config": config}}}))
    return subprocess.Popen([*DAGSTER, "job", "execute", "-m", "search_migration.definitions", "-j", job,
                             "--config", str(config_file)], env=env, cwd=REPO, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def test_a_cutover_and_a_rollback_at_the_same_moment_end_in_one_stage(servers, seeded, meili, tmp_path):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(TEST_POLICY))
    env = servers.env(DATABASE_URL=seeded, DAGSTER_PG_URL=seeded, DAGSTER_HOME=str(postgres_dagster_home(tmp_path)),
                      SEARCH_MIGRATION_GATE_POLICY=str(policy_file))
    with db.connect(seeded) as conn:
        set_mode(conn, "dual")
    backfill_all(seeded)
    with db.connect(seeded) as conn:
        consumer.catch_up(conn, meili, retry=FAST)
    report = subprocess.run([*DAGSTER, "asset", "materialize", "-m", "search_migration.definitions", "--select",
                             "search_drift_report"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]

    runs = {"cutover_job": _job_run(env, "cutover_job", {"target_stage": "shadow", "by": "cutover", "reason": "race"},
                                    tmp_path / "cutover.log"),
            "rollback_job": _job_run(env, "rollback_job", {"target_stage": "legacy", "by": "rollback",
                                                           "reason": "race"}, tmp_path / "rollback.log")}
    codes = {name: proc.wait(timeout=600) for name, proc in runs.items()}
    logs = {name: (tmp_path / f"{name.split('_')[0]}.log").read_text() for name in runs}
    won = [name for name, code in codes.items() if code == 0]
    with db.connect(seeded) as conn:
        now = flags.read_all(conn)
        rows = conn.execute("SELECT moved_by, stage_from, stage_to, outcome FROM cn_search.control_moves "
                            "ORDER BY move_id").fetchall()
    # both attempts on record, in order; every applied move started from where the one before it ended
    assert sorted(r[0] for r in rows) == ["cutover", "rollback"], rows
    applied = [r for r in rows if r[3] == "applied"]
    assert applied and all(a[1] == b[2] for b, a in zip(applied, applied[1:])), rows
    assert len(won) == len(applied), {name: logs[name][-3000:] for name in runs}
    for name in set(runs) - set(won):  # a loser refused, changing nothing, naming why
        assert "nothing changed" in logs[name], logs[name][-3000:]
    stage = stages.current(now)  # one consistent stage: the last applied move's, with all its flags
    assert stage == applied[-1][2]
    assert {k: now[k] for k in stages.BASE_FLAGS[stage]} == stages.BASE_FLAGS[stage]


def test_a_report_evaluated_under_a_lowered_policy_cannot_open_the_cutover(dagster_env, seeded, meili,
                                                                          monkeypatch, tmp_path):
    with db.connect(seeded) as conn:
        set_mode(conn, "dual")
    backfill_all(seeded)
    with db.connect(seeded) as conn:
        consumer.catch_up(conn, meili, retry=FAST)
        new_posts(conn, 1_050, "backlog", topic(conn))  # a backlog the real policy's catchup_lag refuses
    report = [a for a in defs.assets if getattr(a, "key", None) == dg.AssetKey("search_drift_report")]
    with pytest.raises(dg.DagsterInvalidConfigError):  # thresholds are not run config any more
        dg.materialize(report, instance=dagster_env, resources=defs.resources,
                       run_config={"ops": {"search_drift_report": {"config": {"outbox_backlog": 1_000_000}}}})
    use_policy(monkeypatch, tmp_path, outbox_backlog=1_000_000)  # someone lowers the bar for one report
    assert all(e.passed for e in evaluations(dagster_env, "search_drift_report")  # the gates that open shadow
               if e.check_name in stages.GATES_TO_ENTER["shadow"])
    monkeypatch.delenv("SEARCH_MIGRATION_GATE_POLICY")  # the deployment's policy, as reviewed
    move = run_job(dagster_env, "cutover_job", target_stage="shadow")
    assert not move.success
    assert "catchup_lag: evaluated under gate policy" in failure_message(move)
    with db.connect(seeded) as conn:
        assert stages.current(flags.read_all(conn)) == "dual"
