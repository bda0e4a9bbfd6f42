"""The product's per-topic Meilisearch indexes: the client, index creation as the product does it, census.

The product (cn-index) keeps one index per topic, uid `topic_<sanitized topic id>` (legacy_documents),
created on first write with its settings; an index that exists is never reconfigured here: its
settings are the product's, and changing them would re-rank and reindex a production index.
"""

from __future__ import annotations

import time

import meilisearch
from meilisearch.errors import MeilisearchApiError

from search_migration.write_path import legacy_documents
from search_migration.write_path.legacy_documents import PRIMARY_KEY, index_uid

__all__ = ["PRIMARY_KEY", "client", "count", "delete_index", "ensure_topic_index", "filter_string", "index_uid",
           "topic_indexes", "wait", "wait_tasks"]


def filter_string(value: str) -> str:
    """A filter string literal: Meilisearch filters have no bind parameters, so escape, never splice raw."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def client(url: str, key: str, timeout: float = 30) -> meilisearch.Client:
    return meilisearch.Client(url, key or None, timeout=timeout)


def wait(c: meilisearch.Client, task_uid: int, timeout_s: float = 600) -> dict:
    """Wait for one task and fail loudly if Meilisearch rejected it."""
    task = c.wait_for_task(task_uid, timeout_in_ms=int(timeout_s * 1000), interval_in_ms=50)
    if task.status != "succeeded":
        error = (task.error or {}).get("code", task.status)
        raise RuntimeError(f"Meilisearch task {task_uid} {task.status}: {error}")
    return task


def ensure_topic_index(c: meilisearch.Client, topic_id: str) -> tuple[str, list[int]]:
    """The topic's index uid, created with the product's settings when missing (cn-index
    `ensure_topic_index`); an existing index is left exactly as it is. Returns the uid and the tasks
    it enqueued (none when the index existed)."""
    uid = index_uid(topic_id)
    try:
        c.get_index(uid)
        return uid, []
    except MeilisearchApiError as exc:
        if exc.code != "index_not_found":
            raise
    created = c.create_index(uid, {"primaryKey": PRIMARY_KEY}).task_uid
    settings = c.index(uid).update_settings(legacy_documents.INDEX_SETTINGS).task_uid
    return uid, [created, settings]


def topic_indexes(c: meilisearch.Client) -> list[str]:
    """Every `topic_*` index uid Meilisearch holds."""
    uids, offset = [], 0
    while True:
        page = c.get_indexes({"limit": 1000, "offset": offset})
        uids += [i.uid for i in page["results"] if i.uid.startswith("topic_")]
        offset += len(page["results"])
        if offset >= page["total"] or not page["results"]:
            return sorted(uids)


def count(c: meilisearch.Client, uid: str) -> int:
    """Documents in one index (0 when it does not exist)."""
    try:
        return c.index(uid).get_stats().number_of_documents
    except MeilisearchApiError as exc:
        if exc.code == "index_not_found":
            return 0
        raise


def delete_index(c: meilisearch.Client, uid: str) -> None:
    """Delete the index; an index that does not exist is already deleted."""
    task = c.wait_for_task(c.delete_index(uid).task_uid, timeout_in_ms=600_000, interval_in_ms=50)
    if task.status != "succeeded" and (task.error or {}).get("code") != "index_not_found":
        raise RuntimeError(f"Meilisearch task {task.uid} {task.status}: {(task.error or {}).get('code')}")


def wait_tasks(c: meilisearch.Client, uids: list[int], timeout_s: float = 3600, on_progress=None) -> int:
    """Wait for a set of document tasks; report documents indexed so far; raise on the first failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks = c.get_tasks({"uids": [str(u) for u in uids], "limit": len(uids)}).results if uids else []
        failed = [t for t in tasks if t.status in ("failed", "canceled")]
        if failed:
            raise RuntimeError(f"Meilisearch task {failed[0].uid} {failed[0].status}: "
                               f"{(failed[0].error or {}).get('code', '?')}")
        indexed = sum((t.details or {}).get("indexedDocuments") or 0 for t in tasks if t.status == "succeeded")
        if on_progress:
            on_progress(indexed)
        if all(t.status == "succeeded" for t in tasks):
            return indexed
        if time.monotonic() > deadline:
            raise TimeoutError(f"Meilisearch tasks still pending after {timeout_s:.0f}s")
        time.sleep(0.5)
