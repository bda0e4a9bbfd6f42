"""Drill (issue 16, rule 8): a second watermark capture re-opens exactly the partitions whose manifest
grew, and `backfill_complete` is reachable again without a rebuild.

Without the protection the completed partitions stay no-ops while the manifest grows: the backfill
reads as incomplete for good (rows done < rows total) unless someone knows to pass `rebuild: true`.
"""

from __future__ import annotations

from search_migration import backfill, db
from search_migration.write_path import consumer

from ..support import invariants
from ..support.backfill import WINDOWS, capture
from ..support.writes import FAST, new_posts, set_mode, topic


def _run_all(url: str) -> list[backfill.PartitionResult]:
    with db.connect(url) as conn:
        topics = [topic(conn, n) for n in range(4)]
    parts = [(f"{w.start}|{t}", t, w) for w in WINDOWS for t in topics]
    with backfill.Backfiller(url, owner="drill") as b:
        return list(b.run_many(parts))


def test_a_second_watermark_reopens_the_partitions_that_grew(seeded, meili):
    with db.connect(seeded) as conn:
        set_mode(conn, "dual")
        first = capture(conn)
        assert first.reopened == 0
    _run_all(seeded)
    with db.connect(seeded) as conn:
        done = backfill.progress(conn)
        assert done.rows_total == first.manifest_rows and done.rows_done == done.rows_total
        new = new_posts(conn, 7, "after-first-watermark", topic(conn, 1))
        consumer.catch_up(conn, meili, retry=FAST)
        second = capture(conn)
        assert second.manifest_rows == first.manifest_rows + len(new)
        assert backfill.progress(conn).rows_done < second.manifest_rows
    again = _run_all(seeded)  # the same partitions again, no rebuild asked for
    with db.connect(seeded) as conn:
        final = backfill.progress(conn)
        assert final.rows_total == second.manifest_rows
        assert final.rows_done == final.rows_total, (
            f"backfill_complete unreachable without a rebuild: {final.rows_done}/{final.rows_total} rows after "
            f"every partition ran again ({sum(not r.noop for r in again)} did work, {second.reopened} re-opened)")
        assert second.reopened == 1  # the one window the new posts fall in, nothing else
        assert sum(not r.noop for r in again) == 1
        assert final.partitions.get("succeeded") == len(again)
        result = consumer.catch_up(conn, meili, retry=FAST)
        inv = invariants.check(conn, result.end_offset, meili)
    print("\nDRILL rule 8 invariant: " + str({k: v for k, v in inv.as_dict().items() if k != "examples"}))
    assert inv.ok, inv.as_dict()
