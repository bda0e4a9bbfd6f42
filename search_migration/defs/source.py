"""The two systems as they are today, observed so the UI shows outbox lag and legacy index size."""

from __future__ import annotations

import dagster as dg

from search_migration.gates import drift
from search_migration.source import contract
from .resources import MeiliResource, PostgresResource
from .ui import OWNERS, runbook, tags

LARGEST_SHOWN = 20

# multi_observable_source_asset only because its AssetSpec takes owners (observable_source_asset does not).
OUTBOX = dg.AssetSpec(
    ["cn_relay", "events_outbox"], group_name="source", owners=OWNERS, tags=tags("any", "source"),
    kinds={"postgres"}, metadata=runbook("runbook-source"),
    description="The product's transactional outbox (read-only for us). consumer_lag = outbox head minus the "
                "catch-up consumer's offset: if it keeps growing, catch-up is stalled or too slow; see the "
                "write-path runbook.",
)
LEGACY_INDEX = dg.AssetSpec(
    ["legacy", "meili_index"], group_name="source", owners=OWNERS, tags=tags("any", "source"),
    kinds={"meilisearch"}, metadata=runbook("runbook-source"),
    description="The product's per-topic Meilisearch indexes (topic_<sanitized topic id>) that serve reads until "
                "stage live: documents per topic index. A sudden drop means the legacy indexes lost documents; "
                "compare with search_drift_report before any cutover.",
)


@dg.multi_observable_source_asset(specs=[OUTBOX], name="events_outbox")
def events_outbox(postgres: PostgresResource):
    with postgres.connect() as conn:
        head = contract.outbox_head(conn)
        offset = contract.consumer_offset(conn, contract.CONSUMER)
    yield dg.ObserveResult(
        asset_key=OUTBOX.key, data_version=dg.DataVersion(str(head)),
        metadata={"outbox_head_seq": head, "consumer_offset": offset, "consumer_lag": head - offset},
    )


@dg.multi_observable_source_asset(specs=[LEGACY_INDEX], name="legacy_meili_index")
def legacy_meili_index(meili: MeiliResource):
    # One `GET /stats` for every index; the product's are the `topic_*` ones, one per topic (uid collisions
    # aside, which search_drift_report lists).
    counts = drift.meili_counts(meili.client())
    total = sum(counts.values())
    largest = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:LARGEST_SHOWN]
    yield dg.ObserveResult(
        asset_key=LEGACY_INDEX.key, data_version=dg.DataVersion(str(total)),
        metadata={
            "documents": total, "topic_indexes": len(counts),
            "empty_topic_indexes": sum(1 for n in counts.values() if not n),
            "largest_topic_indexes": dg.MetadataValue.table(
                records=[dg.TableRecord({"index": uid, "documents": n}) for uid, n in largest],
                schema=dg.TableSchema(columns=[dg.TableColumn("index", "string"), dg.TableColumn("documents", "int")])),
        },
    )


observe_sources_job = dg.define_asset_job(
    "observe_sources_job", selection=[OUTBOX.key, LEGACY_INDEX.key], owners=OWNERS, tags=tags("any", "source"),
    metadata=runbook("runbook-source"),
    description="Record the outbox head, the consumer lag and the legacy index size (safe at any stage; "
                "read-only).",
)
observe_sources_schedule = dg.ScheduleDefinition(
    job=observe_sources_job, cron_schedule="* * * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
    owners=OWNERS, tags=tags("any", "source"), metadata=runbook("runbook-source"),
    description="Every minute, observe the outbox lag and the legacy index size so their history plots in the "
                "UI. Off by default; turn it on for the whole migration.",
)
