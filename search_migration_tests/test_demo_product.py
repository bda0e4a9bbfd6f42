"""The demo on the product's shape: its world is the product's pre-migration world, built the way the
product builds it, and the demo never touches a database it did not create.

Real PostgreSQL and Meilisearch (conftest `servers`); every test uses its own topic namespace because
the tests share one Meilisearch.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from search_migration import db
from search_migration.cutover import flags, stages
from search_migration.local import demo_corpus, demo_seed, services
from search_migration.local.demo_corpus import T_END, T_REINDEX, T_START
from search_migration.local.product_fixture import build_product_world
from search_migration.source import contract, shape
from search_migration.write_path import handover, legacy_documents as legacy, meili_index

from .support.processes import run_cli
from .support.servers import REPO

DAY = 86_400


def _ns() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def namespace(servers):
    """A topic namespace of the test's own; its topic indexes are deleted afterwards."""
    ns = _ns()
    yield ns
    client = meili_index.client(servers.meili_url, servers.meili_key)
    for uid in meili_index.topic_indexes(client):
        if uid.startswith(f"topic_kukuri_{ns}"):
            meili_index.delete_index(client, uid)


def _uids(namespace: str, topics: int) -> list[str]:
    return sorted({legacy.index_uid(t) for t in demo_corpus.topic_ids(topics, namespace)})


def _meili_state(meili, uids) -> dict:
    """Every document and the settings of each index (absent ones left out)."""
    docs = demo_seed.legacy_documents(meili, uids)
    return {uid: (docs[uid], meili.index(uid).get_settings()) for uid in docs}


def _pg_dump(url: str) -> str:
    """The product's schemas, definitions and rows, as pg_dump prints them (without the random key of
    its \\restrict lines)."""
    out = subprocess.run([services._pg_bin("pg_dump"), "--no-owner", "-n", "cn_relay", "-n", "cn_index", url],
                         capture_output=True, text=True, check=True)
    return re.sub(r"(?m)^\\(un)?restrict .*$", "", out.stdout)


def _database_state(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return {
            "comment": conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                    "WHERE datname = current_database()").fetchone()[0],
            "schemas": [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1")],
            "relations": conn.execute("SELECT count(*) FROM pg_class").fetchone()[0],
        }


# ---- the world the seed builds -------------------------------------------------------------------


def test_seed_builds_the_products_pre_migration_world_and_a_rerun_is_a_no_op(servers, database_url, meili,
                                                                             namespace):
    posts, topics = 3_000, 6
    result = demo_seed.seed(database_url, meili, posts=posts, topics=topics, seed=7, namespace=namespace)
    assert result.created and not result.complete_before and result.events_published == posts
    uids = _uids(namespace, topics)
    with db.connect(database_url) as conn:
        marker = demo_seed.read_marker(conn)
        assert marker["complete"] and marker["corpus"] == {"posts": posts, "topics": topics, "seed": 7,
                                                            "namespace": namespace}
        assert shape.mismatches(conn) == []
        assert stages.current(flags.read_all(conn)) == "legacy"

        # The product's indexer left exactly what it would: each topic's index holds the searchable
        # events of that topic, document for document, and its offset is at the head.
        expected = demo_seed.expected_legacy_documents(conn)
        assert set(expected) <= set(uids) and len(expected) == topics
        got = demo_seed.legacy_documents(meili, uids)
        assert {uid: docs for uid, docs in got.items() if docs} == expected
        for uid in expected:
            settings = meili.index(uid).get_settings()
            assert settings["searchableAttributes"] == legacy.INDEX_SETTINGS["searchableAttributes"]
            assert sorted(settings["filterableAttributes"]) == sorted(legacy.INDEX_SETTINGS["filterableAttributes"])
            assert settings["sortableAttributes"] == legacy.INDEX_SETTINGS["sortableAttributes"]
            assert meili.get_index(uid).primary_key == "event_id"
        head = contract.outbox_head(conn)
        offsets = dict(conn.execute("SELECT consumer, last_seq FROM cn_relay.consumer_offsets").fetchall())
        assert offsets == {"index-v1": head} and result.index_v1_offset == head == result.outbox_head
        assert conn.execute("SELECT count(*) FROM cn_search.handovers").fetchone()[0] == 0
        job = conn.execute("SELECT status, topic_id, cutoff_seq FROM cn_index.reindex_jobs").fetchall()
        assert len(job) == 1 and job[0][0] == "succeeded" and job[0][1] is None and 0 < job[0][2] < head

        # ... and the corpus holds what a node holds, written the way the relay writes it.
        kinds = dict(conn.execute("SELECT kind, count(*) FROM cn_relay.events GROUP BY kind").fetchall())
        assert kinds[1] > posts * 0.7 and all(kinds.get(k) for k in (0, 3, 10002, 30023, 5))
        assert conn.execute("SELECT count(*) FROM cn_relay.events WHERE NOT is_current AND NOT is_deleted"
                            ).fetchone()[0] > 0  # older replaceable/addressable versions
        reasons = dict(conn.execute("SELECT reason, count(*) FROM cn_relay.events_outbox WHERE op = 'delete' "
                                    "GROUP BY reason").fetchall())
        deleted = conn.execute("SELECT count(*) FROM cn_relay.events WHERE is_deleted").fetchone()[0]
        assert deleted > 0 and set(reasons) <= {"nip09", "expiration"}
        assert conn.execute("SELECT count(*) FROM cn_relay.events_outbox WHERE effective_key IS NOT NULL"
                            ).fetchone()[0] > 0
        # expiring notes: some expired inside the history, the others only years after its end
        expiring = [r[0] for r in conn.execute("SELECT expires_at FROM cn_relay.events WHERE expires_at IS NOT NULL")]
        assert any(e < T_REINDEX for e in expiring) and any(e > T_END + 4 * 365 * DAY for e in expiring)
        assert not [e for e in expiring if T_REINDEX <= e <= T_END + 4 * 365 * DAY]
        assert conn.execute("SELECT count(*) FROM cn_relay.events WHERE created_at < %s",
                            (T_START - 365 * DAY,)).fetchone()[0] > 0  # signed years before they arrived
        assert conn.execute("SELECT count(*) FROM (SELECT event_id FROM cn_relay.event_topics GROUP BY event_id "
                            "HAVING count(*) > 1) m").fetchone()[0] > 0
        # retention pruned the outbox to its last 30 days; the events stay
        oldest_outbox = conn.execute("SELECT min(ingested_at) FROM cn_relay.events_outbox").fetchone()[0]
        assert oldest_outbox.timestamp() >= T_REINDEX - 30 * DAY
        assert conn.execute("SELECT count(*) FROM cn_relay.events e WHERE NOT EXISTS (SELECT 1 FROM "
                            "cn_relay.events_outbox o WHERE o.event_id = e.event_id)").fetchone()[0] > posts / 2
        contents = [r[0] for r in conn.execute("SELECT content FROM cn_relay.events WHERE kind = 1")]
        assert sum(bool(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]{12,}", c)) for c in contents) > len(contents) / 3
        assert any(re.search(r"[\u3040-\u30ff\u4e00-\u9fff][A-Za-z]", c) for c in contents)  # "Rustで"
        before = (demo_seed.fingerprint(conn),
                  conn.execute("SELECT sum(seen_count), max(last_seen_at) FROM cn_relay.event_dedupe").fetchone(),
                  conn.execute("SELECT count(*) FROM cn_search.runtime_flag_audit").fetchone()[0])
    tasks = meili.get_tasks({"indexUids": uids, "limit": 1}).total

    # The same arguments again: nothing is written anywhere.
    again = demo_seed.seed(database_url, meili, posts=posts, topics=topics, seed=7, namespace=namespace)
    assert again.complete_before and again.events_published == 0 and again.fingerprint == result.fingerprint
    with db.connect(database_url) as conn:
        assert (demo_seed.fingerprint(conn),
                conn.execute("SELECT sum(seen_count), max(last_seen_at) FROM cn_relay.event_dedupe").fetchone(),
                conn.execute("SELECT count(*) FROM cn_search.runtime_flag_audit").fetchone()[0]) == before
    assert meili.get_tasks({"indexUids": uids, "limit": 1}).total == tasks

    # Other arguments are another corpus: refused in one line, unless --reset.
    with pytest.raises(demo_seed.SeedError, match="another demo corpus"):
        demo_seed.seed(database_url, meili, posts=posts, topics=topics, seed=8, namespace=namespace)


def test_a_seed_killed_half_way_resumes_to_the_same_world(servers, database_url, meili, namespace):
    posts, topics = 2_500, 4
    env = servers.env(DATABASE_URL=database_url)
    args = ["demo", "seed", "--posts", str(posts), "--topics", str(topics), "--seed", "3", "--namespace", namespace,
            "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "search_migration.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it once part of the history is stored
        assert proc.poll() is None, proc.communicate()
        try:
            with psycopg.connect(database_url) as conn:
                if conn.execute("SELECT count(*) FROM cn_relay.events").fetchone()[0] >= 800:
                    break
        except psycopg.errors.UndefinedTable:
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT count(*) FROM cn_relay.events").fetchone()[0]
        assert 800 <= stored < posts and not demo_seed.read_marker(conn)["complete"]
        # every stored event is whole: its topic rows and its outbox rows committed with it
        assert conn.execute("SELECT count(*) FROM cn_relay.events e WHERE NOT EXISTS (SELECT 1 FROM "
                            "cn_relay.event_topics t WHERE t.event_id = e.event_id) OR NOT EXISTS (SELECT 1 FROM "
                            "cn_relay.events_outbox o WHERE o.event_id = e.event_id)").fetchone()[0] == 0

    rerun = run_cli(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert "already stored" in rerun.stdout
    with db.connect(database_url) as conn:
        resumed = demo_seed.fingerprint(conn)
        expected = demo_seed.expected_legacy_documents(conn)
    got = demo_seed.legacy_documents(meili, _uids(namespace, topics))
    assert {uid: docs for uid, docs in got.items() if docs} == expected

    # An uninterrupted seed of the same arguments writes the very same rows.
    twin = f"sm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{twin}"')
    try:
        twin_url = database_url.rsplit("/", 1)[0] + f"/{twin}"
        whole = demo_seed.seed(twin_url, meili, posts=posts, topics=topics, seed=3, namespace=namespace)
        assert whole.fingerprint == resumed
    finally:
        with psycopg.connect(servers.database_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{twin}" WITH (FORCE)')


# ---- never a database the demo did not create ----------------------------------------------------


def test_seed_reset_run_and_dev_refuse_the_products_database_and_change_nothing(servers, database_url, meili,
                                                                                namespace):
    """A database that holds the product's schema and data (built by the product's writer and indexer,
    no demo marker): every demo entry point refuses in one line, and neither PostgreSQL nor
    Meilisearch changes."""
    with db.connect(database_url) as conn:
        world = build_product_world(conn, meili, now=int(time.time()), namespace=namespace)
        uids = sorted(world.expected_documents(conn))
    demo_ns = f"{namespace}-demo"  # the demo's own topics, distinct from the product world's
    demo_uids = _uids(demo_ns, 3)
    dump, state, indexes = _pg_dump(database_url), _database_state(database_url), _meili_state(meili, uids)
    tasks = meili.get_tasks({"limit": 1}).total
    assert dump.count("COPY cn_relay.events ") == 1 and len(indexes) == len(uids) > 2

    env = servers.env(DATABASE_URL=database_url)
    name = database_url.rsplit("/", 1)[1]
    for args in (["demo", "seed", "--posts", "100", "--topics", "3", "--namespace", demo_ns, "--quiet"],
                 ["demo", "seed", "--reset", "--posts", "100", "--topics", "3", "--namespace", demo_ns, "--quiet"],
                 ["demo", "run", "--posts", "100", "--topics", "3"],
                 ["dev", "--posts", "100", "--topics", "3"]):
        result = run_cli(*args, env=env, timeout=120)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.strip().splitlines() == [
            f"error: database {name!r} holds cn_relay but no demo marker: it was not created by `demo seed` "
            "(the product's database?); refusing to touch it, nothing was changed"], args

    with pytest.raises(demo_seed.NotDemoDatabase):  # the API too, and reset on its own
        demo_seed.seed(database_url, meili, posts=100, topics=3, namespace=demo_ns, reset_first=True)
    with db.connect(database_url) as conn, pytest.raises(demo_seed.NotDemoDatabase):
        demo_seed.reset(conn, meili)

    assert _pg_dump(database_url) == dump
    assert _database_state(database_url) == state
    assert _meili_state(meili, uids) == indexes
    assert all(meili_index.count(meili, uid) == 0 for uid in demo_uids)
    assert not [t for t in meili.get_tasks({"indexUids": uids + demo_uids, "limit": 100}).results
                if t.uid >= tasks]


def test_seed_refuses_a_database_holding_anything_else(servers, database_url, meili, namespace):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.orders (id bigint PRIMARY KEY)")
    state = _database_state(database_url)
    with pytest.raises(demo_seed.NotDemoDatabase, match=r"is not empty \(it holds public.orders\)"):
        demo_seed.seed(database_url, meili, posts=100, topics=2, namespace=namespace)
    assert _database_state(database_url) == state


# ---- --reset on the demo's own database ----------------------------------------------------------


def test_reset_starts_the_demo_over_on_its_own_database(servers, database_url, meili, namespace):
    demo_seed.seed(database_url, meili, posts=600, topics=4, seed=5, namespace=namespace)
    with db.connect(database_url) as conn:  # a migration under way: handed over, dual, our consumer moved
        handover.adopt(conn, from_consumer="index-v1", by="test", reason="migration under way")
        flags.set_flags(conn, stages.BASE_FLAGS["dual"], by="test", reason="dual", stage_from="legacy",
                        stage_to="dual")
        audit_before = conn.execute("SELECT count(*) FROM cn_search.runtime_flag_audit").fetchone()[0]
    old_uids = _uids(namespace, 4)
    assert all(meili_index.count(meili, uid) for uid in old_uids)

    result = run_cli("demo", "seed", "--reset", "--posts", "400", "--topics", "2", "--seed", "6",
                     "--namespace", namespace, "--quiet", env=servers.env(DATABASE_URL=database_url))
    assert result.returncode == 0, result.stderr
    assert "after --reset" in result.stdout

    new_uids = _uids(namespace, 2)
    with db.connect(database_url) as conn:
        assert demo_seed.read_marker(conn)["corpus"]["posts"] == 400
        assert stages.current(flags.read_all(conn)) == "legacy"
        audit = conn.execute("SELECT changed_by, stage_from, stage_to, reason FROM cn_search.runtime_flag_audit "
                             "ORDER BY audit_id").fetchall()
        assert len(audit) > audit_before
        assert audit[-1][:3] == ("demo seed --reset", "dual", "legacy") and "1 handover(s)" in audit[-1][3]
        assert conn.execute("SELECT count(*) FROM cn_search.handovers").fetchone()[0] == 0
        assert dict(conn.execute("SELECT consumer, last_seq FROM cn_relay.consumer_offsets").fetchall()) == {
            "index-v1": contract.outbox_head(conn)}
        assert conn.execute("SELECT count(*) FROM cn_relay.event_dedupe").fetchone()[0] == 400  # events: less
        expected = demo_seed.expected_legacy_documents(conn)
    got = demo_seed.legacy_documents(meili, old_uids + new_uids)
    assert {uid: docs for uid, docs in got.items() if docs} == expected
    assert all(uid not in got for uid in set(old_uids) - set(new_uids))  # the old topics' indexes are gone

    # A reset at legacy (no flag to change) is audited all the same.
    with db.connect(database_url) as conn:
        before = conn.execute("SELECT count(*) FROM cn_search.runtime_flag_audit").fetchone()[0]
    demo_seed.seed(database_url, meili, posts=300, topics=2, seed=6, namespace=namespace, reset_first=True)
    with db.connect(database_url) as conn:
        last = conn.execute("SELECT changed_by, stage_from, stage_to FROM cn_search.runtime_flag_audit "
                            "ORDER BY audit_id DESC LIMIT 1").fetchone()
        assert conn.execute("SELECT count(*) FROM cn_search.runtime_flag_audit").fetchone()[0] == before + 1
    assert last == ("demo seed --reset", "legacy", "legacy")


# ---- the headless demo ------------------------------------------------------------------------------


def test_demo_run_takes_its_own_world_from_legacy_to_live(servers, database_url, namespace, tmp_path):
    """README's headless command, on a database the demo seeded: legacy -> dual -> shadow 5/25/50 -> live
    through real Dagster runs, a writer publishing and a tail applying meanwhile, every gate passing on
    the way (the cutover job refuses a move otherwise, and the command fails with its reason)."""
    env = servers.env(DATABASE_URL=database_url, DAGSTER_PG_URL=servers.create_database(),
                      SEARCH_MIGRATION_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(tmp_path / "dagster_home"))
    seeded = run_cli("demo", "seed", "--posts", "2000", "--topics", "4", "--namespace", namespace, "--quiet",
                     env=env, timeout=300)
    assert seeded.returncode == 0, seeded.stderr[-2000:]
    ran = run_cli("demo", "run", env=env, timeout=600)
    assert ran.returncode == 0, (ran.stdout[-3000:], ran.stderr[-2000:])
    steps = [line for line in ran.stdout.splitlines() if line.startswith("[")]
    assert [s.split("now at ", 1)[1] for s in steps if "cutover_job: now at" in s] == [
        "dual", "shadow (shadow 5%)", "shadow (shadow 25%)", "shadow (shadow 50%)", "live"]
    assert not [s for s in steps if " FAIL" in s]
    with db.connect(database_url) as conn:
        assert stages.current(flags.read_all(conn)) == "live"
