"""The demo corpus: deterministic, product-shaped, and a seed that fails cleanly when Meilisearch does."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections import Counter

import psutil
import psycopg

from search_migration import db
from search_migration.local import demo_corpus, demo_seed, services
from search_migration.local.demo_corpus import T_END, T_REINDEX, T_START, corpus
from search_migration.local.product_writer import expires_at_of, is_addressable, is_replaceable, normalize_topics
from search_migration.source import contract
from search_migration.write_path import meili_index

from .support.processes import run_cli
from .support.servers import REPO


def _ids(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('cn_relay.events')").fetchone()[0] is None:
            return []
        return [r[0] for r in conn.execute("SELECT event_id FROM cn_relay.events ORDER BY event_id")]


def test_corpus_is_deterministic_and_shaped_like_the_products_events():
    a = list(corpus(4_000, 8, seed=7))
    b = list(corpus(4_000, 8, seed=7))
    c = list(corpus(4_000, 8, seed=8))
    assert [(i.event, i.now) for i in a] == [(i.event, i.now) for i in b]
    assert [i.event["content"] for i in a] != [i.event["content"] for i in c]
    assert len({i.event["id"] for i in a}) == len(a)  # no event twice (the relay would drop the repeat)
    assert [i.now for i in a] == sorted(i.now for i in a) and T_START <= a[0].now and a[-1].now < T_END

    roles = Counter(i.role for i in a)
    kinds = Counter(i.event["kind"] for i in a)
    assert kinds[1] > 3_000 and all(kinds[k] for k in (0, 3, 10002, 30023, 5))
    assert all(roles[r] for r in ("backdated", "expiring", "deletion", "article", "profile"))
    for item in a:  # everything the relay requires, so that nothing is refused
        event = item.event
        assert set(event) == {"id", "pubkey", "created_at", "kind", "tags", "content", "sig"}
        assert normalize_topics(event) and all(t.startswith("kukuri:") for t in normalize_topics(event))
        expires = expires_at_of(event)
        assert expires is None or expires > item.now
        assert expires is None or expires < T_REINDEX or expires > T_END + 4 * 365 * 86_400
        if is_addressable(event["kind"]):
            assert any(t[0] == "d" for t in event["tags"])
    # a replaceable or addressable event keeps its topics across versions
    topics_by_key: dict[tuple, set] = {}
    for item in a:
        e = item.event
        if is_replaceable(e["kind"]) or is_addressable(e["kind"]):
            d = next((t[1] for t in e["tags"] if t[0] == "d"), None)
            topics = frozenset(normalize_topics(e))
            assert topics_by_key.setdefault((e["pubkey"], e["kind"], d), topics) == topics
    assert any(len(normalize_topics(i.event)) > 1 for i in a)

    text = "\n".join(i.event["content"] for i in a)
    for needle in ("#", "@", "ｶ", "Ｐ", "が", "。"):
        assert needle in text
    assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]{15,}", text)  # Japanese written without spaces
    assert re.search(r"[A-Za-z][\u3040-\u30ff\u4e00-\u9fff]", text)  # "Rustで"
    # the history first, then the tail after the reindex
    tail = demo_corpus.tail_size(4_000)
    assert all(i.now < T_REINDEX for i in a[:-tail]) and all(i.now > T_REINDEX for i in a[-tail:])
    assert [len(b) for b in demo_corpus.batches(4_000, 8, seed=7)][-2:] == [4_000 - tail - 7 * 500, tail]


def test_seed_with_meilisearch_down_fails_in_one_line_and_writes_nothing(servers, database_url, own_meili):
    services.down(own_meili)
    env = servers.env(DATABASE_URL=database_url, MEILI_URL=own_meili.meili_url,
                      MEILI_MASTER_KEY=own_meili.meili_master_key)
    result = run_cli("demo", "seed", "--posts", "1000", "--topics", "4", "--quiet", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: Meilisearch at {own_meili.meili_url} is unreachable; nothing was written"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regnamespace('cn_relay')").fetchone()[0] is None
        assert demo_seed.read_marker(conn) is None


def test_meilisearch_killed_mid_index_leaves_source_consistent_and_rerun_finishes(servers, database_url,
                                                                                  own_meili):
    env = servers.env(DATABASE_URL=database_url, MEILI_URL=own_meili.meili_url,
                      MEILI_MASTER_KEY=own_meili.meili_master_key)
    args = ["demo", "seed", "--posts", "6000", "--topics", "10", "--namespace", f"k{uuid.uuid4().hex[:8]}", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "search_migration.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    meili_pid = services.recorded_pids(own_meili)[0]
    # Kill Meilisearch as soon as the product's indexer has handed it documents.
    while own.get_tasks({"types": ["documentAdditionOrUpdate"], "limit": 1}).total == 0:
        assert proc.poll() is None, proc.stderr.read()
    psutil.Process(meili_pid).kill()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "went away while indexing" in lines[0], stderr
    with db.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM cn_relay.event_dedupe").fetchone()[0] < 6000
        assert not demo_seed.read_marker(conn)["complete"]
        assert conn.execute("SELECT count(*) FROM cn_relay.events e WHERE NOT EXISTS (SELECT 1 FROM "
                            "cn_relay.events_outbox o WHERE o.event_id = e.event_id) AND e.is_current AND e.ingested_at > "
                            "to_timestamp(%s)", (T_REINDEX - 29 * 86_400,)).fetchone()[0] == 0

    services.up(own_meili)  # the outage ends; the same data directory comes back
    rerun = run_cli(*args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    with db.connect(database_url) as conn:
        expected = demo_seed.expected_legacy_documents(conn)
        assert contract.consumer_offset(conn, "index-v1") == contract.outbox_head(conn)
        assert conn.execute("SELECT count(*) FROM cn_relay.event_dedupe").fetchone()[0] == 6000
    got = demo_seed.legacy_documents(own, sorted(expected))
    assert got == expected
