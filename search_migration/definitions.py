"""The search_migration code location."""

import dagster as dg

from .defs.resources import resources
from .defs.source import events_outbox, legacy_meili_index, observe_sources_job, observe_sources_schedule

defs = dg.Definitions(
    assets=[events_outbox, legacy_meili_index],
    jobs=[observe_sources_job],
    schedules=[observe_sources_schedule],
    resources=resources(),
)
