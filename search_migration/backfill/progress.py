"""The backfill as a whole: rows done against the manifest, the recent rate and an honest ETA."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from search_migration.backfill.model import RATE_WINDOW_S


@dataclass(frozen=True)
class Progress:
    watermark: int | None
    captured_at: str | None
    rows_total: int
    rows_done: int
    partitions: dict[str, int]  # status -> count
    rows_per_second: float  # over the last RATE_WINDOW_S only
    eta_seconds: float | None  # None: nothing moved recently, so no honest estimate

    def as_dict(self) -> dict:
        return {"high_watermark": self.watermark, "captured_at": self.captured_at, "rows_total": self.rows_total,
                "rows_done": self.rows_done,
                "percent_done": round(100.0 * self.rows_done / self.rows_total, 2) if self.rows_total else None,
                "partitions": self.partitions, "rows_per_second": round(self.rows_per_second, 1),
                "eta_seconds": round(self.eta_seconds, 1) if self.eta_seconds is not None else None}


RATE_SQL = """
SELECT coalesce(sum(rows_done), 0),
       extract(epoch FROM now() - (SELECT min(logged_at) FROM cn_search.backfill_page_log))
FROM cn_search.backfill_page_log WHERE logged_at > now() - make_interval(secs => %s)
"""


def progress(conn: psycopg.Connection) -> Progress:
    """Rows done against the manifest, and an ETA from the current rate (the last minute) only."""
    wm = conn.execute("SELECT high_watermark, captured_at, coalesce(manifest_rows, 0) FROM cn_search.backfill_watermarks "
                      "ORDER BY watermark_id DESC LIMIT 1").fetchone()
    partitions = dict(conn.execute("SELECT status, count(*) FROM cn_search.backfill_jobs GROUP BY status").fetchall())
    done = conn.execute("SELECT coalesce(sum(least(rows_copied + rows_skipped, coalesce(rows_total, 0))), 0) "
                        "FROM cn_search.backfill_jobs").fetchone()[0]
    recent, since_first = conn.execute(RATE_SQL, (RATE_WINDOW_S,)).fetchone()
    span = min(RATE_WINDOW_S, float(since_first or 0.0))
    rate = float(recent) / span if recent and span > 0 else 0.0
    total = wm[2] if wm else 0
    remaining = max(0, total - int(done))
    eta = (remaining / rate if rate > 0 else None) if remaining else 0.0
    return Progress(wm[0] if wm else None, wm[1].isoformat(timespec="seconds") if wm else None, total, int(done),
                    {k: int(v) for k, v in partitions.items()}, rate, eta)
