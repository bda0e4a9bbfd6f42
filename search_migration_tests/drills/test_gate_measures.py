"""Drills (issue 16, rules 6 and 7): the quality gates measure what they claim to.

- Rule 6: the error-rate gate measures the engine that answers users in the stages it opens. In `live`
  PostgreSQL is primary: its failures are what users see. The application's role loses its grant on
  cn_search.post_search_documents (a real permission error for the router's session; nothing mocked):
  the sampled requests that failed are logged with the primary's error, and error_rate turns red.
  Without the protection (a failing primary never logged, or only the shadow's errors counted) the
  report sees only the successful reads and error_rate stays green.
- Rule 7: pairs empty on both sides are no evidence. 30 real shadow reads on a topic whose Meilisearch
  index lost the documents it used to rank first, plus 35 golden queries on the demo corpus's own topics
  that match nothing on either engine: the empty pairs are excluded and counted, and the quality gates
  do not pass on them. Without the protection the 35 empties score 1.0 and carry the median.
"""

from __future__ import annotations

import json

import psycopg
import pytest

from search_migration import db
from search_migration.cutover import flags, stages
from search_migration.gates import shadow_report
from search_migration.search import meili_search
from search_migration.search.read_router import ReadRouter, sample_bucket
from search_migration.source import contract
from search_migration.write_path import consumer, meili_index

from ..support import invariants
from .helpers import dual_and_caught_up, materialize_report
from ..support.servers import as_role, login_role
from ..support.cutover import QUERIES, TEST_POLICY, use_policy
from ..support.writes import FAST, topic


def _stage(url: str, stage: str, rate: int) -> None:
    with db.connect(url) as conn:
        flags.set_flags(conn, {**stages.BASE_FLAGS[stage], "shadow_sample_rate": str(rate)}, by="drill",
                        reason=f"drill: {stage}, every read shadowed")


@pytest.fixture
def app_role(seeded):
    """The application's own login role: what the read path needs, nothing more."""
    with login_role(seeded, "sm_app", "GRANT USAGE ON SCHEMA cn_search TO {role}",
                    "GRANT SELECT ON ALL TABLES IN SCHEMA cn_search TO {role}",
                    "GRANT INSERT, UPDATE ON cn_search.shadow_read_logs, cn_search.read_request_counts TO {role}",
                    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA cn_search TO {role}") as name:
        yield name


def test_a_failing_primary_postgresql_in_live_turns_error_rate_red(dagster_env, seeded, meili, app_role,
                                                                  monkeypatch, tmp_path):
    use_policy(monkeypatch, tmp_path, **TEST_POLICY)
    dual_and_caught_up(seeded, meili)
    _stage(seeded, "live", 100)  # PostgreSQL answers users; every read shadowed on Meilisearch
    with db.connect(seeded) as conn:
        where = topic(conn)
    asked = [(f"viewer-{i}", QUERIES[i % len(QUERIES)]) for i in range(40)]
    with ReadRouter(as_role(seeded, app_role), meili) as router:
        for viewer, q in asked:
            assert router.search(where, q, viewer=viewer)["backend"] == "pg"
        router.drain()
        healthy, checks = materialize_report(dagster_env, "shadow_read_report")
        assert checks["error_rate"].passed and healthy["error_rate"] == 0.0, healthy

        with psycopg.connect(seeded, autocommit=True) as owner:  # the application's grant is lost
            owner.execute(f'REVOKE SELECT ON cn_search.post_search_documents FROM "{app_role}"')
        for viewer, q in asked[:10]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the user gets the error
                router.search(where, q, viewer=f"after-{viewer}")
        router.drain()

    print("\nDRILL rule 6 (PostgreSQL primary failing in live):")
    metadata, checks = materialize_report(dagster_env, "shadow_read_report")
    assert not checks["error_rate"].passed, \
        f"error_rate green while 10 PostgreSQL reads failed in live: {checks['error_rate'].metadata['detail'].value}"
    assert checks["error_rate"].metadata["detail"].value.startswith("PostgreSQL error rate 0.2 >= 0.01")
    assert metadata["error_rate_engine"] == "pg" and metadata["errors_pg"] == 10, metadata
    assert metadata["error_rate"] == pytest.approx(10 / 50 if metadata["golden_queries"] == 0 else
                                                   10 / (50 + metadata["golden_queries"]), abs=1e-3), metadata
    with db.connect(seeded) as conn:
        logged = conn.execute("SELECT count(*), count(primary_error), count(*) FILTER (WHERE primary_backend = 'pg' "
                              "AND primary_ids IS NULL AND primary_error LIKE 'permission denied%%') "
                              "FROM cn_search.shadow_read_logs").fetchone()
    assert logged == (50, 10, 10), logged
    _assert_invariant(seeded, meili, "rule 6")


def _assert_invariant(url: str, meili, drill: str, *, meili_missing: int = 0):
    """Caught up: 0 lost, duplicated, resurrected or wrong version; Meilisearch misses only what the
    drill removed from it on purpose."""
    with db.connect(url) as conn:
        end = consumer.catch_up(conn, meili, retry=FAST).end_offset
        assert end == contract.outbox_head(conn)
        inv = invariants.check(conn, end, meili)
    print(f"\nDRILL {drill} invariant: " + str({k: v for k, v in inv.as_dict().items() if k != "examples"}))
    assert (inv.lost, inv.duplicated, inv.resurrected, inv.wrong_version, inv.unexplained) == (0, 0, 0, 0, 0), \
        inv.as_dict()
    assert (inv.meili_missing, inv.meili_extra, inv.meili_wrong_content) == (meili_missing, 0, 0), inv.as_dict()


def test_pairs_empty_on_both_sides_never_pass_the_quality_gates(dagster_env, seeded, meili, monkeypatch, tmp_path):
    use_policy(monkeypatch, tmp_path, **TEST_POLICY)
    dual_and_caught_up(seeded, meili)
    with db.connect(seeded) as conn:
        topics = contract.topic_ids(conn)
        where = topics[0]
    # Meilisearch's index of the topic lost the documents it ranked first (real drift, in the real index)
    lost = {i["event_id"] for q in QUERIES for i in meili_search.search(meili, where, q, 10, 0).items}
    index = meili.index(meili_index.index_uid(where))
    meili_index.wait(meili, index.delete_documents(sorted(lost)).task_uid)

    # the operator's golden file: 35 queries on the demo corpus's own topics that match nothing anywhere,
    # and 5 on a topic the product does not have (not replayed, counted)
    golden = [{"topic": topics[i % len(topics)], "q": f"qzxvjk{i:02d}wq"} for i in range(35)]
    golden += [{"topic": f"{where}-absent", "q": "ラーメン"} for _ in range(5)]
    golden_file = tmp_path / "golden.json"
    golden_file.write_text(json.dumps(golden, ensure_ascii=False))
    monkeypatch.setenv(shadow_report.GOLDEN_ENV, str(golden_file))

    _stage(seeded, "shadow", 50)
    with ReadRouter(seeded, meili) as router:  # 30 real reads, every one sampled
        reads = [(f"viewer-{i}", q) for i in range(5_000) for q in QUERIES if sample_bucket(f"viewer-{i}", q) < 50][:30]
        for viewer, q in reads:
            router.search(where, q, viewer=viewer)
        router.drain()

    print("\nDRILL rule 7 (30 real reads, 35 golden queries empty on both sides):")
    metadata, checks = materialize_report(dagster_env, "shadow_read_report")
    assert metadata["shadow_search_samples"] == 30 and metadata["golden_queries"] == 35, metadata
    assert metadata["golden_queries_skipped"] == 5 and metadata["empty_pairs_golden"] == 35, metadata
    assert checks["shadow_sample_size"].passed  # enough real traffic: the quality itself decides
    for name in ("overlap_at_10", "ndcg_at_10"):
        assert not checks[name].passed, (name, checks[name].metadata["detail"].value)
    assert metadata["overlap_at_10_median"] is None or metadata["overlap_at_10_median"] < 0.7, metadata
    _assert_invariant(seeded, meili, "rule 7", meili_missing=len(lost))  # the drift the drill made, nothing else

