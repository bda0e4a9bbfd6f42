"""Drill (issue 16, rule 1): a product transaction that holds an outbox row open for a long time loses
nothing, and one that rolls back never blocks.

A lower seq still invisible while higher ones are committed is waited for as long as a transaction
that may hold it is in progress (PostgreSQL's snapshot says so, not a clock): the consumer stops just
before it on every run, however many runs pass, and applies it once it commits. A seq whose
transaction rolled back is skipped at once and recorded for good. Without the protection (a wall-clock
timeout, as before) the held row is skipped after 15 s and is then in neither engine.
"""

from __future__ import annotations

import os
import threading
import time

from search_migration import db
from search_migration.local.product_writer import ProductWriter
from search_migration.write_path import consumer

from ..support import invariants
from ..support.backfill import backfill_all
from ..support.writes import FAST, NOW, meili_ids, new_posts, note, set_mode, topic

HOLD_S = float(os.environ.get("SEARCH_MIGRATION_SLOW_TX_SECONDS", "60"))


def _open_product_transaction(url: str, tag: str, topic_id: str) -> tuple:
    """A product transaction (event, topic row, outbox row) left open: returns (connection, event id, seq)."""
    conn = db.connect(url)
    conn.execute("BEGIN")  # the writer's own transaction becomes a savepoint inside this one
    event = note(tag, 0, [topic_id])
    (seq,) = ProductWriter(conn).publish(event, now=NOW)
    return conn, event["id"], seq


def test_a_slow_product_transaction_is_waited_for_and_a_rolled_back_one_is_skipped(seeded, meili):
    pause = threading.Event()  # paces the repeated catch-up runs (a schedule, not a synchronisation)
    with db.connect(seeded) as conn:
        set_mode(conn, "dual")
        backfill_all(seeded)
        consumer.catch_up(conn, meili, retry=FAST)
        where = topic(conn)

        held, held_id, held_seq = _open_product_transaction(seeded, "slow", where)
        after = new_posts(conn, 5, "after-slow", where)
        assert min(seq for _, seq in after) > held_seq
        started, runs = time.monotonic(), 0
        while time.monotonic() - started < HOLD_S:
            result = consumer.catch_up(conn, meili, retry=FAST)
            runs += 1
            assert result.end_offset == held_seq - 1, result  # never past the row still being written
            assert result.waiting_on_gap == held_seq, result
            pause.wait(2)
        assert runs >= 3
        held.execute("COMMIT")
        held.close()

        result = consumer.catch_up(conn, meili, retry=FAST)
        head = conn.execute("SELECT max(seq) FROM cn_relay.events_outbox").fetchone()[0]
        assert result.end_offset == head and not result.stalled, result
        assert conn.execute("SELECT NOT is_deleted FROM cn_search.post_search_documents WHERE post_id = %s",
                            (held_id,)).fetchone() == (True,)
        assert held_id in meili_ids(meili, where)
        assert {e for e, _ in after} <= meili_ids(meili, where)

        rolled, rolled_id, rolled_seq = _open_product_transaction(seeded, "rolled-back", where)
        later = new_posts(conn, 3, "after-rollback", where)
        rolled.execute("ROLLBACK")
        rolled.close()
        quick = time.monotonic()
        result = consumer.catch_up(conn, meili, retry=FAST)
        assert result.end_offset == later[-1][1] and result.waiting_on_gap is None, result
        assert time.monotonic() - quick < 30  # no clock to wait out: the transaction is known to be gone
        assert conn.execute("SELECT skipped_at IS NOT NULL FROM cn_search.outbox_gaps WHERE seq = %s",
                            (rolled_seq,)).fetchone() == (True,)
        assert rolled_id not in meili_ids(meili, where)

        inv = invariants.check(conn, result.end_offset, meili)
        assert inv.ok, inv.as_dict()
