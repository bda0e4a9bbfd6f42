"""The backfill: copy each topic × time window of the source into post_search_documents.

The public face of the package; its modules each hold one part (watermark, lease, pages, batch,
runner, progress).
"""

from search_migration.backfill.lease import Lease, acquire, fail, finish, heartbeat
from search_migration.backfill.model import (DEFAULT_LEASE_TIMEOUT_S, DEFAULT_PAGE_SIZE, BackfillError, LeaseBusy,
                                             LeaseLost, Watermark, Window)
from search_migration.backfill.pages import read_page, write_page
from search_migration.backfill.progress import Progress, progress
from search_migration.backfill.result import PartitionResult
from search_migration.backfill.runner import Backfiller, PartitionOptions, flush, run_partition
from search_migration.backfill.watermark import capture_watermark, latest_watermark, require_watermark

__all__ = ["Backfiller", "BackfillError", "DEFAULT_LEASE_TIMEOUT_S", "DEFAULT_PAGE_SIZE", "Lease", "LeaseBusy",
           "LeaseLost", "PartitionOptions", "PartitionResult", "Progress", "Watermark", "Window", "acquire",
           "capture_watermark", "fail", "finish", "flush", "heartbeat", "latest_watermark", "progress", "read_page",
           "require_watermark", "run_partition", "write_page"]
