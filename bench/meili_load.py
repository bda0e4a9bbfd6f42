"""Index a bench corpus's searchable posts into a Meilisearch of the bench's own, as the product's indexer
would after a full reindex: one index per topic (`topic_<sanitized>`, the product's settings), documents
built by write_path/legacy_documents from each event's raw_json, in (created_at, event_id) order per topic
(cn-index's reindex order, which is also PostgreSQL's tie order).

For a speed bench whose legacy index is not (yet) built by `demo seed` (its reindex of 1,000,000 posts
runs last and long): pointed at another Meilisearch (MEILI_URL, MEILI_MASTER_KEY), it gives the search
bench a legacy engine over exactly the posts PostgreSQL holds, read from the same source. `--from-documents`
takes the (post, topic) pairs of cn_search.post_search_documents, so both engines hold the same set;
`--state FILE` records the pairs indexed, so that a later run adds
only new documents (in order after the earlier ones) and deletes the ones no longer searchable.

    DATABASE_URL=... MEILI_URL=http://127.0.0.1:7751 MEILI_MASTER_KEY=... .venv/bin/python bench/meili_load.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


from search_migration import db
from search_migration.settings import Settings
from search_migration.source.contract import SEARCHABLE
from search_migration.write_path import legacy_documents, meili_index

BATCH = 10_000

ROWS_SQL = f"""
SELECT et.topic_id, e.raw_json, e.event_id
FROM cn_relay.events e JOIN cn_relay.event_topics et ON et.event_id = e.event_id
WHERE {SEARCHABLE}
ORDER BY e.created_at, e.event_id
LIMIT %(limit)s
"""
DOCUMENT_ROWS_SQL = """
SELECT d.topic_id, e.raw_json, d.post_id
FROM cn_search.post_search_documents d JOIN cn_relay.events e ON e.event_id = d.post_id
WHERE NOT d.is_deleted
ORDER BY d.created_at, d.post_id
LIMIT %(limit)s
"""


def sync(client, rows: list[tuple[str, dict, str]], state: Path) -> tuple[int, int]:
    """Bring the indexes to `rows` (topic, raw event, post id; insertion order) from what `state` says
    was indexed before: add the new documents in order, delete the gone ones. Returns (added, deleted)."""
    held = set(state.read_text().split("\n")) - {""} if state.exists() else set()
    if not held:  # a first run: start from no topic index
        for uid in meili_index.topic_indexes(client):
            meili_index.delete_index(client, uid)
    current = {f"{post}\t{topic}" for topic, _, post in rows}
    tasks: list[int] = []
    existing = set(meili_index.topic_indexes(client))
    for topic in dict.fromkeys(topic for topic, _, post in rows if f"{post}\t{topic}" not in held):
        if meili_index.index_uid(topic) not in existing:
            uid, created = meili_index.ensure_topic_index(client, topic)
            existing.add(uid)
            tasks += created
    for t in tasks:
        meili_index.wait(client, t)
    tasks = []
    gone: dict[str, list[str]] = {}
    for key in held - current:
        post, topic = key.split("\t")
        gone.setdefault(meili_index.index_uid(topic), []).append(post)
    for uid, ids in gone.items():
        tasks.append(client.index(uid).delete_documents(ids).task_uid)
    adds: dict[str, list[dict]] = {}
    for topic, raw, post in rows:
        if f"{post}\t{topic}" not in held:
            doc = legacy_documents.document({"raw_json": raw}, topic)
            adds.setdefault(meili_index.index_uid(topic), []).append(doc)
    for uid, docs in adds.items():
        for i in range(0, len(docs), BATCH):
            tasks.append(client.index(uid).add_documents(docs[i:i + BATCH]).task_uid)
    for i in range(0, len(tasks), 200):
        meili_index.wait_tasks(client, tasks[i:i + 200])
    state.write_text("\n".join(sorted(current)))
    return sum(map(len, adds.values())), sum(map(len, gone.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from-documents", action="store_true")
    ap.add_argument("--limit", type=int, default=None, help="the first N documents only (a trial run)")
    ap.add_argument("--state", type=Path, required=True, help="the (post, topic) pairs indexed so far")
    args = ap.parse_args()
    s = Settings.from_env()
    client = meili_index.client(s.meili_url, s.meili_master_key, timeout=600)
    started = time.perf_counter()
    with db.connect(s.database_url) as conn, conn.transaction():
        cur = conn.cursor(name="meili_load")  # server-side: a million rows stream
        cur.itersize = 20_000
        cur.execute(DOCUMENT_ROWS_SQL if args.from_documents else ROWS_SQL,
                    {"now": int(time.time()), "limit": args.limit})
        rows = cur.fetchall()
    print(f"{len(rows)} documents read in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    started = time.perf_counter()
    added, deleted = sync(client, rows, args.state)
    elapsed = time.perf_counter() - started
    print(f"meilisearch: {added} documents added, {deleted} deleted in {elapsed:.0f}s "
          f"({added / elapsed:.0f} docs/s); it holds {len(rows)}")


if __name__ == "__main__":
    main()
