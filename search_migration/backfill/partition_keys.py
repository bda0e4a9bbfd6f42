"""Topic ids as Dagster partition keys, reversibly.

Dagster drops multi-partition keys containing `|` silently and UI backfills split ranges on `,`;
topic ids are the product's and may contain anything, so keys percent-encode every character
outside a conservative set. Plain topic ids (letters, digits, `-_.:`) stay readable as they are.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

SAFE = "-_.:"
MAX_KEY_LENGTH = 255


class PartitionKeyError(ValueError):
    pass


def topic_partition_key(topic_id: str) -> str:
    if not topic_id or not topic_id.strip():
        raise PartitionKeyError("a topic id must not be empty")
    key = quote(topic_id, safe=SAFE)
    if len(key) > MAX_KEY_LENGTH:
        raise PartitionKeyError(f"topic id too long for a partition key ({len(key)} > {MAX_KEY_LENGTH} encoded)")
    return key


def topic_from_partition_key(key: str) -> str:
    return unquote(key)
