"""How close PostgreSQL's results are to Meilisearch's: overlap@10 and NDCG@10.

NDCG uses ir-measures (pytrec_eval underneath). Without judgments from a golden set, relevance is
graded by the legacy ranking: Meilisearch's first hit is worth 10, its tenth 1.

Two empty result lists measure nothing: the gates never score such a pair (`both_empty`); the shadow
report excludes it from overlap and NDCG and counts it separately. The functions below keep their
benchmark semantics (an empty pair scores 1.0) for callers that compare whole query sets.
"""

from __future__ import annotations

import ir_measures
from ir_measures import nDCG


def both_empty(a: list[str] | None, b: list[str] | None) -> bool:
    """Neither engine returned anything in its top 10: a pair the quality gates cannot score."""
    return not (a or [])[:10] and not (b or [])[:10]


def overlap_at_10(a: list[str], b: list[str]) -> float:
    """Shared fraction of the two top-10s; two empty lists agree."""
    top_a, top_b = a[:10], b[:10]
    if not top_a and not top_b:
        return 1.0
    return len(set(top_a) & set(top_b)) / max(len(top_a), len(top_b))


def legacy_grades(legacy_ids: list[str]) -> dict[str, int]:
    return {doc: 10 - rank for rank, doc in enumerate(legacy_ids[:10])}


def ndcg_at_10(candidates: list[list[str]], judgments: list[dict[str, int]]) -> list[float]:
    """NDCG@10 of each candidate list against its graded judgments (doc id -> grade).

    A query with no relevant document scores 1.0 when the candidate is empty too, else 0.0.
    """
    qrels = [ir_measures.Qrel(str(i), doc, grade) for i, j in enumerate(judgments) for doc, grade in j.items()
             if grade > 0]
    run = [ir_measures.ScoredDoc(str(i), doc, float(100 - rank)) for i, ids in enumerate(candidates)
           for rank, doc in enumerate(ids[:10])]
    scores = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ 10], qrels, run)}
    return [scores.get(str(i), 1.0 if not ids and not any(g > 0 for g in judgments[i].values()) else 0.0)
            for i, ids in enumerate(candidates)]
