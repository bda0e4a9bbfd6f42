"""The legacy engine's query side: the product's per-topic Meilisearch indexes, asked as the product asks.

`search` is the product's `/v1/search` (kukuri-community-node cn-user-api `subscriptions::search` and
cn-core `MeiliClient::search`, 884c1885 and before its own search migration): the topic's own index
`topic_<sanitized topic id>` (legacy_documents.index_uid), `POST /indexes/{uid}/search` with exactly
`{q, limit, offset}` and no filter (the index is the topic's), limit default 20 clamped to 1..50, the
cursor an offset, the next one `offset + hits` while that is below `estimatedTotalHits`, and a missing
index (404) answered as no results. Where two topics share a uid, a search of one returns the other's
documents too, exactly as the product does; each item's topic_id is the document's own.

One deliberate difference: a query without words (empty, blank, only symbols) answers nothing, as
pg_search does, where the product would run a placeholder search listing the index.

Both engines answer in the same shapes (pg_search.Page, suggestion dicts) so the router can serve
either and compare them. A Meilisearch that cannot be reached is one exception, MeiliUnavailable.
"""

from __future__ import annotations

import threading
import time

import meilisearch
from meilisearch.errors import MeilisearchApiError, MeilisearchCommunicationError, MeilisearchTimeoutError

from search_migration.search.pg_search import Page
from search_migration.search import segment
from search_migration.write_path import meili_index

DEFAULT_LIMIT = 20  # cn-user-api: `query.limit.unwrap_or(20).clamp(1, 50)`
MAX_LIMIT = 50
INDEX_CACHE_S = 10.0  # how long suggest trusts its list of topic indexes (a new topic shows up after this)


class MeiliUnavailable(Exception):
    """Meilisearch could not answer; the message is one printable line."""


def _call(client: meilisearch.Client, fn):
    try:
        return fn()
    except (MeilisearchCommunicationError, MeilisearchTimeoutError):
        raise MeiliUnavailable(f"Meilisearch at {client.config.url} is unreachable") from None
    except MeilisearchApiError as exc:
        if exc.code == "index_not_found":
            raise
        raise MeiliUnavailable(f"Meilisearch refused the query: {exc.code}") from None


def search(client: meilisearch.Client, topic: str, q: str, limit: int = DEFAULT_LIMIT, offset: int = 0) -> Page:
    """One page of the topic's index, as the product's `/v1/search` returns it."""
    if not segment.query_words(q) or limit <= 0:  # no words: no query (Meilisearch would list the whole index)
        return Page([], 0, None)
    limit = min(limit, MAX_LIMIT)
    uid = meili_index.index_uid(topic)
    try:
        result = _call(client, lambda: client.index(uid).search(q, {"limit": limit, "offset": offset}))
    except MeilisearchApiError:  # index_not_found: the product answers an empty page
        return Page([], 0, None)
    hits = result["hits"]
    items = [{"event_id": h["event_id"], "topic_id": h["topic_id"]} for h in hits]
    total = result.get("estimatedTotalHits", len(hits))
    following = offset + len(hits)
    # The product also returns a cursor after an empty page below the total (offset past maxTotalHits):
    # that cursor would return the same empty page forever, so an empty page ends the listing here.
    return Page(items, total, following if hits and following < total else None)


class _IndexCache:
    """`topic_*` uids per Meilisearch, refreshed every INDEX_CACHE_S seconds (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, list[str]]] = {}

    def get(self, client: meilisearch.Client, refresh: bool = False) -> list[str]:
        key = client.config.url
        with self._lock:
            entry = self._entries.get(key)
        if entry and not refresh and time.monotonic() - entry[0] < INDEX_CACHE_S:
            return entry[1]
        uids = _call(client, lambda: meili_index.topic_indexes(client))
        with self._lock:
            self._entries[key] = (time.monotonic(), uids)
        return uids

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


topic_index_cache = _IndexCache()


def suggest(client: meilisearch.Client, q: str, limit: int = 5) -> list[dict]:
    """The best posts for a prefix across topics, one per post: a federated multi-search over every
    `topic_*` index (Meilisearch >= 1.10; the product pins 1.5, where this route does not exist).

    The product has no post suggest endpoint to imitate: before its own search migration cn-user-api
    serves no suggest route at all, and the `/v1/communities/suggest` of 884c1885 came with that
    migration and suggests communities, not posts. Suggest is this project's feature; PostgreSQL's
    suggest is the one the gates measure, and this is its legacy-engine counterpart for comparison.
    """
    if not segment.query_words(q) or limit <= 0:
        return []
    fields = ["event_id", "topic_id", "content"]
    for attempt in (0, 1):
        uids = topic_index_cache.get(client, refresh=attempt == 1)
        if not uids:
            return []
        queries = [{"indexUid": uid, "q": q, "attributesToRetrieve": fields} for uid in uids]
        try:
            result = _call(client, lambda: client.multi_search(queries, federation={"limit": 3 * limit}))
            break
        except MeilisearchApiError:  # an index went away since the list was read: read it again, once
            if attempt:
                raise MeiliUnavailable("Meilisearch refused the query: index_not_found") from None
    seen: set[str] = set()
    items = []
    for h in result["hits"]:
        if h["event_id"] not in seen:
            seen.add(h["event_id"])
            items.append({"event_id": h["event_id"], "topic_id": h["topic_id"], "text": h["content"]})
    return items[:limit]
