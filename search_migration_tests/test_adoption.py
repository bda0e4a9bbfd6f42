"""Adopting the product (issue 14): on the product's own world (local.product_fixture), `db migrate` touches
nothing of the product, a foreign `cn_search` or a `cn_relay` of another shape is refused in one line, the
handover takes index-v1's place at its offset, and a role given only what `db grants` prints can run the
migration but cannot write the product's rows or change its schema. The source indexes `db source-indexes`
prints apply cleanly, and nothing needs them."""

from __future__ import annotations

import json
import subprocess
import time

import psycopg
import pytest

from search_migration import backfill, db
from search_migration.local import services
from search_migration.local.product_fixture import ProductWorld, apply_product_schema, build_product_world
from search_migration.local.product_indexer import ProductIndexer
from search_migration.local.product_writer import ProductWriter, build_event, pubkey_of
from search_migration.source import contract
from search_migration.write_path import consumer, handover, meili_index

from .support import invariants
from .support.backfill import actual, backfill_all, expected
from .support.processes import run_cli
from .support.servers import as_role, login_role
from .support.writes import FAST, set_mode


# --------------------------------------------------------------------------- helpers


def pg_dump_cn_relay(url: str) -> bytes:
    """`pg_dump --schema-only -n cn_relay`, by the pg_dump shipped beside the embedded server (a fixed
    \\restrict key: newer pg_dump versions print a random one per dump)."""
    pg_dump = services._pg_bin_dir() / "pg_dump"
    out = subprocess.run([str(pg_dump), "--schema-only", "-n", "cn_relay", "--restrict-key=searchmigrationtest",
                          "-d", url], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert b"CREATE TABLE cn_relay.events " in out.stdout
    return out.stdout


def product_settings(meili, namespace: str) -> dict[str, dict]:
    """Every product index of the world (its namespace's `topic_*` uids) with its settings."""
    uids = [u for u in meili_index.topic_indexes(meili) if u.startswith(f"topic_kukuri_{namespace}")]
    return {uid: dict(meili.index(uid).get_settings()) for uid in uids}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def sql_script(text: str) -> list[str]:
    """The statements of printed SQL, comments dropped, each `;`-terminated statement on its own
    (a function body between $f$ quotes stays whole)."""
    statements, current = [], []
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        joined = "\n".join(current)
        if joined.rstrip().endswith(";") and joined.count("$f$") % 2 == 0:
            statements.append(joined)
            current = []
    assert not current, current
    return statements


@pytest.fixture
def world(database_url, meili, namespace) -> ProductWorld:
    """The product's pre-migration database and per-topic indexes, as the product leaves them."""
    with db.connect(database_url) as conn:
        return build_product_world(conn, meili, now=int(time.time()), namespace=namespace)


@pytest.fixture
def role(database_url):
    """A login role of its own, dropped with what it owns."""
    with login_role(database_url, "sm_role") as name:
        yield name


# --------------------------------------------------------------------------- nothing of the product touched


def test_migrate_on_the_products_world_changes_nothing_of_the_product(world, database_url, meili, namespace, servers):
    dump_before, settings_before = pg_dump_cn_relay(database_url), product_settings(meili, namespace)
    assert len(settings_before) >= 4 and all(s["searchableAttributes"] for s in settings_before.values())
    with db.connect(database_url) as conn:
        rows_before = conn.execute("SELECT (SELECT count(*) FROM cn_relay.events), "
                                   "(SELECT count(*) FROM cn_relay.events_outbox), "
                                   "(SELECT array_agg((consumer, last_seq) ORDER BY consumer) "
                                   " FROM cn_relay.consumer_offsets)").fetchone()

    env = servers.env(DATABASE_URL=database_url)
    migrated = run_cli("db", "migrate", env=env)
    assert migrated.returncode == 0 and migrated.stdout.startswith("applied "), migrated.stderr
    assert run_cli("db", "migrate", env=env).stdout.strip() == "database is up to date"

    assert pg_dump_cn_relay(database_url) == dump_before  # byte for byte
    assert product_settings(meili, namespace) == settings_before
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT (SELECT count(*) FROM cn_relay.events), "
                            "(SELECT count(*) FROM cn_relay.events_outbox), "
                            "(SELECT array_agg((consumer, last_seq) ORDER BY consumer) "
                            " FROM cn_relay.consumer_offsets)").fetchone() == rows_before
        # our history lives in cn_search, nothing of ours in public
        assert conn.execute("SELECT count(*) FROM cn_search.schema_versions").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_a_cn_search_that_is_not_ours_is_refused_by_every_command(database_url, servers):
    with db.connect(database_url) as conn:
        apply_product_schema(conn)
        conn.execute("CREATE SCHEMA cn_search")
        conn.execute("CREATE TABLE cn_search.documents (event_id text PRIMARY KEY, body text)")  # the product's own
    env = servers.env(DATABASE_URL=database_url)
    for command in (("db", "migrate"), ("flags", "show"), ("status",),
                    ("adopt", "--from-consumer", "index-v1", "--by", "ops", "--reason", "test", "--dry-run")):
        line = one_line_error(run_cli(*command, env=env))
        assert "cn_search exists and is not ours" in line and "'documents'" in line, (command, line)
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT array_agg(relname ORDER BY relname) FROM pg_class "
                            "WHERE relnamespace = 'cn_search'::regnamespace").fetchone()[0] == [
            "documents", "documents_pkey"]  # nothing added, nothing taken


def test_a_cn_relay_of_another_shape_is_refused_naming_the_first_mismatch(database_url, servers):
    with db.connect(database_url) as conn:
        apply_product_schema(conn)
        conn.execute("ALTER TABLE cn_relay.events ALTER COLUMN expires_at TYPE integer")
        conn.execute("ALTER TABLE cn_relay.events_outbox DROP COLUMN reason")
    env = servers.env(DATABASE_URL=database_url)
    line = one_line_error(run_cli("db", "migrate", env=env))
    assert "cn_relay is not the product's shape: column cn_relay.events.expires_at is integer, expected bigint " \
           "(and 1 more)" in line, line
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT to_regnamespace('cn_search')").fetchone()[0] is None
        conn.execute("ALTER TABLE cn_relay.events ALTER COLUMN expires_at TYPE bigint")
    line = one_line_error(run_cli("db", "migrate", env=env))
    assert "column cn_relay.events_outbox.reason does not exist" in line and "more" not in line, line


# --------------------------------------------------------------------------- the handover


def test_adopt_hands_over_at_index_v1s_offset(world, database_url, meili, namespace, servers, tmp_path):
    home = tmp_path / "dagster_home"  # `status` reads the gates from a Dagster instance: one of its own
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = servers.env(DATABASE_URL=database_url, DAGSTER_HOME=str(home))
    assert run_cli("db", "migrate", env=env).returncode == 0
    with db.connect(database_url) as conn:
        offset = contract.consumer_offset(conn, contract.PRODUCT_INDEXER)
        head = contract.outbox_head(conn)
        assert 0 < offset == head  # the product's indexer was at the head when it stopped
        with pytest.raises(handover.HandoverError, match="has not taken over"):
            consumer.catch_up(conn, meili, retry=FAST)  # two writers of the product's indexes: refused
    before = run_cli("status", "--json", env=env)
    assert before.returncode == 0, before.stderr
    assert json.loads(before.stdout)["handover"]["adopted"] is False

    adopt = ("adopt", "--from-consumer", "index-v1", "--by", "ops", "--reason", "index-v1 stopped")
    dry = run_cli(*adopt, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == f"would adopt: {contract.CONSUMER} starts at index-v1's offset {offset}; nothing changed"
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM cn_search.handovers").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM cn_search.consumer_side_offsets").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM cn_relay.consumer_offsets WHERE consumer = %s",
                            (contract.CONSUMER,)).fetchone()[0] == 0

    done = run_cli(*adopt, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"adopted: {contract.CONSUMER} starts at index-v1's offset {offset} (by ops)")
    with db.connect(database_url) as conn:
        assert contract.consumer_offset(conn, contract.CONSUMER) == offset
        assert contract.consumer_offset(conn, contract.PRODUCT_INDEXER) == offset  # its row is left as it was
        # the engine the write mode (meili_only) writes starts there; PostgreSQL at the consumer's offset when
        # it enters (dual), owed nothing before: the backfill copies what came before the watermark
        assert dict(conn.execute("SELECT backend, last_seq FROM cn_search.consumer_side_offsets WHERE consumer = %s",
                                 (contract.CONSUMER,)).fetchall()) == {"meili": offset}
        assert conn.execute("SELECT from_consumer, consumer, offset_seq, handed_by, reason FROM cn_search.handovers"
                            ).fetchall() == [("index-v1", contract.CONSUMER, offset, "ops", "index-v1 stopped")]
    again = run_cli(*adopt, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("already adopted") and "nothing changed" in again.stdout
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM cn_search.handovers").fetchone()[0] == 1

        # nothing replayed: a catch-up right after the handover has nothing to do
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert (result.start_offset, result.end_offset, result.rows_applied) == (offset, head, 0)

    after = run_cli("status", "--json", env=env)
    assert after.returncode == 0, after.stderr
    quiet = json.loads(after.stdout)["handover"]
    assert quiet["adopted"] and quiet["at_seq"] == offset and quiet["product_indexer_moved"] == 0
    assert "warning" not in quiet

    # the product's indexer was not stopped after all: it consumes a new post
    with db.connect(database_url) as conn:
        now = int(time.time())
        ProductWriter(conn).publish(build_event(pubkey=pubkey_of("late"), content="still indexed by index-v1",
                                                topics=[world.topics["tokyo"]], created_at=now), now=now)
        ProductIndexer(conn, meili).run(now=now)
        assert contract.consumer_offset(conn, contract.PRODUCT_INDEXER) == offset + 1
    status = run_cli("status", "--json", env=env)
    moving = json.loads(status.stdout)["handover"]
    assert moving["product_indexer_moved"] == 1, moving
    assert "index-v1 moved 1 rows after the handover" in moving["warning"] and "stop it" in moving["warning"]
    text = run_cli("status", env=env).stdout
    assert "index-v1 moved 1 rows after the handover" in text, text


# --------------------------------------------------------------------------- least privilege


def test_a_role_with_only_the_printed_grants_runs_the_migration_and_touches_nothing(
        world, database_url, meili, namespace, servers, role):
    settings_before = product_settings(meili, namespace)
    grants = run_cli("db", "grants", "--role", role, env=servers.env(DATABASE_URL=database_url))
    assert grants.returncode == 0, grants.stderr
    with psycopg.connect(database_url, autocommit=True) as su:  # the DBA runs what was printed
        for statement in sql_script(grants.stdout):
            su.execute(statement)
    dump_before = pg_dump_cn_relay(database_url)  # with the DBA's grants: from here on, the role's doing

    url = as_role(database_url, role)
    env = servers.env(DATABASE_URL=url)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
                            ).fetchone() == (role, False)
    migrated = run_cli("db", "migrate", env=env)
    assert migrated.returncode == 0 and migrated.stdout.startswith("applied "), migrated.stderr
    adopted = run_cli("adopt", "--from-consumer", "index-v1", "--by", "ops", "--reason", "least privilege", env=env)
    assert adopted.returncode == 0, adopted.stderr

    with db.connect(url) as conn:
        # no source index of ours exists: the catch-up and the backfill work without them
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'cn_relay' "
                            "AND indexname LIKE 'search_migration%%'").fetchone()[0] == 0
        set_mode(conn, "dual", by="ops", reason="least privilege")
        now = int(time.time())
        writer_conn = psycopg.connect(database_url, autocommit=True)  # the product keeps writing, as itself
        with writer_conn:
            ProductWriter(writer_conn).publish(build_event(
                pubkey=pubkey_of("after"), content="after the handover", topics=[world.topics["rust"]],
                created_at=now), now=now)
        caught = consumer.catch_up(conn, meili, retry=FAST)
        assert not caught.stalled and caught.end_offset == contract.outbox_head(conn)
    backfill_all(url, owner="least-privilege")
    with db.connect(url) as conn:
        wm = backfill.latest_watermark(conn)
        assert actual(conn) >= expected(conn, wm.seq) and len(expected(conn, wm.seq)) > 10
        head = consumer.catch_up(conn, meili, retry=FAST).end_offset
        inv = invariants.check(conn, head)
        assert inv.ok, inv.as_dict()

        # what the role cannot do: move the product's indexer, write the product's rows, change its schema
        for forbidden in (
                "SELECT cn_search.set_consumer_offset('index-v1', 0)",
                "UPDATE cn_relay.consumer_offsets SET last_seq = 0 WHERE consumer = 'index-v1'",
                "INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES ('index-v2', 0)",
                "DELETE FROM cn_relay.events_outbox",
                "CREATE INDEX ON cn_relay.events (kind)",
                "CREATE TABLE cn_relay.ours (x int)",
                "ALTER TABLE cn_relay.events ADD COLUMN ours int",
                "DROP TABLE cn_relay.event_topics"):
            with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.RaiseException)):
                with conn.transaction():
                    conn.execute(forbidden)
        assert contract.consumer_offset(conn, contract.PRODUCT_INDEXER) == world_offset(database_url)
    assert pg_dump_cn_relay(database_url) == dump_before
    assert product_settings(meili, namespace) == settings_before


def world_offset(url: str) -> int:
    """index-v1's offset read as the superuser (the product's indexer stopped at the outbox head it had seen)."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT last_seq FROM cn_relay.consumer_offsets WHERE consumer = 'index-v1'").fetchone()[0]


# --------------------------------------------------------------------------- optional source indexes


def test_source_indexes_apply_concurrently_one_by_one(world, database_url, meili, servers):
    env = servers.env(DATABASE_URL=database_url)
    assert run_cli("db", "migrate", env=env).returncode == 0
    printed = run_cli("db", "source-indexes", env=env)
    assert printed.returncode == 0, printed.stderr
    statements = sql_script(printed.stdout)
    assert statements and all(s.startswith("CREATE INDEX CONCURRENTLY IF NOT EXISTS ") for s in statements)
    with psycopg.connect(database_url, autocommit=True) as dba:  # CONCURRENTLY: never inside a transaction
        for _ in range(2):  # safe to run twice
            for statement in statements:
                dba.execute(statement)
        made = dba.execute("SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE c.relnamespace = 'cn_relay'::regnamespace AND c.relname LIKE 'search_migration%%' "
                           "ORDER BY 1").fetchall()
    assert len(made) == len(statements) and all(valid for _, valid in made), made

    # with them, the write path and the backfill give the same result as without (the least-privilege test)
    with db.connect(database_url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="ops", reason="source indexes")
        set_mode(conn, "dual")
    backfill_all(database_url)
    with db.connect(database_url) as conn:
        head = consumer.catch_up(conn, meili, retry=FAST).end_offset
        inv = invariants.check(conn, head)
        assert inv.ok, inv.as_dict()
