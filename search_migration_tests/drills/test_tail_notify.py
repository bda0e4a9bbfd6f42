"""Tail drill: a notification wakes the tail at once; a lost one (a commit without pg_notify, or one
committed before the tail listened) is applied by the fallback poll within its bound; a catch-up started
while the tail runs queues on the consumer lock and gets its turn between the tail's passes (one writer at
a time, nobody refused or starved); freshness is recorded."""

from __future__ import annotations

import time

import pytest

from search_migration import db
from search_migration.source import contract
from search_migration.write_path import consumer, freshness, tail
from search_migration.write_path.meili_index import index_uid

from ..support.processes import poll
from ..support.writes import FAST
from .tail_helpers import assert_invariant, dual_corpus, offset, publish, tail_thread


@pytest.fixture
def dual(database_url, meili, namespace):
    return dual_corpus(database_url, meili, namespace)


def _applied_within(url: str, seq: int, bound: float) -> float:
    t0 = time.monotonic()
    poll(lambda: offset(url) >= seq, bound, f"seq {seq} applied within {bound}s")
    return time.monotonic() - t0


def test_notification_wakes_the_tail_and_a_lost_one_is_polled(dual, meili, namespace):
    url = dual
    topic = f"kukuri:{namespace}-tail"
    with db.connect(url) as conn:
        before = publish(conn, "before-listen", 5, topic, silent=True)  # committed while nobody listened
    # a long fallback poll: only a notification can apply a row within a few seconds
    with tail_thread(url, meili, tail.Options(max_seconds=300, poll_seconds=30, batch_size=50), "notify") as t:
        _applied_within(url, before[-1][1], 10)  # the first pass drains what was committed before LISTEN
        wakes = t.result.wakes
        with db.connect(url) as conn:
            (event_id, seq), = publish(conn, "notified", 1, topic)
        waited = _applied_within(url, seq, 10)
        assert t.result.notified >= 1 and waited < 10
        assert meili.index(index_uid(topic)).get_document(event_id).event_id == event_id
        with db.connect(url) as conn:
            assert conn.execute("SELECT NOT is_deleted FROM cn_search.post_search_documents WHERE post_id = %s",
                                (event_id,)).fetchone()[0]
            # one writer at a time: a catch-up (a run, a rollback) queues on the lock and gets its turn
            # between two passes of the tail, whatever the tail is doing
            more = publish(conn, "queued", 5, topic, silent=True)
            with db.connect(url) as other:
                result = consumer.catch_up(other, meili, retry=FAST, lock_wait_s=10)
            assert not result.stalled and result.end_offset >= more[-1][1]
        print(f"\nDRILL tail notified: applied {waited:.2f}s after the commit")

    with tail_thread(url, meili, tail.Options(max_seconds=300, poll_seconds=1.0, batch_size=50), "lost") as t:
        with db.connect(url) as conn:
            lost = publish(conn, "lost", 3, topic, silent=True)
        waited = _applied_within(url, lost[-1][1], 1.0 + 5)  # the poll interval, plus a loaded machine's margin
        print(f"DRILL tail lost notification: applied {waited:.2f}s after the commit by the fallback poll")
    assert_invariant(url, "tail lost notification", meili)
    with db.connect(url) as conn:
        summary = freshness.summary(conn)
        assert set(summary) == {"pg", "meili"} and all(s.rows >= 9 for s in summary.values())
        assert conn.execute("SELECT state, end_reason FROM cn_search.tail_runs WHERE run_id = 'lost'").fetchone() \
            == ("ended", "stopped")
        print("DRILL tail freshness:", {b: s.as_dict() for b, s in summary.items()})
