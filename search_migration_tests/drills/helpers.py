"""What the drills share beyond support/: the path to a caught-up dual state on the product's shape (the
demo corpus written by the product's writer and indexed by the emulated index-v1, then the handover),
real Dagster runs of one partition or one catch-up in killable process groups, gates and shadow traffic
on the product's per-topic indexes, and the invariant asserted with its figures printed for the report.
(The product's writes, write modes and process helpers are in support/.)"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import dagster as dg
import psycopg

from search_migration import backfill
from search_migration import db
from search_migration.backfill import Window
from search_migration.backfill.partition_keys import topic_partition_key
from search_migration.cutover import flags, stages
from search_migration.defs.backfill import partitioned_span
from search_migration.definitions import defs
from search_migration.local import demo_seed
from search_migration.source import contract
from search_migration.write_path import consumer, handover

from ..support import invariants
from ..support.cutover import TEST_POLICY
from ..support.backfill import WEEK, backfill_all
from ..support.processes import DAGSTER
from ..support.servers import REPO
from ..support.writes import FAST, set_mode

# --------------------------------------------------------------------------- getting to a caught-up dual state


def adopt(url: str) -> None:
    """The write path takes over from the product's indexer (index-v1) at its offset."""
    with db.connect(url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="drill", reason="fault drill takes over")


def capture(conn: psycopg.Connection, by: str = "drill") -> backfill.Watermark:
    """The watermark over the span Dagster's weekly partitions cover (what backfill_high_watermark does),
    so that a drill's partition keys and in-process windows are the same weeks."""
    return backfill.capture_watermark(conn, by=by, **partitioned_span())


def chunk_floor(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT chunk_floor FROM cn_search.backfill_watermarks ORDER BY watermark_id DESC LIMIT 1"
                        ).fetchone()[0]


def weeks(conn: psycopg.Connection) -> list[tuple[str, int, int]]:
    """(topic, week start, rows) of every partition the manifest holds, weeks aligned on the watermark's floor."""
    floor = chunk_floor(conn)
    return conn.execute(
        "SELECT topic_id, %(floor)s + (chunk_at - %(floor)s) / %(week)s * %(week)s AS wk, count(*) "
        "FROM cn_search.backfill_manifest GROUP BY 1, 2 ORDER BY 1, 2", {"floor": floor, "week": WEEK}).fetchall()


def backfill_everything(url: str, options: backfill.PartitionOptions | None = None) -> None:
    """Every (topic, week) the manifest holds, in-process: the partitions a drill does not fault."""
    with db.connect(url) as conn:
        parts = weeks(conn)
    for topic, start, _ in parts:
        backfill.run_partition(url, partition_key(topic, start), topic, Window(start, start + WEEK),
                               owner="drill", options=options)


def catch_up_all(url: str, meili) -> int:
    """Catch up to the outbox head in-process; returns the head every engine has applied."""
    with db.connect(url) as conn:
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert not result.stalled and result.waiting_on_gap is None, result
        assert result.end_offset == contract.outbox_head(conn)
        return result.end_offset


def assert_invariant(url: str, drill: str, meili=None, *, quarantined: int = 0) -> invariants.Invariant:
    """The exhaustive invariant at the outbox head, the product's definition of searchable (every topic's
    index compared when `meili` is given); its figures are printed for the drill report."""
    with db.connect(url) as conn:
        head = contract.outbox_head(conn)
        assert contract.consumer_offset(conn, contract.CONSUMER) == head, "check only after catching up"
        inv = invariants.check(conn, head, meili)
        why = "" if inv.ok else explain(conn, inv)
    print(f"\nDRILL {drill}: " + json.dumps({k: v for k, v in inv.as_dict().items() if k != "examples"}))
    assert inv.checked > 0 and inv.live > 0
    assert inv.ok, f"invariant violated after {drill}: {inv.as_dict()}\n{why}"
    assert (inv.lost, inv.duplicated, inv.resurrected, inv.wrong_version) == (0, 0, 0, 0)
    assert inv.quarantined == quarantined, inv.as_dict()
    return inv


def explain(conn: psycopg.Connection, inv: invariants.Invariant) -> str:
    """The source state and outbox history of the invariant's example pairs (for a failure message)."""
    lines = []
    for problem, keys in inv.examples.items():
        for key in keys[:3]:
            event_id, topic_id = key.split("/", 1)
            event = conn.execute("SELECT kind, created_at, is_deleted, is_current, expires_at, ingested_at "
                                 "FROM cn_relay.events WHERE event_id = %s", (event_id,)).fetchone()
            rows = conn.execute("SELECT seq, op, topic_id, reason, effective_key IS NOT NULL FROM cn_relay.events_outbox "
                                "WHERE event_id = %s ORDER BY seq", (event_id,)).fetchall()
            topics = [t for t, in conn.execute("SELECT topic_id FROM cn_relay.event_topics WHERE event_id = %s",
                                               (event_id,))]
            doc = conn.execute("SELECT source_seq, is_deleted, delete_reason FROM cn_search.post_search_documents "
                               "WHERE post_id = %s AND topic_id = %s", (event_id, topic_id)).fetchone()
            lines.append(f"{problem} {key}: event {event} topics {topics} outbox {rows} pg {doc}")
    return "\n".join(lines)


def seed_dual(url: str, meili, namespace: str, *, posts: int = 2000, topics: int = 2, seed: int = 42) -> list[str]:
    """The demo corpus on a blank database (the product's writer, index-v1's legacy indexes), handed over,
    writes dual and the watermark captured; returns the topics."""
    demo_seed.seed(url, meili, posts=posts, topics=topics, seed=seed, namespace=namespace)
    adopt(url)
    with db.connect(url) as conn:
        set_mode(conn, "dual", by="drill", reason="fault drill")
        capture(conn)
        return contract.topic_ids(conn)


# --------------------------------------------------------------------------- real Dagster runs


def partition_key(topic: str, week_start: int) -> str:
    """The Dagster multi-partition key `YYYY-MM-DD|topic` of a (topic, week)."""
    return f"{time.strftime('%Y-%m-%d', time.gmtime(week_start))}|{topic_partition_key(topic)}"


def busiest_week(conn: psycopg.Connection) -> tuple[str, int, int]:
    """(topic, week start, rows) of the manifest's fullest partition: the longest one to fault."""
    return max(weeks(conn), key=lambda w: (w[2], w[0], -w[1]))


def dagster_home(tmp_path: Path, topics: list[str]) -> Path:
    """A Dagster instance of the test's own (default local storage) that knows the topics' partitions."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("topics", [topic_partition_key(t) for t in topics])
    return home


def dual_partition(servers, url: str, meili, namespace: str, tmp_path: Path):
    """A 2,000-post product corpus in dual with its watermark, and its busiest topic-week partition to drill
    on; returns (Dagster env, topic, window, partition key, rows in it)."""
    topics = seed_dual(url, meili, namespace)
    with db.connect(url) as conn:
        topic, start, rows = busiest_week(conn)
    env = servers.env(DATABASE_URL=url, DAGSTER_PG_URL=url, DAGSTER_HOME=str(dagster_home(tmp_path, topics)))
    return env, topic, Window(start, start + WEEK), partition_key(topic, start), rows


def materialize(env: dict, partition: str, config: dict, log: Path) -> subprocess.Popen:
    """One real Dagster run of one backfill partition, in its own process group (killable whole)."""
    return subprocess.Popen(
        [*DAGSTER, "asset", "materialize", "-m", "search_migration.definitions", "--select", "post_search_documents",
         "--partition", partition, "--config-json", json.dumps({"ops": {"post_search_documents": {"config": config}}})],
        env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def checkpointed(conn: psycopg.Connection, run: subprocess.Popen, log: Path, key: str, at_least: int):
    """A `poll` predicate: the still-running `run` has checkpointed at least `at_least` rows of `key`."""
    def reached() -> bool:
        assert run.poll() is None, log.read_text()[-3000:]
        row = conn.execute("SELECT rows_done FROM cn_search.backfill_checkpoints WHERE partition_key = %s",
                           (key,)).fetchone()
        return bool(row and row[0] >= at_least)
    return reached


def catchup_run(env: dict, config: dict, log: Path) -> subprocess.Popen:
    """One real catchup_job run in its own process group (run config as a file: JSON is YAML)."""
    run_config = log.with_suffix(".config.yaml")
    run_config.write_text(json.dumps({"ops": {"catch_up": {"config": config}}}))
    return subprocess.Popen(
        [*DAGSTER, "job", "execute", "-m", "search_migration.definitions", "-j", "catchup_job",
         "--config", str(run_config)],
        env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def no_advisory_locks(url: str) -> bool:
    """A killed holder's session is gone (its consumer lock released) once no advisory lock remains."""
    with db.connect(url) as conn:
        return conn.execute("SELECT count(*) = 0 FROM pg_locks WHERE locktype = 'advisory' "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                            ).fetchone()[0]


# --------------------------------------------------------------------------- gates

# The drills run the gates for what they guard here: drift, lag, backfill, sample size, overlap, errors.
# Latency measures the machine; NDCG@10 measures ranking parity with the product's Meilisearch, which is
# the search's own test and bench, not a fault drill's. A drill applies it as a deployment would: a
# policy file (support.cutover.use_policy), recorded by every check and read by the cutover alike.
DRILL_POLICY = {**TEST_POLICY, "ndcg_at_10": 0.0}


def dual_and_caught_up(url: str, meili) -> None:
    """Writes dual, every partition backfilled, catch-up at the head."""
    with db.connect(url) as conn:
        set_mode(conn, "dual")
    backfill_all(url)
    with db.connect(url) as conn:
        consumer.catch_up(conn, meili, retry=FAST)


def at_complete(url: str, meili) -> None:
    """`dual_and_caught_up`, then the flags of `complete` (the gated path there is test_cutover's)."""
    dual_and_caught_up(url, meili)
    with db.connect(url) as conn:
        flags.set_flags(conn, stages.BASE_FLAGS["complete"], by="drill", reason="drill: at complete")


def seed_handed_over(database_url: str, meili, namespace: str, *, posts: int, topics: int, seed: int) -> None:
    """The demo's pre-migration world on `meili` (a Meilisearch of the drill's own), handed over."""
    demo_seed.seed(database_url, meili, posts=posts, topics=topics, seed=seed, namespace=namespace)
    with db.connect(database_url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="drill", reason="drill")


def materialize_report(instance, name: str) -> tuple[dict, dict[str, dg.AssetCheckEvaluation]]:
    """A report asset materialized in a real (in-process) Dagster run: its metadata and its checks."""
    assets = [a for a in defs.assets if getattr(a, "key", None) == dg.AssetKey(name)]
    result = dg.materialize(assets, instance=instance, resources=defs.resources)
    metadata = {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node(name)[0].metadata.items()}
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    for check_name, check in sorted(checks.items()):
        print(f"  {check_name}: {'passed' if check.passed else 'FAILED'} - {check.metadata['detail'].value}")
    return metadata, checks
