"""The legacy engine's query side: the same questions pg_search answers, asked of Meilisearch.

Both engines answer in the same shapes (pg_search.Page, suggestion dicts) so the router can serve
either and compare them. A Meilisearch that cannot be reached is one exception, MeiliUnavailable.
"""

from __future__ import annotations

import meilisearch
from meilisearch.errors import MeilisearchApiError, MeilisearchCommunicationError, MeilisearchTimeoutError

from search_migration.search.pg_search import MAX_TOTAL_HITS, Page
from search_migration.search.query import parse_query
from search_migration.write_path import meili_index


class MeiliUnavailable(Exception):
    """Meilisearch could not answer; the message is one printable line."""


def _call(client: meilisearch.Client, index_uid: str, q: str, params: dict) -> dict:
    try:
        return client.index(index_uid).search(q, params)
    except (MeilisearchCommunicationError, MeilisearchTimeoutError):
        raise MeiliUnavailable(f"Meilisearch at {client.config.url} is unreachable") from None
    except MeilisearchApiError as exc:
        raise MeiliUnavailable(f"Meilisearch refused the query: {exc.code}") from None


def search(client: meilisearch.Client, index_uid: str, topic: str, q: str, limit: int = 20,
           offset: int = 0) -> Page:
    if not parse_query(q) or limit <= 0:  # an empty query is no query (Meilisearch would list everything)
        return Page([], 0, None)
    result = _call(client, index_uid, q, {"filter": f"topic_id = {meili_index.filter_string(topic)}", "limit": limit,
                                          "offset": offset, "attributesToRetrieve": ["event_id", "topic_id"]})
    items = [{"event_id": h["event_id"], "topic_id": h["topic_id"]} for h in result["hits"]]
    total = result.get("estimatedTotalHits", len(items))
    want = offset + limit
    return Page(items, total, want if want < min(total, MAX_TOTAL_HITS) else None)


def suggest(client: meilisearch.Client, index_uid: str, q: str, limit: int = 5) -> list[dict]:
    """The best posts for a prefix across topics, one per post (a post lives once per topic)."""
    if not parse_query(q) or limit <= 0:
        return []
    result = _call(client, index_uid, q, {"limit": 3 * limit,
                                          "attributesToRetrieve": ["event_id", "topic_id", "content"]})
    seen: set[str] = set()
    items = []
    for h in result["hits"]:
        if h["event_id"] not in seen:
            seen.add(h["event_id"])
            items.append({"event_id": h["event_id"], "topic_id": h["topic_id"], "text": h["content"]})
    return items[:limit]
