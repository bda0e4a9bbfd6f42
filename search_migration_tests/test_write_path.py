"""The write path against real engines: modes, per-side stalls, outages, dead letters and replay."""

from __future__ import annotations

import subprocess
import sys
import threading

import psycopg
from prometheus_client import CollectorRegistry, generate_latest
from psycopg.types.json import Jsonb

from search_migration import db
from search_migration.local import demo_seed
from search_migration.local.product_writer import ProductWriter
from search_migration.ops import counters
from search_migration.write_path import consumer, handover, meili_index
from search_migration.local import services
from search_migration.source import contract

from .support.processes import DAGSTER, crash_meili, postgres_dagster_home, run_cli
from .support.servers import REPO
from .support.writes import FAST, NOW, meili_ids, new_posts, note, set_mode, topic


def pg_docs(conn: psycopg.Connection) -> dict[tuple[str, str], tuple[int, bool]]:
    return {(p, t): (s, d) for p, t, s, d in conn.execute(
        "SELECT post_id, topic_id, source_seq, is_deleted FROM cn_search.post_search_documents")}


def searchable_ids(conn: psycopg.Connection, topic_id: str) -> set[str]:
    """The topic's searchable events by the product's rule: what its index must hold."""
    return {e for (e,) in conn.execute(
        f"SELECT e.event_id FROM cn_relay.event_topics et JOIN cn_relay.events e USING (event_id) "
        f"WHERE et.topic_id = %(topic)s AND {contract.SEARCHABLE}", {"topic": topic_id, "now": contract.now_unix()})}


def garble(conn: psycopg.Connection, event_id: str) -> dict:
    """The product's row goes bad (raw_json no longer a signed event); returns what it was."""
    raw = conn.execute("SELECT raw_json FROM cn_relay.events WHERE event_id = %s", (event_id,)).fetchone()[0]
    conn.execute("UPDATE cn_relay.events SET raw_json = '\"garbled\"'::jsonb WHERE event_id = %s", (event_id,))
    return raw


def restore(conn: psycopg.Connection, event_id: str, raw: dict) -> None:
    conn.execute("UPDATE cn_relay.events SET raw_json = %s WHERE event_id = %s", (Jsonb(raw), event_id))


def dagster_catchup_in_new_process(env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    """A real catchup_job run, default config, in a fresh process on a PostgreSQL-backed instance."""
    home = postgres_dagster_home(tmp_path)
    return subprocess.run([*DAGSTER, "job", "execute", "-m", "search_migration.definitions", "-j", "catchup_job"],
                          env={**env, "DAGSTER_HOME": str(home)}, cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_dual_mode_pg_failure_stalls_only_pg_and_converges_after_restart(seeded, servers, meili, tmp_path):
    with db.connect(seeded) as conn:
        set_mode(conn, "dual")
        t = topic(conn)
        rows = new_posts(conn, 5, "stall")
        poison, poison_seq = rows[0]
        conn.execute(f"""
            CREATE FUNCTION cn_search.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.post_id = '{poison}' THEN RAISE EXCEPTION 'injected fault'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_one BEFORE INSERT OR UPDATE ON cn_search.post_search_documents
                FOR EACH ROW EXECUTE FUNCTION cn_search.refuse_one();
        """)
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert set(result.stalled) == {"pg"}
        assert poison in meili_ids(meili, t)  # Meilisearch has the row
        assert (poison, t) not in pg_docs(conn)  # PostgreSQL does not
        assert contract.consumer_offset(conn, contract.CONSUMER) < poison_seq  # the offset stays before it
        assert counters.read(conn, counters.DUAL_WRITE_ERRORS) == {("pg", "upsert"): 1}
        assert counters.total(conn, counters.DUAL_WRITE_RETRIES) == 0
        conn.execute("DROP TRIGGER refuse_one ON cn_search.post_search_documents")

    # The next catch-up is a real Dagster run in a new process: the stall survived the restart.
    env = servers.env(DATABASE_URL=seeded, DAGSTER_PG_URL=seeded)
    run = dagster_catchup_in_new_process(env, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    with db.connect(seeded) as conn:
        docs = pg_docs(conn)
        assert [docs[(e, t)] for e, _ in rows] == [(s, False) for _, s in rows]  # applied, in order
        assert contract.consumer_offset(conn, contract.CONSUMER) == contract.outbox_head(conn)
        assert counters.read(conn, counters.DUAL_WRITE_RETRIES) == {("pg", "upsert"): 1}
        assert conn.execute("SELECT count(*) FROM cn_search.side_write_failures").fetchone()[0] == 0
    registry = CollectorRegistry()
    registry.register(counters.DurableCounters(lambda: db.connect(seeded)))
    exposed = generate_latest(registry).decode()
    assert 'search_dual_write_errors_total{backend="pg",operation="upsert"} 1.0' in exposed
    assert 'search_dual_write_retries_total{backend="pg",operation="upsert"} 1.0' in exposed


def test_meilisearch_stopped_during_catchup_loses_nothing(database_url, own_meili, namespace, tmp_path):
    migrated_url = database_url
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    demo_seed.seed(migrated_url, own, posts=400, topics=3, seed=9, namespace=namespace)
    with db.connect(migrated_url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="outage drill")
        set_mode(conn, "dual")
        topics = contract.topic_ids(conn)
        start = contract.consumer_offset(conn, contract.CONSUMER)
        new_posts(conn, 3_000, "outage")
        head = contract.outbox_head(conn)
    script = (
        "import sys; from search_migration import db; from search_migration.write_path import meili_index, consumer as oc\n"
        f"conn = db.connect({migrated_url!r})\n"
        f"r = oc.catch_up(conn, meili_index.client({own_meili.meili_url!r}, {own_meili.meili_master_key!r}), "
        f"batch_size=50, retry=oc.Retry(attempts=3, initial_s=0.05, max_s=0.2))\n"
        "sys.exit(3 if r.stalled else 0)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
    with db.connect(migrated_url) as conn:
        while contract.consumer_offset(conn, contract.CONSUMER) <= start:  # wait for real progress
            assert proc.poll() is None, proc.stderr.read()
    crash_meili(own_meili)  # the outage
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    with db.connect(migrated_url) as conn:
        stalled_at = contract.consumer_offset(conn, contract.CONSUMER)
        assert start < stalled_at < head
        meili_side = dict(conn.execute("SELECT backend, last_seq FROM cn_search.consumer_side_offsets"))["meili"]
        assert stalled_at == meili_side  # the offset is the lagging side's, never past an unapplied row

    services.up(own_meili)  # Meilisearch comes back with its data
    with db.connect(migrated_url) as conn:
        result = consumer.catch_up(conn, own, retry=FAST)
        assert not result.stalled and result.end_offset == head
        for t in topics:  # nothing lost, nothing extra, in every topic's index
            assert meili_ids(own, t) == searchable_ids(conn, t), t
        pg_live = {key for key, (_, deleted) in pg_docs(conn).items() if not deleted}
        new = set(conn.execute("SELECT event_id, topic_id FROM cn_relay.events_outbox WHERE seq > %s",
                               (start,)).fetchall())
        assert new <= pg_live and len(new) == 3_000


def test_malformed_row_is_dead_lettered_and_replayed_with_audit(seeded, servers, meili):
    with db.connect(seeded) as conn:
        set_mode(conn, "dual")
        t = topic(conn)
        rows = new_posts(conn, 1_000, "dl")
        bad, bad_seq = rows[500]
        raw = garble(conn, bad)  # created_at is no longer a malformation: the product takes any signed value
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert result.dead_lettered == 1 and not result.stalled
        assert result.end_offset == contract.outbox_head(conn)
        good = {(e, t) for e, _ in rows} - {(bad, t)}
        assert good <= set(pg_docs(conn)) and (bad, t) not in pg_docs(conn)
        ids = meili_ids(meili, t)
        assert {e for e, _ in good} <= ids and bad not in ids
        assert conn.execute("SELECT backend, seq, reason_class FROM cn_search.dead_letters").fetchall() == [
            ("source", bad_seq, "malformed_payload")]

    env = servers.env(DATABASE_URL=seeded)
    dry = run_cli("replay-failed", "--by", "oncall", "--reason", "check", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"seq={bad_seq}" in dry.stdout and "would replay 1 dead letter(s)" in dry.stdout
    with db.connect(seeded) as conn:
        assert conn.execute("SELECT replay_count, resolved_at FROM cn_search.dead_letters").fetchone() == (0, None)
        assert conn.execute("SELECT count(*) FROM cn_search.dead_letter_replays").fetchone()[0] == 0
        restore(conn, bad, raw)  # the fix

    done = run_cli("replay-failed", "--by", "oncall", "--reason", "source row fixed", "--limit", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert "-> applied" in done.stdout
    with db.connect(seeded) as conn:
        row = conn.execute("SELECT replay_count, last_replayed_by, last_replay_reason, resolved_at IS NOT NULL "
                           "FROM cn_search.dead_letters").fetchone()
        assert row == (1, "oncall", "source row fixed", True)
        assert pg_docs(conn)[(bad, t)] == (bad_seq, False)
        assert conn.execute("SELECT replayed_by, outcome FROM cn_search.dead_letter_replays").fetchall() == [
            ("oncall", "applied")]
    assert bad in meili_ids(meili, t)


def test_a_document_one_engine_rejects_is_dead_lettered_for_that_engine_only(seeded, meili):
    with db.connect(seeded) as conn:
        set_mode(conn, "dual")
        t = topic(conn)
        rows = new_posts(conn, 150, "reject-a")
        forbidden = note("reject", 0, [t], created_at=NOW + 5_000, content="forbidden words")
        bad, bad_seq = forbidden["id"], ProductWriter(conn).publish(forbidden, now=NOW + 5_000)[0]
        rows += [(bad, bad_seq)] + new_posts(conn, 150, "reject-b")
        conn.execute("ALTER TABLE cn_search.post_search_documents "
                     "ADD CONSTRAINT no_forbidden CHECK (content NOT LIKE 'forbidden%%')")
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert not result.stalled and result.end_offset == contract.outbox_head(conn)
        assert conn.execute("SELECT backend, seq, reason_class FROM cn_search.dead_letters").fetchall() == [
            ("pg", bad_seq, "rejected")]
        docs = pg_docs(conn)
        assert all((e, t) in docs for e, _ in rows if e != bad) and (bad, t) not in docs
    assert {e for e, _ in rows} <= meili_ids(meili, t)  # Meilisearch took all


def test_replay_limit_is_honoured_exactly(seeded, meili):
    from search_migration.write_path import dead_letters

    with db.connect(seeded) as conn:
        set_mode(conn, "pg_only")
        for event_id, _ in new_posts(conn, 5, "limit"):  # five product rows gone bad, still bad at replay
            garble(conn, event_id)
        assert consumer.catch_up(conn, meili, retry=FAST).dead_lettered == 5
        outcomes = dead_letters.replay(conn, meili, by="oncall", reason="try two", limit=2)
        assert len(outcomes) == 2 and all(o.action == "failed" for o in outcomes)  # still missing: audited
        counts = conn.execute("SELECT replay_count, count(*) FROM cn_search.dead_letters "
                              "GROUP BY 1 ORDER BY 1").fetchall()
        assert counts == [(0, 3), (1, 2)]


def test_mode_flips_while_rows_flow_land_each_row_in_its_modes_engines(seeded, meili):
    with db.connect(seeded) as conn:
        set_mode(conn, "meili_only")
        t = topic(conn)
        start = contract.consumer_offset(conn, contract.CONSUMER)
        rows = new_posts(conn, 3_000, "flip")
    errors = []

    def consume():
        try:
            with db.connect(seeded) as c:
                consumer.catch_up(c, meili, batch_size=100, retry=FAST)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    worker = threading.Thread(target=consume)
    worker.start()
    with db.connect(seeded) as conn:
        for threshold, mode in ((start + 1_000, "dual"), (start + 2_000, "pg_only")):
            while contract.consumer_offset(conn, contract.CONSUMER) < threshold:
                assert worker.is_alive() or errors, "catch-up finished before the flip"
            set_mode(conn, mode)
        worker.join(timeout=300)
        assert not errors, errors
        assert contract.consumer_offset(conn, contract.CONSUMER) == contract.outbox_head(conn)
        in_pg = {p for (p, _t) in pg_docs(conn)}
    in_meili = meili_ids(meili, t)
    engines = ["".join(("M" if e in in_meili else "") + ("P" if e in in_pg else ""))
               for e, _ in rows]
    # Each row went exactly where the mode of its batch said: Meili-only, then both, then PG-only.
    runs = [engines[0]] + [b for a, b in zip(engines, engines[1:]) if a != b]
    assert runs == ["M", "MP", "P"], runs
