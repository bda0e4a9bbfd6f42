"""The legacy Meilisearch index: its settings, its document shape and its census.

One document per post per topic, the same grain as `cn_search.post_search_documents`, so a
delete for one topic touches one document and the two indexes compare row for row.
"""

from __future__ import annotations

import hashlib
import time

import meilisearch
from meilisearch.errors import MeilisearchApiError

DEFAULT_INDEX_UID = "posts"
PRIMARY_KEY = "id"

INDEX_SETTINGS = {
    "searchableAttributes": ["content"],
    "filterableAttributes": ["topic_id", "event_id"],
    "sortableAttributes": ["created_at"],
    "displayedAttributes": ["id", "event_id", "topic_id", "content", "created_at"],
    # Japanese-first text: segment with the Japanese tokenizer instead of guessing per document.
    "localizedAttributes": [{"attributePatterns": ["content"], "locales": ["jpn", "eng"]}],
    "faceting": {"maxValuesPerFacet": 100_000},
    "pagination": {"maxTotalHits": 10_000},
    # Meilisearch's default rules, then an explicit tie-break: without it equal documents come back in
    # arrival order, which PostgreSQL cannot know (posts indexed live arrive in no id order).
    "rankingRules": ["words", "typo", "proximity", "attribute", "sort", "exactness", "event_id:asc"],
}


def doc_id(event_id: str, topic_id: str) -> str:
    """A Meilisearch-safe id for (post, topic): topic ids may hold characters ids cannot."""
    return f"{event_id}_{hashlib.blake2b(topic_id.encode(), digest_size=8).hexdigest()}"


def document(event_id: str, topic_id: str, content: str, created_at: int) -> dict:
    return {
        "id": doc_id(event_id, topic_id),
        "event_id": event_id,
        "topic_id": topic_id,
        "content": content,
        "created_at": created_at,
    }


def filter_string(value: str) -> str:
    """A filter string literal: Meilisearch filters have no bind parameters, so escape, never splice raw."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def client(url: str, master_key: str, timeout: float = 30) -> meilisearch.Client:
    return meilisearch.Client(url, master_key or None, timeout=timeout)


def wait(c: meilisearch.Client, task_uid: int, timeout_s: float = 600) -> dict:
    """Wait for one task and fail loudly if Meilisearch rejected it."""
    task = c.wait_for_task(task_uid, timeout_in_ms=int(timeout_s * 1000), interval_in_ms=100)
    if task.status != "succeeded":
        error = (task.error or {}).get("message", task.status)
        raise RuntimeError(f"Meilisearch task {task_uid} {task.status}: {error}")
    return task


def ensure_index(c: meilisearch.Client, uid: str = DEFAULT_INDEX_UID, only_if_missing: bool = False) -> None:
    """Create the index if needed and apply the settings (idempotent: unchanged settings are a no-op)."""
    try:
        c.get_index(uid)
        if only_if_missing:
            return
    except MeilisearchApiError as exc:
        if exc.code != "index_not_found":
            raise
        wait(c, c.create_index(uid, {"primaryKey": PRIMARY_KEY}).task_uid)
    wait(c, c.index(uid).update_settings(INDEX_SETTINGS).task_uid)


def delete_index(c: meilisearch.Client, uid: str = DEFAULT_INDEX_UID) -> None:
    """Delete the index; an index that does not exist is already deleted."""
    task = c.wait_for_task(c.delete_index(uid).task_uid, timeout_in_ms=600_000, interval_in_ms=50)
    if task.status != "succeeded" and (task.error or {}).get("code") != "index_not_found":
        raise RuntimeError(f"Meilisearch task {task.uid} {task.status}: {(task.error or {}).get('message')}")


def counts_per_topic(c: meilisearch.Client, uid: str = DEFAULT_INDEX_UID) -> dict[str, int]:
    """Documents per topic from one facet query (no document is read)."""
    try:
        result = c.index(uid).search("", {"facets": ["topic_id"], "limit": 0})
    except MeilisearchApiError as exc:
        if exc.code == "index_not_found":
            return {}
        raise
    return dict(result.get("facetDistribution", {}).get("topic_id", {}))


def wait_tasks(c: meilisearch.Client, uids: list[int], timeout_s: float = 3600, on_progress=None) -> int:
    """Wait for a set of document tasks; report documents indexed so far; raise on the first failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = c.get_tasks({"uids": [str(u) for u in uids], "limit": len(uids)}).results if uids else []
        failed = [t for t in tasks if t.status in ("failed", "canceled")]
        if failed:
            raise RuntimeError(f"Meilisearch task {failed[0].uid} {failed[0].status}: "
                               f"{(failed[0].error or {}).get('message', '?')}")
        indexed = sum((t.details or {}).get("indexedDocuments") or 0 for t in tasks if t.status == "succeeded")
        if on_progress:
            on_progress(indexed)
        if all(t.status == "succeeded" for t in tasks):
            return indexed
        if time.monotonic() > deadline:
            raise TimeoutError(f"Meilisearch tasks still pending after {timeout_s:.0f}s")
        time.sleep(0.5)
