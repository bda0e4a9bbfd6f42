"""Drill (issue 16, rule 12): a stalled catch-up says, in its run's first failure line, which engine
stalled at which outbox seq and why.

Meilisearch (the real process) is stopped while the write path has rows to apply; catchup_job runs for
real with its retry policy (four attempts). Dagster wraps a failure that still asks for a retry, once
the retries are spent, as "Exceeded max_retries of 3" with the op's message only in the cause: the
protection is that the last attempt fails without asking, so the step's and the run's failure event
carry the op's own one-line message.
"""

from __future__ import annotations

import dagster as dg

from search_migration import db
from search_migration.definitions import defs
from search_migration.local import services
from search_migration.source import contract
from search_migration.write_path import consumer, meili_index

from .helpers import seed_handed_over
from ..support.writes import FAST, meili_ids, new_posts, topic


def test_a_stalled_catch_up_names_the_engine_the_seq_and_the_cause_in_one_line(
        servers, database_url, namespace, own_meili, monkeypatch):
    own = meili_index.client(own_meili.meili_url, own_meili.meili_master_key)
    seed_handed_over(database_url, own, namespace, posts=300, topics=2, seed=12)
    with db.connect(database_url) as conn:
        consumer.catch_up(conn, own, retry=FAST)
        offset = contract.consumer_offset(conn, contract.CONSUMER)
        posts = new_posts(conn, 5, "stall", topic(conn))  # legacy: Meilisearch is the engine written
    assert posts[0][1] > offset
    stalled_seq = min(seq for _, seq in posts)
    for name, value in servers.env(DATABASE_URL=database_url, MEILI_URL=own_meili.meili_url,
                                   MEILI_MASTER_KEY=own_meili.meili_master_key).items():
        monkeypatch.setenv(name, value)

    services.down(own_meili)
    try:
        with dg.instance_for_test() as instance:
            run = defs.resolve_job_def("catchup_job").execute_in_process(instance=instance, raise_on_error=False)
    finally:
        services.up(own_meili)
    assert not run.success
    retries = [e for e in run.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 3  # the retry policy still runs: only the last attempt's failure changes
    step_failures = [e for e in run.all_events if e.is_step_failure]
    assert len(step_failures) == 1
    run_failure = next(e for e in run.all_events if e.event_type_value == "PIPELINE_FAILURE")
    for error in (step_failures[0].step_failure_data.error, run_failure.event_specific_data.error):
        message = error.message.strip()
        print(f"\nDRILL rule 12 first failure line: {message.splitlines()[0]}")
        assert "\n" not in message, message  # one line
        assert "Exceeded max_retries" not in message, message
        first = message.splitlines()[0]
        assert f"Meilisearch stalled at outbox seq {stalled_seq}: " in first, first
        assert "unreachable" in first.lower() or "meilisearch" in first.split(": ", 3)[-1].lower(), first

    with db.connect(database_url) as conn:  # Meilisearch back: the next run resumes at the stalled row
        result = consumer.catch_up(conn, own, retry=FAST)
        assert not result.stalled and result.end_offset == contract.outbox_head(conn), result
        assert {event_id for event_id, _ in posts} <= meili_ids(own, topic(conn))  # legacy: Meilisearch only
