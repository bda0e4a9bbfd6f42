"""What one partition's copy did: progress a run reports and the UI shows."""

from __future__ import annotations

from dataclasses import dataclass

from search_migration.backfill.model import Window


@dataclass
class PartitionResult:
    partition_key: str
    topic_id: str
    window: Window
    rows_total: int
    rows_done: int  # behind the checkpoint now, including rows done by earlier attempts
    rows_copied: int = 0  # this attempt
    rows_skipped: int = 0  # this attempt
    pages: int = 0
    resumed_after_rows: int = 0
    duration_s: float = 0.0
    noop: bool = False

    @property
    def rows_per_second(self) -> float:
        return (self.rows_copied + self.rows_skipped) / self.duration_s if self.duration_s > 0 else 0.0

    def metadata(self) -> dict:
        return {"partition": self.partition_key, "rows_total": self.rows_total, "rows_done": self.rows_done,
                "rows_copied": self.rows_copied, "rows_skipped_newer_or_deleted": self.rows_skipped,
                "pages": self.pages, "resumed_after_rows": self.resumed_after_rows,
                "rows_per_second": round(self.rows_per_second, 1), "duration_seconds": round(self.duration_s, 3),
                "noop_already_complete": self.noop}

