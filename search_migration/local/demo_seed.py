"""`demo seed`: the product's pre-migration world on a database the demo creates, and nowhere else.

1. Guard. A database holding a demo marker is the demo's. A database with no `cn_relay`, no `cn_index`
   and no tables but ours is blank: the demo creates the product's schema there and, in the same
   transaction, the marker (a comment on the database). Anything else — the product's own database
   above all — is refused in one line before anything is written, to PostgreSQL or to Meilisearch.
2. `db migrate` (cn_search only: it verifies cn_relay's shape and changes nothing there).
3. The corpus (demo_corpus), published event by event through the product's writer
   (`ProductWriter.publish`: cn-relay's ingest transaction, outbox rows, pg_notify), with the relay's
   expiry sweep between batches and its retention at the end of the history (outbox rows older than
   30 days pruned, old versions and deleted events older than 30 days removed).
4. The legacy Meilisearch, by the emulated product indexer (`ProductIndexer`, consumer `index-v1`):
   a full reindex job the day before the end of the history (cn-index's own reindex worker: per-topic
   indexes rebuilt from the source tables, `index-v1` set to the outbox head it saw), then the last
   day's events consumed outbox row by outbox row, as cn-index does. Stage `legacy`, `index-v1` at
   the head.

Each event is its own transaction, as in the product. The seed's session runs with
`synchronous_commit = off`: commits do not wait for the WAL flush, which makes 10,000 events take
seconds instead of tens of seconds. That changes durability only: every transaction is still atomic
and applied in the same order with the same sequence values, so the source tables and the outbox
are the same rows the product would hold; a server crash can lose the last few commits, which a
re-run publishes again.

Resumable and idempotent: the corpus is deterministic, events are published in order, and one
already stored (its `event_dedupe` row, written in the same transaction and never pruned by the
demo's retention) is skipped; the expiry sweep, the retention and the reindex are idempotent at
their fixed clocks. The marker records the corpus arguments and, once done, that the seed is
complete: a re-run with the same arguments then changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable

import meilisearch
import psycopg
from meilisearch.errors import MeilisearchApiError, MeilisearchCommunicationError, MeilisearchTimeoutError
from psycopg import sql
from psycopg.rows import dict_row

from search_migration import db
from search_migration.cutover import flags, stages
from search_migration.local import demo_corpus
from search_migration.local.product_fixture import apply_product_schema
from search_migration.local.product_indexer import CONSUMER as PRODUCT_INDEXER, ProductIndexer
from search_migration.local.product_writer import ProductWriter, Rejected
from search_migration.schema import migrate as migrations
from search_migration.settings import ConfigError
from search_migration.source import contract
from search_migration.write_path import legacy_documents as legacy
from search_migration.write_path import meili_index

MARKER_PREFIX = "search_migration demo database"  # COMMENT ON DATABASE: "<prefix> <json>"
MARKER_VERSION = 1
REINDEX_JOB = "search_migration-demo-reindex"
OUTBOX_DAYS = 30  # the product's retention defaults (cn-relay RetentionConfig)
EVENTS_DAYS = 30
# One advisory lock for every demo seed/reset on a database: a second one waits, then finds the work done.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"search_migration.local.demo_seed").digest()[:8], "big", signed=True)
# cn_search tables a reset keeps: the migration history, the flags (reset to legacy) and their audit.
KEEP_ON_RESET = {"schema_versions", "runtime_flags", "runtime_flag_audit"}

Progress = Callable[[str, int, int], None]  # phase, done, total


def _noop(phase: str, done: int, total: int) -> None:
    pass


class SeedError(Exception):
    """The seed cannot proceed; the message is one printable line."""


class NotDemoDatabase(SeedError):
    """The database was not created by the demo: nothing was (or will be) changed in it."""


@dataclass(frozen=True)
class Corpus:
    posts: int
    topics: int
    seed: int
    namespace: str = ""

    def describe(self) -> str:
        ns = f", namespace {self.namespace}" if self.namespace else ""
        return f"{self.posts} posts in {self.topics} topics (seed {self.seed}{ns})"

    def topic_ids(self) -> list[str]:
        return demo_corpus.topic_ids(self.topics, self.namespace)


@dataclass
class SeedResult:
    created: bool  # the product's schema and the marker were created by this run
    reset: bool
    complete_before: bool  # nothing to do: the same corpus was already seeded
    events_published: int  # by this run
    events_present: int  # skipped: already stored by an earlier run
    legacy_documents: int  # documents in the demo's topic indexes
    index_v1_offset: int
    outbox_head: int
    fingerprint: str


# ---- the marker ------------------------------------------------------------------------------------


def read_marker(conn: psycopg.Connection) -> dict[str, Any] | None:
    """The demo marker of the connected database, or None when it has none."""
    comment = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = current_database()").fetchone()[0]
    if not comment or not comment.startswith(MARKER_PREFIX + " "):
        return None
    try:
        marker = json.loads(comment[len(MARKER_PREFIX) + 1:])
    except json.JSONDecodeError:
        return None
    return marker if isinstance(marker, dict) and marker.get("version") == MARKER_VERSION else None


def _write_marker(conn: psycopg.Connection, marker: dict[str, Any]) -> None:
    text = f"{MARKER_PREFIX} {json.dumps(marker, sort_keys=True)}"
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(conn.info.dbname), sql.Literal(text)))


def _database(conn: psycopg.Connection) -> str:
    return conn.info.dbname


FOREIGN_TABLE_SQL = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cn_search')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT (n.nspname = 'public' AND c.relname = 'search_migration_schema_versions')
ORDER BY 1 LIMIT 1
"""


def inspect(conn: psycopg.Connection) -> str:
    """'demo' (marked), 'blank' (nothing of the product or anyone else: the demo may create its world
    here), or NotDemoDatabase. Reads only."""
    if read_marker(conn) is not None:
        return "demo"
    name = _database(conn)
    for schema in ("cn_relay", "cn_index"):
        if conn.execute("SELECT to_regnamespace(%s)", (schema,)).fetchone()[0] is not None:
            raise NotDemoDatabase(
                f"database {name!r} holds {schema} but no demo marker: it was not created by `demo seed` "
                "(the product's database?); refusing to touch it, nothing was changed")
    found = conn.execute(FOREIGN_TABLE_SQL).fetchone()
    if found:
        raise NotDemoDatabase(f"database {name!r} is not empty (it holds {found[0]}) and has no demo marker: "
                              "`demo seed` creates its world only in a blank database; nothing was changed")
    return "blank"


def guard(database_url: str) -> str:
    """`inspect` on its own connection: what a command checks before it touches anything."""
    with db.connect(database_url) as conn:
        return inspect(conn)


# ---- seed ------------------------------------------------------------------------------------------


def seed(database_url: str, meili: meilisearch.Client, *, posts: int, topics: int, seed: int = 42,
         namespace: str = "", reset_first: bool = False, progress: Progress = _noop) -> SeedResult:
    """Create (or finish, or keep) the demo's pre-migration world; see the module docstring."""
    if posts < 1 or topics < 1:
        raise ConfigError("--posts and --topics must be at least 1")
    if namespace and not (namespace.isascii() and namespace.replace("-", "").isalnum() and namespace.islower()):
        raise ConfigError("--namespace must be lowercase ASCII letters, digits and '-'")
    wanted = Corpus(posts, topics, seed, namespace)
    with db.connect(database_url) as conn:
        inspect(conn)  # refuse before anything else, Meilisearch included
        try:
            meili.health()
        except MeilisearchCommunicationError:
            raise SeedError(f"Meilisearch at {meili.config.url} is unreachable; nothing was written") from None
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            return _seed_locked(conn, database_url, meili, wanted, reset_first, progress)
        except (MeilisearchCommunicationError, MeilisearchTimeoutError):
            raise SeedError(f"Meilisearch at {meili.config.url} went away while indexing; what is written is "
                            "committed, re-run `demo seed` with the same arguments to finish") from None
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def _seed_locked(conn: psycopg.Connection, database_url: str, meili: meilisearch.Client, wanted: Corpus,
                 reset_first: bool, progress: Progress) -> SeedResult:
    created = False
    with conn.transaction():
        if inspect(conn) == "blank":  # again, under the lock: the schema and the marker in one transaction
            apply_product_schema(conn)
            _write_marker(conn, {"version": MARKER_VERSION, "created_at": _now_iso(), "corpus": None,
                                 "complete": False})
            created = True
    migrations.migrate(database_url)
    marker = read_marker(conn)
    recorded = Corpus(**marker["corpus"]) if marker.get("corpus") else None
    if reset_first and not created:
        reset(conn, meili)
        marker, recorded = read_marker(conn), None
    if recorded is not None and recorded != wanted:
        raise SeedError(f"the database holds another demo corpus ({recorded.describe()}); "
                        f"`demo seed --reset` replaces it")
    if recorded is None:
        marker.update(corpus=asdict(wanted), complete=False)
        _write_marker(conn, marker)
    if marker.get("complete"):
        return _result(conn, meili, wanted, created, reset_first, True, 0, 0)
    if conn.execute("SELECT count(*) FROM cn_search.handovers").fetchone()[0]:
        raise SeedError("the write path has taken over from index-v1 already (a handover is recorded), so the "
                        "product's indexer cannot finish the legacy index; `demo seed --reset` starts over")

    conn.execute("SET synchronous_commit = off")  # durability only; see the module docstring
    writer = ProductWriter(conn)
    indexer = ProductIndexer(conn, meili, wait=True)
    history = wanted.posts - demo_corpus.tail_size(wanted.posts)
    published = present = 0
    reindexed = False
    for batch in demo_corpus.batches(wanted.posts, wanted.topics, wanted.seed, wanted.namespace):
        if batch[0].n == history:  # the history is written: retention, then the operator's full reindex
            _end_of_history(conn, writer, indexer, progress)
            reindexed = True
        writer.expire_due(now=batch[0].now)  # the relay's expiry sweep (idempotent at a fixed clock)
        stored = {r[0] for r in conn.execute("SELECT event_id FROM cn_relay.event_dedupe WHERE event_id = ANY(%s)",
                                             ([item.event["id"] for item in batch],))}
        for item in batch:
            if item.event["id"] in stored:
                present += 1
                continue
            try:
                writer.publish(item.event, now=item.now)
            except Rejected as exc:  # the corpus is built to be accepted: a refusal is a bug here
                raise SeedError(f"the relay refused demo event #{item.n} ({item.role}): {exc.reason}") from None
            published += 1
        progress("source", batch[-1].n + 1, wanted.posts)
    if not reindexed:  # a corpus without a tail
        _end_of_history(conn, writer, indexer, progress)
    conn.execute("RESET synchronous_commit")
    try:
        indexer.run(now=demo_corpus.T_END)  # the last day, outbox row by outbox row; its expiry sweep
    except RuntimeError as exc:
        raise SeedError(f"Meilisearch rejected a legacy write: {exc}") from None
    _verify_legacy(conn, meili, wanted)
    marker = read_marker(conn)
    marker["complete"] = True
    _write_marker(conn, marker)
    return _result(conn, meili, wanted, created, reset_first, False, published, present)


def _end_of_history(conn: psycopg.Connection, writer: ProductWriter, indexer: ProductIndexer,
                    progress: Progress) -> None:
    """At `T_REINDEX`: cn-relay's retention with the product's defaults, then a full reindex by
    cn-index's reindex worker (topic_id NULL: every topic), queued once and run to success.

    The retention runs only before the job is queued (so never again once the tail, which may
    supersede old versions, is being written); a job a crash left running is queued again (a reindex
    starts by emptying the index). The demo keeps event_dedupe (dedupe_days=0, the product's own way
    of turning that cleanup off) so that a resumed seed knows which events it stored."""
    row = conn.execute("SELECT status FROM cn_index.reindex_jobs WHERE job_id = %s", (REINDEX_JOB,)).fetchone()
    if row and row[0] == "succeeded":
        return
    if row is None:
        writer.retention(OUTBOX_DAYS, now=demo_corpus.T_REINDEX, events_days=EVENTS_DAYS, dedupe_days=0)
    indexer.last_seq()  # cn-index creates its offset row on first use; the job moves it to the cutoff
    at = dt.datetime.fromtimestamp(demo_corpus.T_REINDEX, dt.timezone.utc)
    if row is None:
        conn.execute("INSERT INTO cn_index.reindex_jobs (job_id, topic_id, status, requested_by, requested_at,"
                     " updated_at) VALUES (%s, NULL, 'pending', 'search_migration demo seed', %s, %s)",
                     (REINDEX_JOB, at, at))
    else:
        conn.execute("UPDATE cn_index.reindex_jobs SET status = 'pending', updated_at = now() WHERE job_id = %s",
                     (REINDEX_JOB,))
    progress("legacy", 0, 1)
    try:
        indexer.run_reindex_jobs(demo_corpus.T_REINDEX)
        indexer.settle()
    except RuntimeError as exc:
        raise SeedError(f"Meilisearch rejected a legacy write: {exc}") from None
    progress("legacy", 1, 1)


def _verify_legacy(conn: psycopg.Connection, meili: meilisearch.Client, corpus: Corpus) -> None:
    """The cheap check: index-v1 at the head, and each topic index holds as many documents as the
    product's rule says are searchable there."""
    head, offset = contract.outbox_head(conn), contract.consumer_offset(conn, PRODUCT_INDEXER)
    if offset != head:
        raise SeedError(f"the product's indexer stopped at seq {offset}, the outbox head is {head}; re-run `demo seed`")
    expected = Counter()
    for uid, docs in expected_legacy_documents(conn).items():
        expected[uid] = len(docs)
    got = {uid: meili_index.count(meili, uid) for uid in expected}
    if got != dict(expected):
        wrong = next(uid for uid in expected if got[uid] != expected[uid])
        raise SeedError(f"legacy index {wrong} holds {got[wrong]} documents, the product's indexer should have "
                        f"left {expected[wrong]}; `demo seed --reset` rebuilds it")


def _result(conn, meili, corpus: Corpus, created: bool, reset_done: bool, complete_before: bool,
            published: int, present: int) -> SeedResult:
    uids = {legacy.index_uid(t) for t in corpus.topic_ids()}
    return SeedResult(created, reset_done, complete_before, published, present,
                      sum(meili_index.count(meili, uid) for uid in uids),
                      contract.consumer_offset(conn, PRODUCT_INDEXER), contract.outbox_head(conn), fingerprint(conn))


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---- what the legacy indexes should hold -------------------------------------------------------------


def expected_legacy_documents(conn: psycopg.Connection, now: int | None = None) -> dict[str, dict[str, dict]]:
    """uid → event_id → the document the product's indexer holds for every searchable (event, topic),
    read from the source tables by the product's rule (`legacy_documents.searchable`) at `now`
    (default: the real clock; the corpus never expires anything between its end and today)."""
    now = contract.now_unix() if now is None else now
    out: dict[str, dict[str, dict]] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT t.topic_id, e.raw_json, e.is_deleted, e.is_current, e.is_ephemeral, e.expires_at"
                    " FROM cn_relay.events e JOIN cn_relay.event_topics t ON t.event_id = e.event_id")
        for row in cur:
            if legacy.searchable(row, now):
                doc = legacy.document(row, row["topic_id"])
                out.setdefault(legacy.index_uid(row["topic_id"]), {})[doc["event_id"]] = doc
    return out


def legacy_documents(meili: meilisearch.Client, uids) -> dict[str, dict[str, dict]]:
    """uid → event_id → document, as Meilisearch holds them (absent indexes left out)."""
    out: dict[str, dict[str, dict]] = {}
    for uid in uids:
        docs: dict[str, dict] = {}
        offset = 0
        try:
            while True:
                page = meili.index(uid).get_documents({"limit": 1000, "offset": offset}).results
                for d in page:
                    doc = {k: v for k, v in dict(d).items() if not k.startswith("_")}
                    docs[doc["event_id"]] = doc
                offset += len(page)
                if len(page) < 1000:
                    break
        except MeilisearchApiError as exc:
            if exc.code != "index_not_found":
                raise
            continue
        out[uid] = docs
    return out


def fingerprint(conn: psycopg.Connection) -> str:
    """A hash of the source corpus: the events and the outbox rows. Not the seq values (a transaction that
    dies after taking one leaves a gap, in the product as here), and not the order of the delete rows
    one transaction writes for an event's topics (cn-relay selects them without ORDER BY, so their order
    follows the plan PostgreSQL picks): outbox rows sort by their ingest time, then by their content."""
    return conn.execute("""
        SELECT md5(coalesce((SELECT string_agg(event_id || ':' || kind || ':' || created_at || ':' || md5(content)
                                               || ':' || is_deleted || ':' || is_current || ':'
                                               || extract(epoch FROM ingested_at)::bigint, '|' ORDER BY event_id)
                             FROM cn_relay.events), '')
                || '#' ||
                coalesce((SELECT string_agg(op || ':' || event_id || ':' || topic_id || ':' || kind || ':'
                                            || extract(epoch FROM ingested_at)::bigint || ':'
                                            || coalesce(effective_key, '') || ':' || coalesce(reason, ''),
                                            '|' ORDER BY ingested_at, event_id, op, topic_id, reason, seq)
                          FROM cn_relay.events_outbox), ''))
    """).fetchone()[0]


# ---- reset -------------------------------------------------------------------------------------------


def _tables(conn: psycopg.Connection, schema: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT c.relname FROM pg_class c WHERE c.relnamespace = to_regnamespace(%s)"
                                       " AND c.relkind IN ('r', 'p') ORDER BY 1", (schema,))]


def reset(conn: psycopg.Connection, meili: meilisearch.Client) -> dict[str, int]:
    """Start the demo over, on the demo's own database only: its topic indexes deleted, cn_relay and
    cn_index emptied, our cn_search state (handovers included) cleared, the flags back to `legacy`,
    audited. Keeps the product's schema, our migrations and the flag audit."""
    inspect(conn)
    marker = read_marker(conn)
    if marker is None:
        raise NotDemoDatabase(f"database {_database(conn)!r} has no demo marker: `demo seed --reset` only resets "
                              "a database the demo created; nothing was changed")
    topics = set(contract.topic_ids(conn))
    if marker.get("corpus"):
        topics |= set(Corpus(**marker["corpus"]).topic_ids())
    uids = sorted({legacy.index_uid(t) for t in topics})
    for uid in uids:  # first: a crash after this leaves the source, which a re-run finds again
        meili_index.delete_index(meili, uid)
    handovers = conn.execute("SELECT count(*) FROM cn_search.handovers").fetchone()[0]
    stage = stages.current(flags.read_all(conn))
    cleared = {"topic_indexes": len(uids), "handovers": handovers}
    with conn.transaction():
        relay = [sql.Identifier(s, t) for s in ("cn_relay", "cn_index") for t in _tables(conn, s)]
        ours = [sql.Identifier("cn_search", t) for t in _tables(conn, "cn_search") if t not in KEEP_ON_RESET]
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(sql.SQL(", ").join(relay + ours)))
        reason = (f"demo seed --reset: demo corpus replaced; {len(uids)} topic index(es) deleted, cn_relay and "
                  f"cn_search state cleared ({handovers} handover(s))")
        changed = flags.set_flags(conn, stages.BASE_FLAGS["legacy"], by="demo seed --reset", reason=reason,
                                  stage_from=stage, stage_to="legacy", evidence={"demo_reset": cleared})
        if not changed:  # already at legacy: the reset is audited all the same
            conn.execute("INSERT INTO cn_search.runtime_flag_audit (flag_name, old_value, new_value, changed_by,"
                         " reason, stage_from, stage_to, evidence) VALUES ('search_write_mode', 'meili_only',"
                         " 'meili_only', 'demo seed --reset', %s, %s, 'legacy', %s)",
                         (reason, stage, json.dumps({"demo_reset": cleared})))
        marker.update(corpus=None, complete=False, reset_at=_now_iso())
        _write_marker(conn, marker)
    return cleared
