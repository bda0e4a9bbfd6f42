"""The shapes every part of the backfill shares: windows, watermarks, limits and errors."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PAGE_SIZE = 5_000
DEFAULT_LEASE_TIMEOUT_S = 60.0
RATE_WINDOW_S = 60.0


class BackfillError(Exception):
    """The backfill cannot proceed; the message is one printable line."""


class LeaseBusy(BackfillError):
    """Another run holds a live lease on the partition: this run must not start work."""


class LeaseLost(BackfillError):
    """This run's lease was taken over (or finished by someone else): it may write nothing."""


@dataclass(frozen=True)
class Window:
    start: int  # unix seconds, inclusive
    end: int  # unix seconds, exclusive


@dataclass(frozen=True)
class Watermark:
    watermark_id: int
    seq: int
    manifest_rows: int
    reopened: int = 0  # completed partitions this capture re-opened (their window gained rows)

