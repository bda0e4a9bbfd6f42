"""Drill 10: hostile inputs at every entry point, and properties of the normalizer and tokenizer.

Fault: SQL metacharacters, 100k-character strings, empty and whitespace-only strings, NUL bytes and
lone surrogates as search/suggest queries and topic ids (read router, both backends, and the CLI);
invalid flag values (`flags set`); unknown stages and bad shadow rates (cutover_job).
Protection: the router's input validation (one-line BadRequest), parameterized SQL, the product's
per-topic Meilisearch indexes addressed by a sanitized uid (no filter spliced), flags.validate, stages.plan. Never a crash trace, never an injection, nothing changed.
Properties (hypothesis, derandomized): normalize never crashes, is idempotent and deterministic, and a
post is found by a query made of its own words (the query's tsquery matches the post's tsvector in a
real PostgreSQL).
"""

from __future__ import annotations

import json

import dagster as dg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_migration import db
from search_migration.search.read_router import BadRequest, ReadRouter
from search_migration.search import milli, segment
from search_migration.search.text import normalize
from search_migration.write_path.pg_documents import DocWrite

from ..support.processes import run_cli
from ..support.writes import seed_indexed, topic
from ..support.cutover import run_job

# One fixed, database-free profile: the same examples on every machine, in seconds.
PROPERTIES = settings(derandomize=True, database=None, max_examples=300, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(st.characters(codec="utf-8"), max_size=80)  # any text PostgreSQL can hold (no lone surrogates)
WORDY = st.lists(st.sampled_from(["東京", "ラーメン", "#nostr", "@alice", "rust", "Café", "ｶﾒﾗ", "が", "a_b",
                                  "x#東京", "🍜", "e\u0301", "\u200b", "2026", "한국어", "שלום", "dev_team"]), max_size=8)

HOSTILE = {
    "filter": 'x" OR topic_id != "y',  # spliced into a filter or an index uid, it would match every topic
    "sql": "' OR '1'='1'; DROP TABLE cn_relay.events; --",
    "meta": "' ; -- % _ \\",
    "like": "%_%",
    "long": "東京ラーメン " * 14_286,  # 100k characters
    "empty": "",
    "blank": " \t\n\u3000 ",
    "nul": "東京\x00ラーメン",
    "surrogate": "東京\ud800",
    "escape": r"\ud800 \\x00",
}
REFUSED = {"long", "nul", "surrogate"}  # a clear BadRequest; everything else answers (often empty)


# --------------------------------------------------------------------------- properties


@PROPERTIES
@given(TEXT)
def test_normalize_never_crashes_is_idempotent_and_deterministic(text):
    once = normalize(text)
    assert normalize(once) == once
    assert normalize(text) == once
    assert once == " ".join(once.split()) and "\x00" not in once
    milli.tsvector_literal(milli.document_words([once]))  # never raises


def _found_by_own_words(conn, text: str) -> None:
    """The post as the write path indexes it (its five attributes, Meilisearch's words) holds every word
    Meilisearch would search for when the post's own text is the query, and PostgreSQL parses it."""
    doc = milli.document_words(DocWrite(1, "0" * 64, "kukuri:hostile", False, text, 0).attributes())
    conn.execute("SELECT %s::tsvector", (milli.tsvector_literal(doc),))  # never raises
    for word in segment.query_words(text):
        assert word in doc, (text, word)


@PROPERTIES
@given(TEXT)
def test_a_post_is_found_by_its_own_words(servers, text):
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        _found_by_own_words(conn, text)


@PROPERTIES
@given(WORDY)
def test_a_post_of_real_words_is_found_by_each_of_them(servers, words):
    with psycopg.connect(servers.database_url, autocommit=True) as conn:
        _found_by_own_words(conn, " ".join(words))


# --------------------------------------------------------------------------- the read router


@pytest.fixture
def corpus(database_url, meili, namespace):
    """The product's corpus in index-v1's per-topic indexes, handed over, and in PostgreSQL's documents."""
    seed_indexed(database_url, meili, namespace, posts=1_000, topics=2, seed=9)
    return database_url


@pytest.fixture
def corpus_topic(corpus) -> str:
    """The corpus's busiest topic: its own index in Meilisearch, its documents in PostgreSQL."""
    with db.connect(corpus) as conn:
        return topic(conn)


def _fingerprint(url: str) -> tuple:
    with db.connect(url) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM cn_relay.events), (SELECT count(*) FROM cn_search.post_search_documents),"
            " (SELECT string_agg(flag_name || '=' || flag_value, ',' ORDER BY flag_name) FROM cn_search.runtime_flags),"
            " (SELECT count(*) FROM cn_search.runtime_flag_audit)").fetchone()


def test_router_answers_or_refuses_hostile_queries_and_topics_on_both_backends(corpus, corpus_topic, meili):
    TOPIC = corpus_topic
    before = _fingerprint(corpus)
    with ReadRouter(corpus, meili) as router:
        for backend in ("meili", "pg"):
            for name, value in HOSTILE.items():
                calls = {"q": lambda: router.search(TOPIC, value, backend=backend),
                         "topic": lambda: router.search(value, "東京", backend=backend),
                         "suggest": lambda: router.suggest(value, backend=backend)}
                for where, call in calls.items():
                    try:
                        out = call()
                    except BadRequest as exc:
                        assert name in REFUSED, (backend, name, where, str(exc))
                        assert str(exc) and "\n" not in str(exc) and len(str(exc)) < 200
                        continue
                    assert name not in REFUSED, (backend, name, where)
                    if where == "topic":  # a topic that is not a topic finds nothing (no index, no rows)
                        assert out["items"] == [], (backend, name, out)
                    elif where == "q":
                        assert all(i["topic_id"] == TOPIC for i in out["items"]), (backend, name)
                    if name in ("meta", "like", "empty", "blank"):  # no words: no results
                        assert out["items"] == [], (backend, name, where, out)
                    # "sql" has words (or, 1, drop, table, events): the product's Meilisearch query drops
                    # words until something matches (matchingStrategy last), so it may find posts of the
                    # topic, and only of the topic; the injection itself changes nothing (fingerprint below)
        found = router.search(TOPIC, "東京", backend="pg")["items"]
    assert found, "the corpus still answers"
    assert _fingerprint(corpus) == before


def test_cli_search_refuses_or_answers_hostile_input_in_one_line(servers, corpus, corpus_topic):
    TOPIC = corpus_topic
    env = servers.env(DATABASE_URL=corpus)
    cases = [("search", "--topic", TOPIC, "--q", HOSTILE["sql"], "--backend", "pg"),
             ("search", "--topic", HOSTILE["filter"], "--q", "東京"),
             ("suggest", "--q", HOSTILE["meta"], "--backend", "pg"),
             ("search", "--topic", TOPIC, "--q", "a " * 50_000, "--backend", "pg"),  # 100k (argv caps one at 128 KiB)
             ("search", "--topic", TOPIC, "--q", "東京\udcff"),  # an invalid UTF-8 byte on the command line
             ("search", "--topic", " ", "--q", " ", "--viewer", "")]
    for args in cases:
        out = run_cli(*args, env=env)
        assert "Traceback" not in out.stderr, (args, out.stderr[-2000:])
        if out.returncode == 0:
            body = json.loads(out.stdout)
            assert all(i["topic_id"] == args[2] for i in body["items"]) and (args[0] == "suggest" or body["items"] == []
                                                                               or args[2] == TOPIC), body
        else:
            assert out.returncode == 1 and out.stdout == ""
            lines = out.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr


# --------------------------------------------------------------------------- flags and cutover


def test_invalid_flag_values_are_refused_in_one_line_and_change_nothing(servers, migrated_url):
    env = servers.env(DATABASE_URL=migrated_url)
    before = _fingerprint(migrated_url)
    cases = [("search_write_mode", "dual; DROP TABLE cn_search.runtime_flags"), ("search_write_mode", "DUAL"),
             ("search_write_mode", ""), ("search_read_backend", "elastic"), ("shadow_sample_rate", "101"),
             ("shadow_sample_rate", "-1"), ("shadow_sample_rate", "²"), ("shadow_sample_rate", "5.5"),
             ("shadow_sample_rate", "1" * 5000), ("no_such_flag", "1"), ("shadow_sample_rate\\'", "5")]
    for name, value in cases:
        out = run_cli("flags", "set", name, value, "--by", "mallory", "--reason", "drill", env=env)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), (name, out.stderr[-2000:])
        assert len(lines[0]) < 400
    for by, reason in (("", "drill"), (" ", "drill"), ("mallory", ""), ("mallory", "\t")):
        out = run_cli("flags", "set", "shadow_sample_rate", "5", "--by", by, "--reason", reason, env=env)
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert _fingerprint(migrated_url) == before  # flags and their audit untouched



def test_cutover_refuses_unknown_stages_and_bad_shadow_rates(dagster_env, migrated_url):
    before = _fingerprint(migrated_url)
    cases = [({"target_stage": "nope"}, "unknown stage"), ({"target_stage": "LIVE"}, "unknown stage"),
             ({"target_stage": "live'; --"}, "unknown stage"), ({"target_stage": ""}, "unknown stage"),
             ({"target_stage": "shadow", "shadow_rate": 7}, "shadow rate must be one of 5, 25, 50"),
             ({"target_stage": "shadow", "shadow_rate": -5}, "shadow rate must be one of 5, 25, 50"),
             ({"target_stage": "live", "shadow_rate": 1000}, "shadow rate in live must be 0-100"),
             ({"target_stage": "dual", "shadow_rate": 50}, "has no shadow reads"),
             ({"target_stage": "legacy"}, "already at legacy")]
    for config, reason in cases:
        result = run_job(dagster_env, "cutover_job", **config)
        assert not result.success, config
        messages = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure]
        assert len(messages) == 1 and len(messages[0].strip().splitlines()) == 1, messages
        assert reason in messages[0] and "Traceback" not in messages[0], (config, messages)
    with pytest.raises(dg.DagsterInvalidConfigError):
        run_job(dagster_env, "cutover_job", target_stage="shadow", shadow_rate="five")
    assert _fingerprint(migrated_url) == before
