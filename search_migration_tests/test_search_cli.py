"""`search-migration search|suggest` as an operator runs them: JSON out, one-line errors."""

from __future__ import annotations

import json

import psycopg

from search_migration import db
from search_migration.write_path import pg_documents
from search_migration.local import services
from search_migration.write_path.pg_documents import DocWrite

from .support.processes import run_cli
from .support.servers import free_port
from .support.writes import seed_indexed, topic


def _seed(url, meili, namespace) -> str:
    """The demo corpus in the product's per-topic indexes and in PostgreSQL; the topic the tests search."""
    seed_indexed(url, meili, namespace, posts=1_000, topics=2, seed=9)
    with db.connect(url) as conn:
        return topic(conn)


def test_search_and_suggest_print_json_from_the_chosen_backend(servers, database_url, meili, namespace):
    TOPIC = _seed(database_url, meili, namespace)
    env = servers.env(DATABASE_URL=database_url)
    out = run_cli("search", "--topic", TOPIC, "--q", "東京", "--limit", "5", env=env)
    assert out.returncode == 0, out.stderr
    page = json.loads(out.stdout)
    assert set(page) == {"topic", "query", "items", "next_cursor", "total", "backend"}
    assert page["backend"] == "meili" and page["topic"] == TOPIC and page["query"] == "東京"
    assert len(page["items"]) == 5 and all(i["topic_id"] == TOPIC and len(i["event_id"]) == 64 for i in page["items"])
    assert page["total"] > 5 and page["next_cursor"]

    nxt = json.loads(run_cli("search", "--topic", TOPIC, "--q", "東京", "--limit", "5", "--backend", "pg",
                             "--cursor", page["next_cursor"], "--viewer", "dave", env=env).stdout)
    assert nxt["backend"] == "pg" and len(nxt["items"]) == 5
    first_pg = json.loads(run_cli("search", "--topic", TOPIC, "--q", "東京", "--limit", "5", "--backend", "pg",
                                  env=env).stdout)
    assert not {i["event_id"] for i in nxt["items"]} & {i["event_id"] for i in first_pg["items"]}

    sug = run_cli("suggest", "--q", "東", "--limit", "3", "--backend", "pg", env=env)
    assert sug.returncode == 0, sug.stderr
    body = json.loads(sug.stdout)
    assert body["backend"] == "pg" and len(body["items"]) == 3
    with db.connect(database_url) as conn:  # each suggested post has a word starting with the prefix
        contents = [conn.execute("SELECT content FROM cn_relay.events WHERE event_id = %s",
                                 (i["event_id"],)).fetchone()[0] for i in body["items"]]
    assert all("東" in c for c in contents), contents


def test_a_sampled_cli_request_is_logged_before_the_process_exits(servers, database_url, meili, namespace):
    TOPIC = _seed(database_url, meili, namespace)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE cn_search.runtime_flags SET flag_value = '100' WHERE flag_name = 'shadow_sample_rate'")
    env = servers.env(DATABASE_URL=database_url)
    out = run_cli("search", "--topic", TOPIC, "--q", "rust", "--viewer", "erin", env=env)
    assert out.returncode == 0, out.stderr
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT primary_backend, cardinality(secondary_ids), viewer_hash "
                            "FROM cn_search.shadow_read_logs").fetchall()
    assert len(rows) == 1 and rows[0][0] == "meili" and rows[0][1] > 0 and rows[0][2] != "erin"
    assert "erin" not in out.stdout + out.stderr


def test_meilisearch_down_is_one_line_and_pg_still_answers(servers, migrated_url, own_meili, namespace):
    TOPIC = f"kukuri:{namespace}-tokyo"
    env = servers.env(DATABASE_URL=migrated_url, MEILI_URL=own_meili.meili_url,
                      MEILI_MASTER_KEY=own_meili.meili_master_key)
    with db.connect(migrated_url) as conn:
        pg_documents.apply(conn, [DocWrite(1, "a" * 64, TOPIC, False, "東京でラーメン", 1_700_000_000)])
    services.down(own_meili)
    for args in (("search", "--topic", TOPIC, "--q", "東京"), ("suggest", "--q", "東")):
        out = run_cli(*args, env=env)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.strip().splitlines() == [
            f"error: search unavailable: Meilisearch at {own_meili.meili_url} is unreachable"]
    out = run_cli("search", "--topic", TOPIC, "--q", "東京", "--backend", "pg", env=env)
    assert out.returncode == 0 and [i["event_id"] for i in json.loads(out.stdout)["items"]] == ["a" * 64]
    bad = run_cli("search", "--topic", TOPIC, "--q", "東京", "--backend", "pg", "--cursor", "%%%", env=env)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["error: invalid cursor"]


def test_postgresql_down_is_one_line_too(servers):
    TOPIC = "kukuri:tokyo"
    env = servers.env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    out = run_cli("search", "--topic", TOPIC, "--q", "東京", "--backend", "pg", env=env)
    assert out.returncode == 1 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: search unavailable: PostgreSQL"), out.stderr
