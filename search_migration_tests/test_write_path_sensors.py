"""The catch-up and topic sensors, evaluated against a real instance and a real database."""

from __future__ import annotations

import dagster as dg

from search_migration import db
from search_migration.backfill.partition_keys import topic_partition_key
from search_migration.defs.resources import PostgresResource
from search_migration.defs.write_path import catchup_job, high_watermark_sensor, topic_partitions_sensor
from search_migration.source import contract
from search_migration.write_path import handover

from .support.writes import new_posts


def _context(instance, url, cursor=None):
    return dg.build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"postgres": PostgresResource(database_url=url)})


def test_high_watermark_sensor_requests_the_range_and_skips_while_in_flight(migrated_url, namespace):
    with db.connect(migrated_url) as conn:
        new_posts(conn, 7, "sensor", topic_id=f"kukuri:{namespace}-sensor")
        head = contract.outbox_head(conn)
        # the product's indexer had consumed nothing when it was stopped
        conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, 0)",
                     (contract.PRODUCT_INDEXER,))
    with dg.instance_for_test() as instance:
        # before the handover the product's indexer keeps its indexes current: nothing to request
        before = high_watermark_sensor(_context(instance, migrated_url))
        assert isinstance(before, dg.SkipReason) and "has not taken over" in before.skip_message
        with db.connect(migrated_url) as conn:
            handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="sensor test")

        ctx = _context(instance, migrated_url)
        request = high_watermark_sensor(ctx)
        assert isinstance(request, dg.RunRequest)
        assert request.run_key == f"catchup:0-{head}"
        assert request.run_config["ops"]["catch_up"]["config"]["to_seq"] == head

        # the same range again (its run failed without progress): a new attempt, not a deduped key
        again = high_watermark_sensor(_context(instance, migrated_url, cursor=ctx.cursor))
        assert again.run_key == f"catchup:0-{head}:retry1"

        instance.create_run_for_job(job_def=catchup_job, status=dg.DagsterRunStatus.STARTED)
        skipped = high_watermark_sensor(_context(instance, migrated_url))
        assert isinstance(skipped, dg.SkipReason) and "still in flight" in skipped.skip_message

    with db.connect(migrated_url) as conn:
        contract.set_consumer_offset(conn, contract.CONSUMER, head)
    with dg.instance_for_test() as instance:
        idle = high_watermark_sensor(_context(instance, migrated_url))
        assert isinstance(idle, dg.SkipReason) and "caught up" in idle.skip_message


def test_topic_sensor_adds_new_topics_with_safe_keys(migrated_url, namespace):
    tech, odd, photo = (f"kukuri:{namespace}-tech", f"kukuri:{namespace}-odd|topic,name",
                        f"kukuri:{namespace}-photo")
    with db.connect(migrated_url) as conn:
        new_posts(conn, 2, "a", topic_id=tech)
        new_posts(conn, 2, "b", topic_id=odd)
    with dg.instance_for_test() as instance:
        result = topic_partitions_sensor(_context(instance, migrated_url))
        assert isinstance(result, dg.SensorResult)
        (add,) = result.dynamic_partitions_requests
        assert add.partitions_def_name == "topics"
        assert sorted(add.partition_keys) == sorted([topic_partition_key(tech), topic_partition_key(odd)])
        assert not any("|" in k or "," in k for k in add.partition_keys)
        assert topic_partition_key(tech) == tech  # a plain product topic id stays readable as it is
        instance.add_dynamic_partitions("topics", list(add.partition_keys))
        assert isinstance(topic_partitions_sensor(_context(instance, migrated_url)), dg.SkipReason)
        with db.connect(migrated_url) as conn:
            new_posts(conn, 1, "c", topic_id=photo)
        (add,) = topic_partitions_sensor(_context(instance, migrated_url)).dynamic_partitions_requests
        assert list(add.partition_keys) == [photo]
