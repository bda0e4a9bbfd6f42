"""The demo corpus: deterministic, written like the product writes, and indexed like stage `legacy`."""

from __future__ import annotations

import subprocess

import psutil
import psycopg
import pytest

from search_migration import db
from search_migration.local import demo_seed
from search_migration.cutover import flags
from search_migration.write_path import meili_index
from search_migration.local import services
from search_migration.source import contract
from search_migration.cutover import stages
from search_migration.local.demo_corpus import expected_live_rows_per_topic, generate
from search_migration.schema.migrate import migrate

from .support.processes import CLI, run_cli
from .support.servers import with_dbname


def _ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT event_id FROM cn_relay.events ORDER BY event_id")]


def test_generator_is_deterministic_and_varied():
    a = [p for b in generate(3_000, 8, seed=7) for p in b.posts]
    b = [p for b in generate(3_000, 8, seed=7) for p in b.posts]
    c = [p for b in generate(3_000, 8, seed=8) for p in b.posts]
    assert [(p.event_id, p.content, p.topics, p.created_at) for p in a] == \
           [(p.event_id, p.content, p.topics, p.created_at) for p in b]
    assert [p.content for p in a] != [p.content for p in c]
    text = "\n".join(p.content for p in a)
    for needle in ("#", "@", "ｶ", "Ｐ", "が", "🍜"):
        assert needle in text
    assert any(ch.isascii() and ch.isalpha() for ch in text)
    assert any(len(p.topics) > 1 for p in a)
    span_days = (max(p.created_at for p in a) - min(p.created_at for p in a)) / 86400
    assert span_days > 90
    batches = list(generate(12_000, 8, seed=7))
    assert sum(len(b.deletions) for b in batches) > 0 and sum(len(b.topic_removals) for b in batches) > 0


def test_same_seed_same_corpus_and_legacy_index_matches_source(servers, migrated_url, database_url, meili,
                                                              index_uid):
    posts, topics = 12_000, 8
    with db.connect(migrated_url) as conn:
        result = demo_seed.seed(conn, meili, index_uid, posts=posts, topics=topics, seed=11)
        live = contract.live_rows_per_topic(conn)
        head = contract.outbox_head(conn)
        offset = contract.consumer_offset(conn, contract.CONSUMER)
        deleted = conn.execute("SELECT count(*) FROM cn_relay.events WHERE is_deleted").fetchone()[0]
        orphans = conn.execute("""
            SELECT count(*) FROM cn_relay.event_topics et
            WHERE NOT EXISTS (SELECT 1 FROM cn_relay.events_outbox o
                              WHERE o.event_id = et.event_id AND o.topic_id = et.topic_id AND o.op = 'upsert')
        """).fetchone()[0]
    assert result.posts_written == posts and deleted > 0 and orphans == 0
    assert live == expected_live_rows_per_topic(posts, topics, seed=11)
    # stage legacy: every live (post, topic) is in Meilisearch, and the consumer is at the outbox head
    assert meili_index.counts_per_topic(meili, index_uid) == live
    assert offset == head == result.outbox_head
    settings = meili.index(index_uid).get_settings()
    assert "topic_id" in settings["filterableAttributes"]
    assert settings["localizedAttributes"][0]["locales"] == ["jpn", "eng"]

    # A second database seeded with the same seed holds the same ids and the same content hash.
    with psycopg.connect(servers.database_url, autocommit=True) as admin:
        admin.execute('CREATE DATABASE "sm_test_twin"')
    twin = with_dbname(migrated_url, "sm_test_twin")
    try:
        migrate(twin)
        with db.connect(twin) as conn:
            twin_result = demo_seed.seed(conn, meili, index_uid, posts=posts, topics=topics, seed=11)
        assert twin_result.fingerprint == result.fingerprint
        assert _ids(twin) == _ids(migrated_url)
    finally:
        with psycopg.connect(servers.database_url, autocommit=True) as admin:
            admin.execute('DROP DATABASE IF EXISTS "sm_test_twin" WITH (FORCE)')

    # Re-running is a no-op; a different corpus is refused unless --reset.
    with db.connect(migrated_url) as conn:
        again = demo_seed.seed(conn, meili, index_uid, posts=posts, topics=topics, seed=11)
        assert (again.posts_written, again.documents_indexed, again.fingerprint) == (0, 0, result.fingerprint)
        with pytest.raises(demo_seed.SeedError, match="different corpus"):
            demo_seed.seed(conn, meili, index_uid, posts=posts, topics=topics, seed=12)
        flags.set_flags(conn, {"search_write_mode": "dual"}, by="test", reason="a migration under way")
        other = demo_seed.seed(conn, meili, index_uid, posts=2_000, topics=topics, seed=12, reset_first=True)
        assert other.fingerprint != result.fingerprint
        assert flags.read_all(conn) == stages.BASE_FLAGS["legacy"]  # --reset starts the migration over
        assert meili_index.counts_per_topic(meili, index_uid) == contract.live_rows_per_topic(conn)


def _source_consistent(url: str) -> None:
    """Every committed event has its topic rows and outbox rows: no half-written batch."""
    with psycopg.connect(url) as conn:
        events = conn.execute("SELECT count(*) FROM cn_relay.events").fetchone()[0]
        without_outbox = conn.execute("""
            SELECT count(*) FROM cn_relay.events e
            WHERE NOT EXISTS (SELECT 1 FROM cn_relay.events_outbox o WHERE o.event_id = e.event_id)
               OR NOT EXISTS (SELECT 1 FROM cn_relay.event_topics t WHERE t.event_id = e.event_id
                              UNION ALL SELECT 1 FROM cn_relay.events_outbox o
                              WHERE o.event_id = e.event_id AND o.reason = 'topic_removed')
        """).fetchone()[0]
    assert events % 5_000 == 0 or events == 0
    assert without_outbox == 0


def test_seed_with_meilisearch_down_fails_in_one_line_and_writes_nothing(servers, migrated_url, own_meili):
    services.down(own_meili)
    env = servers.env(DATABASE_URL=migrated_url, MEILI_URL=own_meili.meili_url,
                      MEILI_MASTER_KEY=own_meili.meili_master_key)
    result = run_cli("demo", "seed", "--posts", "1000", "--topics", "4", "--quiet", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: Meilisearch at {own_meili.meili_url} is unreachable; nothing was written"]
    assert _ids(migrated_url) == []


def test_meilisearch_killed_mid_index_leaves_source_consistent_and_rerun_finishes(servers, migrated_url,
                                                                                  own_meili, meili):
    env = servers.env(DATABASE_URL=migrated_url, MEILI_URL=own_meili.meili_url,
                      MEILI_MASTER_KEY=own_meili.meili_master_key, MEILI_INDEX="posts")
    proc = subprocess.Popen(
        [*CLI, "demo", "seed", "--posts", "30000", "--topics", "10", "--quiet"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    meili_pid = services.recorded_pids(own_meili)[0]
    # Kill Meilisearch as soon as the seed has handed it documents.
    while own.get_tasks({"types": ["documentAdditionOrUpdate"], "limit": 1}).total == 0:
        assert proc.poll() is None, proc.stderr.read()
    psutil.Process(meili_pid).kill()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "went away while indexing" in lines[0], stderr
    _source_consistent(migrated_url)
    with db.connect(migrated_url) as conn:
        assert conn.execute("SELECT count(*) FROM cn_relay.events").fetchone()[0] == 30_000
        assert contract.consumer_offset(conn, contract.CONSUMER) == 0  # legacy indexer did not finish

    services.up(own_meili)  # the outage ends; the same data directory comes back
    rerun = run_cli("demo", "seed", "--posts", "30000", "--topics", "10", "--quiet", env=env)
    assert rerun.returncode == 0, rerun.stderr
    with db.connect(migrated_url) as conn:
        assert meili_index.counts_per_topic(own, "posts") == contract.live_rows_per_topic(conn)
        assert contract.consumer_offset(conn, contract.CONSUMER) == contract.outbox_head(conn)
