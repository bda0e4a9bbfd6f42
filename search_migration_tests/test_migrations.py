"""The migration runner: idempotent, serialized by an advisory lock, refusing edited history; it creates
cn_search only, after verifying that cn_relay is the product's, and records its history inside cn_search."""

from __future__ import annotations

import shutil
import threading

import psycopg
import pytest

from search_migration import db
from search_migration.local.product_fixture import apply_product_schema
from search_migration.schema.migrate import ADVISORY_LOCK_KEY, MIGRATIONS_DIR, MigrationError, migrate

from .support.processes import run_cli

ALL = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))


@pytest.fixture
def product_url(database_url: str) -> str:
    """The product's (empty) pre-migration schema: what `db migrate` finds."""
    with db.connect(database_url) as conn:
        apply_product_schema(conn)
    return database_url


def test_migrate_creates_cn_search_only_and_is_idempotent(product_url):
    with psycopg.connect(product_url) as conn:
        before = {r[0] for r in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")}
    assert migrate(product_url) == ALL
    assert migrate(product_url) == []
    with psycopg.connect(product_url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")}
        flags = dict(conn.execute("SELECT flag_name, flag_value FROM cn_search.runtime_flags"))
        applied = conn.execute("SELECT count(*) FROM cn_search.schema_versions").fetchone()[0]
    assert {"cn_relay.events", "cn_relay.event_topics", "cn_relay.events_outbox",
            "cn_relay.consumer_offsets"} <= before
    assert {t for t in tables - before if not t.startswith("cn_search.")} == set()  # nothing outside cn_search
    assert {"cn_search.schema_versions", "cn_search.runtime_flags", "cn_search.runtime_flag_audit",
            "cn_search.post_search_documents", "cn_search.backfill_jobs", "cn_search.backfill_checkpoints",
            "cn_search.shadow_read_logs", "cn_search.dead_letters", "cn_search.dead_letter_replays",
            "cn_search.handovers"} <= tables
    assert flags == {"search_read_backend": "meili", "search_write_mode": "meili_only",
                     "shadow_sample_rate": "0", "suggest_read_backend": "meili"}
    assert applied == len(ALL)


def test_migrate_refuses_a_database_without_the_products_cn_relay(database_url):
    with pytest.raises(MigrationError, match="schema cn_relay does not exist"):
        migrate(database_url)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regnamespace('cn_search')").fetchone()[0] is None  # nothing created


def test_flag_audit_is_append_only(migrated_url):
    with psycopg.connect(migrated_url) as conn:
        conn.execute("INSERT INTO cn_search.runtime_flag_audit (flag_name, old_value, new_value, changed_by, reason) "
                     "VALUES ('search_write_mode', 'meili_only', 'dual', 'alice', 'test')")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE cn_search.runtime_flag_audit SET reason = 'rewritten'")


def test_two_runners_at_once_one_applies_the_other_noops(product_url):
    results: dict[str, list[str]] = {}
    with psycopg.connect(product_url, autocommit=True) as holder:
        # Hold the runners' lock so both start and queue behind it, then let them race for it.
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, migrate(product_url)))
                   for n in ("a", "b")]
        for t in threads:
            t.start()
        waiting = 0
        while waiting < 2:  # both runners are blocked on the advisory lock
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]
            assert all(t.is_alive() for t in threads)
        holder.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
        for t in threads:
            t.join(timeout=60)
    assert sorted(results.values(), key=len) == [[], ALL]
    with psycopg.connect(product_url) as conn:
        assert conn.execute("SELECT count(*) FROM cn_search.schema_versions").fetchone()[0] == len(ALL)


def test_edited_applied_migration_is_refused_by_name(product_url, tmp_path):
    local = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, local, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    assert migrate(product_url, local) == ALL
    edited = local / ALL[0]
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
    (local / "9999_later.sql").write_text("CREATE TABLE cn_search.should_not_exist (x int);")
    with pytest.raises(MigrationError, match=f"{ALL[0]} was edited after it was applied"):
        migrate(product_url, local)
    with psycopg.connect(product_url) as conn:
        assert conn.execute("SELECT to_regclass('cn_search.should_not_exist')").fetchone()[0] is None


def test_cli_migrate_reports_and_exits_cleanly(product_url, servers):
    env = servers.env(DATABASE_URL=product_url)
    first = run_cli("db", "migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"applied {len(ALL)} migration(s)")
    again = run_cli("db", "migrate", env=env)
    assert again.returncode == 0 and again.stdout.strip() == "database is up to date"


def test_cli_unreachable_database_is_one_line(servers):
    env = servers.env(DATABASE_URL="postgresql://nobody:s3cret@127.0.0.1:1/nothing")
    result = run_cli("db", "migrate", env=env)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot connect to PostgreSQL" in result.stderr and "s3cret" not in result.stderr
