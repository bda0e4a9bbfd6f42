"""The migration runner: idempotent, serialized by an advisory lock, refusing edited history."""

from __future__ import annotations

import shutil
import threading

import psycopg
import pytest

from search_migration.schema.migrate import ADVISORY_LOCK_KEY, MIGRATIONS_DIR, MigrationError, migrate

from .support.processes import run_cli

ALL = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))


def test_migrate_creates_contract_and_is_idempotent(database_url):
    assert migrate(database_url) == ALL
    assert migrate(database_url) == []
    with psycopg.connect(database_url) as conn:
        tables = {r[0] for r in conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('cn_relay', 'cn_search')")}
        flags = dict(conn.execute("SELECT flag_name, flag_value FROM cn_search.runtime_flags"))
        applied = conn.execute("SELECT count(*) FROM public.search_migration_schema_versions").fetchone()[0]
    assert {"cn_relay.events", "cn_relay.event_topics", "cn_relay.events_outbox", "cn_relay.consumer_offsets",
            "cn_search.runtime_flags", "cn_search.runtime_flag_audit", "cn_search.post_search_documents",
            "cn_search.backfill_jobs", "cn_search.backfill_checkpoints", "cn_search.shadow_read_logs",
            "cn_search.dead_letters", "cn_search.dead_letter_replays"} <= tables
    assert flags == {"search_read_backend": "meili", "search_write_mode": "meili_only",
                     "shadow_sample_rate": "0", "suggest_read_backend": "meili"}
    assert applied == len(ALL)


def test_flag_audit_is_append_only(migrated_url):
    with psycopg.connect(migrated_url) as conn:
        conn.execute("INSERT INTO cn_search.runtime_flag_audit (flag_name, old_value, new_value, changed_by, reason) "
                     "VALUES ('search_write_mode', 'meili_only', 'dual', 'alice', 'test')")
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("UPDATE cn_search.runtime_flag_audit SET reason = 'rewritten'")


def test_two_runners_at_once_one_applies_the_other_noops(database_url):
    results: dict[str, list[str]] = {}
    with psycopg.connect(database_url, autocommit=True) as holder:
        # Hold the runners' lock so both start and queue behind it, then let them race for it.
        holder.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, migrate(database_url)))
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
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.search_migration_schema_versions").fetchone()[0] == len(ALL)


def test_edited_applied_migration_is_refused_by_name(database_url, tmp_path, servers):
    local = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, local)
    assert migrate(database_url, local) == ALL
    edited = local / ALL[0]
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
    (local / "9999_later.sql").write_text("CREATE TABLE cn_search.should_not_exist (x int);")
    with pytest.raises(MigrationError, match=f"{ALL[0]} was edited after it was applied"):
        migrate(database_url, local)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('cn_search.should_not_exist')").fetchone()[0] is None


def test_cli_migrate_reports_and_exits_cleanly(database_url, servers):
    env = servers.env(DATABASE_URL=database_url)
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
