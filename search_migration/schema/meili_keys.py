"""Least privilege on Meilisearch, printed for an operator: the two keys the project runs with.

The master key is for operator steps only (creating these keys); every entry point runs with one of
these instead (`MEILI_WRITE_KEY`, `MEILI_SEARCH_KEY`). Both are scoped to the product's per-topic
indexes (`topic_*`). Each action is listed with the call that needs it, so a key never grows by habit.
"""

from __future__ import annotations

INDEXES = ["topic_*"]

# The write path (outbox consumer, rollback's reverse catch-up, dead-letter replay) and drift.
WRITE_ACTIONS = {
    "documents.add": "the write path's upserts (POST /indexes/topic_*/documents)",
    "documents.delete": "the write path's deletes",
    "documents.get": "drift compares documents by id; a rollback checks what the index holds",
    "indexes.get": "is a topic's index there yet; drift lists the topic_* indexes",
    "indexes.create": "a topic the product never wrote gets its index on first write, as cn-index does",
    "settings.update": "only on an index just created: the product's settings (never an existing index's)",
    "stats.get": "document counts per index (drift, the UI's legacy/meili_index)",
    "tasks.get": "waiting for the tasks those calls enqueue",
}
# The read path (search, the cross-topic suggest, shadow reads and the golden replay).
SEARCH_ACTIONS = {
    "search": "POST /indexes/topic_*/search and the federated multi-search of suggest",
    "indexes.get": "suggest lists the topic_* indexes it federates (index names only: no documents)",
}


def key_bodies() -> dict[str, dict]:
    """`POST /keys` bodies (run with the master key), by the variable that carries each key."""
    return {
        "MEILI_WRITE_KEY": {"name": "search-migration write path", "actions": sorted(WRITE_ACTIONS),
                            "indexes": INDEXES, "expiresAt": None,
                            "description": "search_migration: documents and new topic indexes on topic_*"},
        "MEILI_SEARCH_KEY": {"name": "search-migration read path", "actions": sorted(SEARCH_ACTIONS),
                             "indexes": INDEXES, "expiresAt": None,
                             "description": "search_migration: search on topic_*"},
    }
