"""The handover: our write path takes the product's indexer's place at the offset it had reached.

From then on our consumer writes the product's per-topic indexes (and PostgreSQL) from that offset,
so nothing is replayed and nothing is skipped. The product's indexer must be stopped first: if its
offset still moves afterwards, `status` and a gate say so. Every handover is audited, append-only.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from search_migration.cutover import flags
from search_migration.source import contract, shape
from search_migration.write_path import expiry


class HandoverError(Exception):
    """The handover cannot be made (or was not made yet); the message is one printable line."""


@dataclass(frozen=True)
class Handover:
    from_consumer: str
    consumer: str
    offset: int
    handed_by: str
    already: bool = False  # this handover had been made before: nothing changed


def latest(conn: psycopg.Connection, consumer: str = contract.CONSUMER) -> Handover | None:
    row = conn.execute("SELECT from_consumer, consumer, offset_seq, handed_by FROM cn_search.handovers "
                       "WHERE consumer = %s ORDER BY handover_id DESC LIMIT 1", (consumer,)).fetchone()
    return Handover(*row) if row else None


def require(conn: psycopg.Connection, consumer: str = contract.CONSUMER) -> Handover:
    found = latest(conn, consumer)
    if found is None:
        raise HandoverError(
            f"the write path has not taken over from the product's indexer: stop {contract.PRODUCT_INDEXER}, then "
            f"run `search-migration adopt --from-consumer {contract.PRODUCT_INDEXER} --by WHO --reason WHY`")
    return found


def adopt(conn: psycopg.Connection, *, from_consumer: str, by: str, reason: str, dry_run: bool = False,
          consumer: str = contract.CONSUMER) -> Handover:
    """Start our consumer (every engine) at `from_consumer`'s offset, once, audited."""
    if not by.strip() or not reason.strip():
        raise HandoverError("--by and --reason are required: who hands over, and why")
    if from_consumer == consumer:
        raise HandoverError(f"{consumer!r} is this write path's own consumer; name the product's indexer "
                            f"(usually {contract.PRODUCT_INDEXER})")
    shape.verify(conn)
    with conn.transaction():
        conn.execute("LOCK TABLE cn_search.handovers IN EXCLUSIVE MODE")  # one handover at a time
        done = latest(conn, consumer)
        if done is not None:
            if done.from_consumer != from_consumer:
                raise HandoverError(f"{consumer} already took over from {done.from_consumer} at seq {done.offset}")
            return Handover(done.from_consumer, consumer, done.offset, done.handed_by, already=True)
        row = conn.execute("SELECT last_seq FROM cn_relay.consumer_offsets WHERE consumer = %s",
                           (from_consumer,)).fetchone()
        if row is None:
            raise HandoverError(f"no consumer {from_consumer!r} in cn_relay.consumer_offsets: nothing to take over")
        offset = row[0]
        if dry_run:
            return Handover(from_consumer, consumer, offset, by)
        conn.execute("INSERT INTO cn_search.handovers (from_consumer, consumer, offset_seq, handed_by, reason) "
                     "VALUES (%s, %s, %s, %s, %s)", (from_consumer, consumer, offset, by, reason))
        contract.set_consumer_offset(conn, consumer, offset)
        conn.execute("DELETE FROM cn_search.consumer_side_offsets WHERE consumer = %s", (consumer,))
        # the engines the write mode writes start here; one it does not write yet (PostgreSQL before
        # `dual`) starts at the consumer's offset when it enters, and is owed nothing before that
        mode = flags.write_mode(conn)
        for side in [s for s in ("meili", "pg") if getattr(mode, s)]:
            conn.execute("INSERT INTO cn_search.consumer_side_offsets (consumer, backend, last_seq) VALUES (%s, %s, %s)",
                         (consumer, side, offset))
        expiry.start(conn, consumer, contract.now_unix())
    return Handover(from_consumer, consumer, offset, by)


def indexer_moved(conn: psycopg.Connection, consumer: str = contract.CONSUMER) -> int | None:
    """How far the product's indexer moved after the handover (None: no handover yet). Anything
    above 0 means it is still running beside our write path: two writers of the same indexes."""
    done = latest(conn, consumer)
    if done is None:
        return None
    return max(0, contract.consumer_offset(conn, done.from_consumer) - done.offset)
