"""The search_migration code location."""

import dagster as dg

from search_migration.defs.backfill import backfill_high_watermark, post_search_documents
from search_migration.defs.cutover import cutover_job, rollback_job
from search_migration.defs.gates import search_drift_report, shadow_read_report
from search_migration.defs.resources import resources
from search_migration.defs.source import events_outbox, legacy_meili_index, observe_sources_job, observe_sources_schedule
from search_migration.defs.write_path import (catchup_job, high_watermark_sensor, replay_failed_job, tail_job,
                                              topic_partitions_sensor)

defs = dg.Definitions(
    assets=[events_outbox, legacy_meili_index, backfill_high_watermark, post_search_documents,
            search_drift_report, shadow_read_report],
    jobs=[observe_sources_job, catchup_job, tail_job, replay_failed_job, cutover_job, rollback_job],
    sensors=[high_watermark_sensor, topic_partitions_sensor],
    schedules=[observe_sources_schedule],
    resources=resources(),
)
