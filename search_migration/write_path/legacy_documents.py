"""What the product's indexer (cn-index, kukuri 884c1885) writes to Meilisearch, rule for rule.

The write path takes over from cn-index and must keep writing the product's per-topic indexes exactly
as cn-index would: same uids, same settings on creation, same document fields, same notion of
"searchable". Sources (kukuri-community-node/): crates/cn-index/src/lib.rs (`build_document`,
`normalize_title`, `normalize_summary`, `truncate_chars`, `normalize_tags`, `default_index_settings`,
`handle_upsert`), crates/cn-core/src/meili.rs (`topic_index_uid`), crates/cn-core/src/nostr.rs
(`RawEvent::tag_values`, `first_tag_value`). Plain Python: no Dagster, no I/O.
"""

from __future__ import annotations

import functools

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

PRIMARY_KEY = "event_id"

# cn-index `default_index_settings()`, PATCHed once right after the index is created; everything else
# stays at the running Meilisearch's defaults (ranking rules, typo tolerance, no localizedAttributes).
INDEX_SETTINGS: dict[str, list[str]] = {
    "searchableAttributes": ["title", "summary", "content", "author", "tags"],
    "filterableAttributes": ["author", "kind", "created_at", "tags"],
    "sortableAttributes": ["created_at"],
}

TITLE_MAX_CHARS = 80  # Unicode scalar values (Rust `chars()`), not bytes
SUMMARY_MAX_CHARS = 200

# Rust `char::is_whitespace` (Unicode White_Space), which `str::trim` strips. Python's `str.strip()`
# also strips U+001C..U+001F, which Rust keeps: a title starting with U+001F must keep it.
_RUST_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
                   "\u200a\u2028\u2029\u202f\u205f\u3000"


def rust_trim(value: str) -> str:
    return value.strip(_RUST_WHITESPACE)


@functools.lru_cache(maxsize=65_536)
def index_uid(topic_id: str) -> str:
    """`topic_` + the topic id, ASCII letters/digits lowercased, `-`/`_` kept, any other char `_`.
    Cached: suggest breaks ties by uid for every candidate row (~1,500 per query, a few topics)."""
    return "topic_" + "".join(
        ch.lower() if (ch.isascii() and ch.isalnum()) or ch in "-_" else "_" for ch in topic_id)


def uid_collisions(topic_ids: Iterable[str]) -> dict[str, list[str]]:
    """uid → the distinct topics that share it (only uids with two or more): the product would merge
    those topics' posts into one index, and a delete for one topic removes the other's document."""
    by_uid: dict[str, set[str]] = defaultdict(set)
    for topic_id in topic_ids:
        by_uid[index_uid(topic_id)].add(topic_id)
    return {uid: sorted(topics) for uid, topics in sorted(by_uid.items()) if len(topics) > 1}


def raw_event(event_row: Mapping[str, Any]) -> dict[str, Any]:
    """The signed event cn-index reads: `raw_json` of a cn_relay.events row (a dict, or JSON text),
    or the row itself when it already is a raw event."""
    raw = event_row.get("raw_json", event_row)
    return json.loads(raw) if isinstance(raw, (str, bytes)) else raw


def tag_values(raw: Mapping[str, Any], name: str) -> list[str]:
    """`RawEvent::tag_values`: the second element of every tag named `name` that has one."""
    return [tag[1] for tag in raw.get("tags") or [] if len(tag) > 1 and tag[0] == name]


def first_tag_value(raw: Mapping[str, Any], name: str) -> str | None:
    """`RawEvent::first_tag_value`: the first such value (a bare `["title"]` tag is skipped)."""
    values = tag_values(raw, name)
    return values[0] if values else None


def title(raw: Mapping[str, Any]) -> str:
    # `title` else `subject` only when no `title` tag has a value: a blank title does not fall back
    # to subject, it falls back to the content's first line.
    from_tag = first_tag_value(raw, "title")
    if from_tag is None:
        from_tag = first_tag_value(raw, "subject") or ""
    if rust_trim(from_tag):
        return rust_trim(from_tag)[:TITLE_MAX_CHARS]
    # Rust `lines().next()`: up to the first "\n" (a "\r" before it goes with the trim).
    return rust_trim(raw["content"].split("\n", 1)[0])[:TITLE_MAX_CHARS]


def summary(content: str) -> str:
    return rust_trim(content)[:SUMMARY_MAX_CHARS]


def tags(raw: Mapping[str, Any]) -> list[str]:
    """Distinct `t` values in first-seen order, as signed (not trimmed, unlike event_topics)."""
    return list(dict.fromkeys(tag_values(raw, "t")))


def document(event_row: Mapping[str, Any], topic_id: str | None = None) -> dict[str, Any]:
    """The Meilisearch document cn-index writes for an event in one topic (`build_document`).

    `topic_id` defaults to the row's own `topic_id` (a cn_relay.events ⋈ event_topics row)."""
    raw = raw_event(event_row)
    return {
        "event_id": raw["id"],
        "topic_id": topic_id if topic_id is not None else event_row["topic_id"],
        "kind": raw["kind"],
        "author": raw["pubkey"],
        "created_at": raw["created_at"],
        "title": title(raw),
        "summary": summary(raw["content"]),
        "content": raw["content"],
        "tags": tags(raw),
    }


def searchable(event_row: Mapping[str, Any] | None, now: int) -> bool:
    """cn-index `handle_upsert`: indexed iff the event exists, is not deleted, is current, is not
    ephemeral and has not expired (`expires_at` null or > now, unix seconds); else the upsert is a
    delete."""
    if event_row is None:
        return False
    expires_at = event_row.get("expires_at")
    return (not event_row["is_deleted"] and event_row["is_current"] and not event_row["is_ephemeral"]
            and (expires_at is None or expires_at > now))
