"""Replay of dead letters: re-apply writes that failed deterministically, once the data is fixed.

Each replay re-reads the outbox row and the current source state, so a fixed event is applied as
it is now; a dead letter whose document has since been overwritten by a newer applied row is
resolved as superseded instead of replayed (Meilisearch is not versioned: replaying an old upsert
there could resurrect a deleted post). Every attempt is audited.
"""

from __future__ import annotations

from dataclasses import dataclass

import meilisearch
import psycopg

from search_migration.cutover import flags
from search_migration.source import contract
from search_migration.write_path.consumer import (CONSUMER, FETCH_SQL, Consumer, DeterministicError, Item, Retry,
                                                   TransientError, find_stale)

OPEN_SQL = """
SELECT dead_letter_id, backend, op, seq, event_id, topic_id, reason_class
FROM cn_search.dead_letters
WHERE resolved_at IS NULL
ORDER BY seq, dead_letter_id
LIMIT %s
"""
SUPERSEDED_SQL = """
SELECT EXISTS (
    SELECT 1 FROM cn_relay.events_outbox
    WHERE event_id = %s AND topic_id = %s AND seq > %s AND op IN ('upsert', 'delete')  -- garbage supersedes nothing
      AND seq <= (SELECT last_seq FROM cn_relay.consumer_offsets WHERE consumer = %s))
"""


class ReplayError(ValueError):
    pass


@dataclass
class ReplayOutcome:
    dead_letter_id: int
    backend: str
    op: str
    seq: int
    reason_class: str
    action: str  # planned: apply | resolve as superseded; done: applied | superseded | failed
    error: str = ""

    def line(self, dry_run: bool = False) -> str:
        action = f"would {self.action}" if dry_run else self.action
        tail = f": {self.error}" if self.error else ""
        return (f"dead letter #{self.dead_letter_id} seq={self.seq} backend={self.backend} op={self.op} "
                f"reason={self.reason_class} -> {action}{tail}")


def replay(conn: psycopg.Connection, meili: meilisearch.Client, *, by: str, reason: str,
           limit: int | None = None, dry_run: bool = False, consumer: str = CONSUMER,
           retry: Retry = Retry(attempts=3)) -> list[ReplayOutcome]:
    """Replay up to `limit` open dead letters, oldest first; `dry_run` only says what would happen."""
    if not by or not by.strip():
        raise ReplayError("--by is required: who is replaying")
    if not reason or not reason.strip():
        raise ReplayError("--reason is required: why these are replayed")
    if limit is not None and limit < 1:
        raise ReplayError("--limit must be at least 1")
    worker = Consumer(conn, meili, consumer=consumer, retry=retry)
    outcomes = []
    for dl_id, backend, op, seq, event_id, topic_id, reason_class in conn.execute(
            OPEN_SQL, (limit if limit is not None else 2**62,)).fetchall():
        outcome = ReplayOutcome(dl_id, backend, op, seq, reason_class, "apply")
        if conn.execute(SUPERSEDED_SQL, (event_id, topic_id, seq, consumer)).fetchone()[0]:
            outcome.action = "superseded"
        if dry_run:
            outcome.action = "apply" if outcome.action == "apply" else "resolve as superseded"
            outcomes.append(outcome)
            continue
        if outcome.action == "apply":
            outcome.action, outcome.error = _apply(conn, worker, backend, seq)
        _audit(conn, outcome, by, reason)
        outcomes.append(outcome)
    return outcomes


def _apply(conn: psycopg.Connection, worker: Consumer, backend: str, seq: int) -> tuple[str, str]:
    row = conn.execute(FETCH_SQL, (seq - 1, seq, 1)).fetchone()
    if row is None or row[0] != seq:
        return "failed", "the outbox row is gone"
    item = Item(*row, now=contract.now_unix())
    find_stale(conn, [item])
    problem = item.problem()
    if problem:
        return "failed", problem[1]
    mode = flags.write_mode(conn)
    sides = [s for s in ("meili", "pg") if getattr(mode, s)] if backend == "source" else [backend]
    for side in sides:
        try:
            worker.retry.run(lambda: worker.engines[side].apply([item]))
        except (DeterministicError, TransientError) as exc:
            return "failed", f"{side}: {exc}"
    return "applied", ""


def _audit(conn: psycopg.Connection, outcome: ReplayOutcome, by: str, reason: str) -> None:
    resolved = outcome.action in ("applied", "superseded")
    with conn.transaction():
        conn.execute(
            "UPDATE cn_search.dead_letters SET replay_count = replay_count + 1, last_replayed_at = now(), "
            "last_replayed_by = %s, last_replay_reason = %s, "
            "resolved_at = CASE WHEN %s THEN now() ELSE resolved_at END, "
            "attempts = attempts + CASE WHEN %s THEN 0 ELSE 1 END, "
            "error = CASE WHEN %s THEN error ELSE %s END "
            "WHERE dead_letter_id = %s",
            (by, reason, resolved, resolved, resolved, outcome.error, outcome.dead_letter_id))
        conn.execute(
            "INSERT INTO cn_search.dead_letter_replays (dead_letter_id, replayed_by, reason, outcome, error) "
            "VALUES (%s, %s, %s, %s, %s)",
            (outcome.dead_letter_id, by, reason, outcome.action, outcome.error or None))
