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
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import psycopg
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
from ..support.processes import DAGSTER, poll, postgres_dagster_home
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
        if busy.success:
            at, top = _meili_offset(database_url)
            with db.connect(database_url) as conn:
                reads = flags.get(conn, "search_read_backend")
            pytest.fail(f"the rerun flipped reads to {reads} while Meilisearch is at seq {at} of {top}")
        message = failure_message(busy)
        assert "another catch-up is running" in message, message
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


def _race_setup(servers, url: str, meili, tmp_path: Path) -> dict:
    """Writes dual, backfilled, caught up, the drift report green in a real run; returns the runs' env
    (Dagster's instance on the same PostgreSQL, so the test can hold its tables like any client)."""
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(TEST_POLICY))
    env = servers.env(DATABASE_URL=url, DAGSTER_PG_URL=url, DAGSTER_HOME=str(postgres_dagster_home(tmp_path)),
                      SEARCH_MIGRATION_GATE_POLICY=str(policy_file))
    with db.connect(url) as conn:
        set_mode(conn, "dual")
    backfill_all(url)
    with db.connect(url) as conn:
        consumer.catch_up(conn, meili, retry=FAST)
    report = subprocess.run([*DAGSTER, "asset", "materialize", "-m", "search_migration.definitions", "--select",
                             "search_drift_report"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    return env


@contextmanager
def _holding(url: str, sql: str):
    """A transaction of the test's own holding a lock until the block ends (a gate the runs queue at)."""
    with psycopg.connect(url) as conn:
        conn.execute(sql)
        yield
        conn.rollback()


def _waiting_on(url: str, relation: str) -> int:
    """Sessions queued for a lock on `relation` (the runs the test holds there)."""
    with db.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                            "WHERE NOT l.granted AND c.relname = %s", (relation,)).fetchone()[0]


def _both_runs(env: dict, tmp_path: Path) -> dict[str, subprocess.Popen]:
    """A cutover (dual -> shadow) and a rollback (dual -> legacy), launched together."""
    return {"cutover_job": _job_run(env, "cutover_job", {"target_stage": "shadow", "by": "cutover", "reason": "race"},
                                    tmp_path / "cutover.log"),
            "rollback_job": _job_run(env, "rollback_job", {"target_stage": "legacy", "by": "rollback",
                                                           "reason": "race"}, tmp_path / "rollback.log")}


def _alive(runs: dict[str, subprocess.Popen], tmp_path: Path):
    def check() -> None:
        for name, proc in runs.items():
            assert proc.poll() is None, (tmp_path / f"{name.split('_')[0]}.log").read_text()[-3000:]
    return check


def _moves(url: str) -> list[tuple]:
    with db.connect(url) as conn:
        return conn.execute("SELECT moved_by, stage_from, stage_to, outcome FROM cn_search.control_moves "
                            "ORDER BY move_id").fetchall()


def _one_consistent_stage(url: str, runs: dict[str, subprocess.Popen], tmp_path: Path) -> tuple[str, list[tuple]]:
    """Both attempts on record, in order; every applied move started from where the one before it ended;
    a loser refused, changing nothing, saying why; the flags spell the last applied move's stage whole."""
    codes = {name: proc.wait(timeout=600) for name, proc in runs.items()}
    logs = {name: (tmp_path / f"{name.split('_')[0]}.log").read_text() for name in runs}
    won = [name for name, code in codes.items() if code == 0]
    rows = _moves(url)
    assert sorted(r[0] for r in rows) == ["cutover", "rollback"], rows
    applied = [r for r in rows if r[3] == "applied"]
    assert applied and all(a[1] == b[2] for b, a in zip(applied, applied[1:])), \
        f"a move applied from a stage that was no longer current: {rows}"
    assert len(won) == len(applied), {name: logs[name][-3000:] for name in runs}
    for name in set(runs) - set(won):
        assert "nothing changed" in logs[name], logs[name][-3000:]
    with db.connect(url) as conn:
        now = flags.read_all(conn)
    stage = stages.current(now)
    assert stage == applied[-1][2], (stage, rows)
    assert {k: now[k] for k in stages.BASE_FLAGS[stage]} == stages.BASE_FLAGS[stage]
    return stage, rows


def test_a_move_planned_before_another_won_refuses_and_names_the_winner(servers, seeded, meili, tmp_path):
    """The compare-and-set: both plan from `dual`; the rollback applies first; the cutover, still
    holding a plan from `dual`, then refuses instead of undoing the rollback."""
    env = _race_setup(servers, seeded, meili, tmp_path)
    # the cutover queues at its gate lookup (Dagster's check table), the rollback at the schema check:
    # both after planning, before either moves
    with _holding(seeded, "LOCK TABLE asset_check_executions IN ACCESS EXCLUSIVE MODE"):
        with _holding(seeded, "LOCK TABLE cn_search.schema_versions IN ACCESS EXCLUSIVE MODE"):
            runs = _both_runs(env, tmp_path)
            alive = _alive(runs, tmp_path)
            poll(lambda: alive() or (_waiting_on(seeded, "asset_check_executions") >= 1
                                     and _waiting_on(seeded, "schema_versions") >= 1), 300,
                 "both runs to plan from dual and queue")
        assert runs["rollback_job"].wait(timeout=300) == 0, (tmp_path / "rollback.log").read_text()[-3000:]
        assert _moves(seeded) == [("rollback", "dual", "legacy", "applied")]
    stage, rows = _one_consistent_stage(seeded, runs, tmp_path)
    print(f"\nDRILL rule 4 (a stale plan): stage {stage}, moves {rows}")
    assert stage == "legacy" and rows[-1] == ("cutover", "dual", "shadow", "refused"), rows
    assert "the stage is legacy, not dual, since rollback dual -> legacy" in (tmp_path / "cutover.log").read_text()
    _assert_invariant(seeded, meili, "rule 4 (a stale plan)")


def test_a_cutover_and_a_rollback_at_the_same_moment_end_in_one_stage(servers, seeded, meili, tmp_path):
    """One move at a time: both plan from `dual` and enter the move together; the first holds the flags
    (the test keeps their rows locked) while the second arrives, which refuses naming the first."""
    env = _race_setup(servers, seeded, meili, tmp_path)
    with _holding(seeded, "SELECT flag_name FROM cn_search.runtime_flags FOR UPDATE"):
        with _holding(seeded, "LOCK TABLE cn_search.schema_versions IN ACCESS EXCLUSIVE MODE"):
            runs = _both_runs(env, tmp_path)
            alive = _alive(runs, tmp_path)
            poll(lambda: alive() or _waiting_on(seeded, "schema_versions") >= 2, 300,
                 "both runs to plan from dual and queue")

        def settled() -> list[tuple] | None:
            rows = _moves(seeded)
            return rows if sum(r[3] == "refused" for r in rows) == 1 or \
                sum(r[3] == "running" for r in rows) == 2 else None
        rows = poll(settled, 300, "one move to run and the other to refuse, or both to run")
        assert [r[3] for r in rows].count("running") == 1, f"two control moves ran at once: {rows}"
    stage, rows = _one_consistent_stage(seeded, runs, tmp_path)
    print(f"\nDRILL rule 4 (at the same moment): stage {stage}, moves {rows}")
    assert [r[3] for r in rows] == ["applied", "refused"] or [r[3] for r in rows] == ["refused", "applied"], rows
    loser = next(r[0] for r in rows if r[3] == "refused")
    assert "another control move is running" in (tmp_path / f"{loser}.log").read_text()
    _assert_invariant(seeded, meili, "rule 4")


def _assert_invariant(url: str, meili, drill: str) -> None:
    """Caught up, both engines hold exactly what the source says is searchable."""
    with db.connect(url) as conn:
        end = consumer.catch_up(conn, meili, retry=FAST).end_offset
        assert end == contract.outbox_head(conn)
        inv = invariants.check(conn, end, meili)
    print(f"\nDRILL {drill} invariant: " + str({k: v for k, v in inv.as_dict().items() if k != "examples"}))
    assert inv.ok, inv.as_dict()


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
    if move.success:
        with db.connect(seeded) as conn:
            pytest.fail(f"the cutover opened on checks evaluated under a lowered policy: stage "
                        f"{stages.current(flags.read_all(conn))}, outbox backlog "
                        f"{contract.outbox_head(conn) - contract.consumer_offset(conn, contract.CONSUMER)}")
    assert "catchup_lag: evaluated under gate policy" in failure_message(move)
    with db.connect(seeded) as conn:
        assert stages.current(flags.read_all(conn)) == "dual"
    _assert_invariant(seeded, meili, "rule 5")
