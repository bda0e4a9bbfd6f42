"""The two systems as they are today, observed so the UI shows outbox lag and legacy index size."""

from __future__ import annotations

import dagster as dg

from .. import meili_index, source
from .resources import MeiliResource, PostgresResource


@dg.observable_source_asset(
    key=["cn_relay", "events_outbox"],
    group_name="source",
    description="The product's transactional outbox; its head sequence versions everything downstream.",
)
def events_outbox(postgres: PostgresResource) -> dg.ObserveResult:
    with postgres.connect() as conn:
        head = source.outbox_head(conn)
        offset = source.consumer_offset(conn, source.CONSUMER)
    return dg.ObserveResult(
        data_version=dg.DataVersion(str(head)),
        metadata={"outbox_head_seq": head, "consumer_offset": offset, "consumer_lag": head - offset},
    )


@dg.observable_source_asset(
    key=["legacy", "meili_index"],
    group_name="source",
    description="The Meilisearch index serving reads today (stage legacy): documents per topic.",
)
def legacy_meili_index(meili: MeiliResource) -> dg.ObserveResult:
    counts = meili_index.counts_per_topic(meili.client(), meili.index_uid)
    total = sum(counts.values())
    return dg.ObserveResult(
        data_version=dg.DataVersion(str(total)),
        metadata={"documents": total, "topics": len(counts)},
    )


observe_sources_job = dg.define_asset_job(
    "observe_sources_job", selection=[events_outbox.key, legacy_meili_index.key],
    description="Record outbox head, consumer lag and legacy index size.",
)
observe_sources_schedule = dg.ScheduleDefinition(
    job=observe_sources_job, cron_schedule="* * * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
)
