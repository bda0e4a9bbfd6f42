"""The write-path (tail supervision, bounded catch-up) and topic sensors, evaluated against a real instance and a real database."""

from __future__ import annotations

import json

import dagster as dg

from search_migration import db
from search_migration.backfill.partition_keys import topic_partition_key
from search_migration.defs.resources import PostgresResource
from search_migration.defs import write_path as write_path_defs
from search_migration.defs.write_path import catchup_job, high_watermark_sensor, tail_job, topic_partitions_sensor
from search_migration.source import contract
from search_migration.write_path import handover

from .support.writes import new_posts


def _context(instance, url, cursor=None):
    return dg.build_sensor_context(instance=instance, cursor=cursor,
                                   resources={"postgres": PostgresResource(database_url=url)})


def _heartbeat(url, run_id, *, age_s=0.0, left_s=600.0):
    """The row a live tail run keeps current (write_path/tail.py), as of `age_s` ago."""
    with db.connect(url) as conn:
        conn.execute("INSERT INTO cn_search.tail_runs (run_id, pid, host, heartbeat_at, ends_by) VALUES "
                     "(%s, 1, 'test', now() - make_interval(secs => %s), now() + make_interval(secs => %s)) "
                     "ON CONFLICT (run_id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, ends_by = EXCLUDED.ends_by",
                     (run_id, age_s, left_s))


def _requests(result) -> dict[str, list[dg.RunRequest]]:
    out: dict[str, list[dg.RunRequest]] = {"tail_job": [], "catchup_job": []}
    for r in (result if isinstance(result, list) else []):
        out[r.job_name].append(r)
    return out


def test_high_watermark_sensor_keeps_exactly_one_tail_run_alive(migrated_url, namespace):
    with db.connect(migrated_url) as conn:
        new_posts(conn, 7, "sensor", topic_id=f"kukuri:{namespace}-sensor")
        # the product's indexer had consumed nothing when it was stopped
        conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, 0)",
                     (contract.PRODUCT_INDEXER,))
    with dg.instance_for_test() as instance:
        # before the handover the product's indexer keeps its indexes current: nothing to request
        before = high_watermark_sensor(_context(instance, migrated_url))
        assert isinstance(before, dg.SkipReason) and "has not taken over" in before.skip_message
        with db.connect(migrated_url) as conn:
            handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="sensor test")

        # no tail run: one is requested, its epoch in the run key (run keys dedupe forever: a new epoch each)
        ctx = _context(instance, migrated_url)
        asked = _requests(high_watermark_sensor(ctx))
        (first,) = asked["tail_job"]
        assert not asked["catchup_job"]  # 7 rows: the tail drains them itself
        epoch = json.loads(ctx.cursor)["tail_epoch"]
        assert first.run_key == f"tail:{epoch}" and first.tags["search_migration/epoch"] == str(epoch)

        # it runs and heartbeats: exactly one alive, nothing more is requested
        run = instance.create_run_for_job(job_def=tail_job, status=dg.DagsterRunStatus.STARTED)
        _heartbeat(migrated_url, run.run_id)
        alive = high_watermark_sensor(_context(instance, migrated_url, cursor=ctx.cursor))
        assert isinstance(alive, dg.SkipReason) and "is alive" in alive.skip_message, alive

        # its process died without telling Dagster (SIGKILL): no heartbeat, marked failed, replaced by a new epoch
        _heartbeat(migrated_url, run.run_id, age_s=600)
        ctx2 = _context(instance, migrated_url, cursor=ctx.cursor)
        (second,) = _requests(high_watermark_sensor(ctx2))["tail_job"]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert int(second.run_key.split(":")[1]) > epoch

        # a run about to end by itself gets its successor ahead of time (no gap); then no third one
        successor = instance.create_run_for_job(job_def=tail_job, status=dg.DagsterRunStatus.STARTED)
        _heartbeat(migrated_url, successor.run_id, left_s=30)
        ctx3 = _context(instance, migrated_url, cursor=ctx2.cursor)
        (third,) = _requests(high_watermark_sensor(ctx3))["tail_job"]
        assert third.tags["search_migration/why"].startswith("successor of")
        nxt = instance.create_run_for_job(job_def=tail_job, status=dg.DagsterRunStatus.STARTED)
        _heartbeat(migrated_url, nxt.run_id)
        assert isinstance(high_watermark_sensor(_context(instance, migrated_url, cursor=ctx3.cursor)), dg.SkipReason)


def test_high_watermark_sensor_still_requests_bounded_catch_up_for_a_large_backlog(migrated_url, monkeypatch):
    monkeypatch.setattr(write_path_defs, "BACKLOG_CATCHUP", 5)  # 7 rows stand for a large backlog
    monkeypatch.setattr(write_path_defs, "MAX_RANGE", 4)
    with db.connect(migrated_url) as conn:
        new_posts(conn, 7, "backlog", topic_id="kukuri:backlog")
        conn.execute("INSERT INTO cn_relay.consumer_offsets (consumer, last_seq) VALUES (%s, 0)",
                     (contract.PRODUCT_INDEXER,))
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="test", reason="sensor test")
        head = contract.outbox_head(conn)
    with dg.instance_for_test() as instance:
        tail_run = instance.create_run_for_job(job_def=tail_job, status=dg.DagsterRunStatus.STARTED)
        _heartbeat(migrated_url, tail_run.run_id)
        ctx = _context(instance, migrated_url)
        asked = _requests(high_watermark_sensor(ctx))
        assert not asked["tail_job"]  # the one tail alive stays the only one
        (request,) = asked["catchup_job"]  # a bounded range beside it, queued on the consumer lock
        assert request.run_key == f"catchup:0-{min(head, 4)}"
        assert request.run_config["ops"]["catch_up"]["config"]["to_seq"] == min(head, 4)

        # the same range again (its run failed without progress): a new attempt, not a deduped key
        (again,) = _requests(high_watermark_sensor(_context(instance, migrated_url, cursor=ctx.cursor)))["catchup_job"]
        assert again.run_key == f"catchup:0-{min(head, 4)}:retry1"

        # never two catch-up runs at once
        instance.create_run_for_job(job_def=catchup_job, status=dg.DagsterRunStatus.STARTED)
        skipped = high_watermark_sensor(_context(instance, migrated_url))
        assert isinstance(skipped, dg.SkipReason) and "still in flight" in skipped.skip_message

    # with tail runs off (the old path), a caught-up consumer requests nothing
    monkeypatch.setenv(write_path_defs.TAIL_SETTING, "off")
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
