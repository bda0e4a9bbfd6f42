"""What the tail drills share: a tail in a thread of the test (or a real Dagster run of tail_job in a
process group of its own), posts written as the product writes them with the real clock (freshness is
commit -> applied), a writer that loses its notification, and the invariant."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path

from search_migration import db
from search_migration.local.product_writer import ProductWriter
from search_migration.source import contract
from search_migration.write_path import tail

from ..support import invariants
from ..support.processes import DAGSTER, poll
from ..support.servers import REPO
from ..support.writes import note


class SilentWriter(ProductWriter):
    """The product's writer with its pg_notify lost: the row commits, nobody is woken."""

    @staticmethod
    def _notify(cur, seqs):
        pass


def publish(conn, tag: str, n: int, topic_id: str, *, silent: bool = False, start: int = 0) -> list[tuple[str, int]]:
    """`n` notes committed now (real clock: ingested_at is the commit time); (event id, last seq) each."""
    writer = (SilentWriter if silent else ProductWriter)(conn)
    out = []
    for i in range(start, start + n):
        event = note(tag, i, [topic_id], created_at=int(time.time()))
        out.append((event["id"], max(writer.publish(event))))
    return out


def offset(url: str) -> int:
    with db.connect(url) as conn:
        return contract.consumer_offset(conn, contract.CONSUMER)


def side_offsets(url: str) -> dict[str, int]:
    with db.connect(url) as conn:
        return dict(conn.execute("SELECT backend, last_seq FROM cn_search.consumer_side_offsets WHERE consumer = %s",
                                 (contract.CONSUMER,)).fetchall())


def tail_state(url: str, run_id: str) -> str | None:
    with db.connect(url) as conn:
        row = conn.execute("SELECT state FROM cn_search.tail_runs WHERE run_id = %s", (run_id,)).fetchone()
        return row[0] if row else None


@contextlib.contextmanager
def tail_thread(url: str, meili, options: tail.Options, run_id: str = "drill"):
    """A tail in a thread of the test; stopped (drained) and joined on exit. Yields the Tail."""
    stop = threading.Event()
    t = tail.Tail(url, meili, options, stop=stop, run_id=run_id)
    errors: list[BaseException] = []

    def target():
        try:
            t.run()
        except BaseException as exc:  # surfaced on exit
            errors.append(exc)

    thread = threading.Thread(target=target, name=f"tail-{run_id}", daemon=True)
    thread.start()
    try:
        poll(lambda: t.state == "tailing" or errors or not thread.is_alive(), 60, "the tail to hold the lock")
        assert not errors, errors
        yield t
    finally:
        stop.set()
        thread.join(timeout=120)
        assert not thread.is_alive(), "the tail did not drain and stop"
    assert not errors, errors


def assert_invariant(url: str, drill: str, meili=None) -> invariants.Invariant:
    with db.connect(url) as conn:
        head = contract.outbox_head(conn)
        assert contract.consumer_offset(conn, contract.CONSUMER) == head, "check only after catching up"
        inv = invariants.check(conn, head, meili)
    print(f"\nDRILL {drill}: " + json.dumps({k: v for k, v in inv.as_dict().items() if k != "examples"}))
    assert inv.checked > 0 and inv.live > 0
    assert inv.ok, f"invariant violated after {drill}: {inv.as_dict()}"
    return inv


def tail_run(env: dict, config: dict, log: Path, tags: dict | None = None) -> subprocess.Popen:
    """One real tail_job run (`dagster job execute`) in its own process group."""
    run_config = log.with_suffix(".config.yaml")
    run_config.write_text(json.dumps({"ops": {"tail": {"config": config}}}))
    cmd = [*DAGSTER, "job", "execute", "-m", "search_migration.definitions", "-j", "tail_job", "--config",
           str(run_config)]
    for k, v in (tags or {}).items():
        cmd += ["--tags", json.dumps({k: v})]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def dual_corpus(url: str, meili, namespace: str, posts: int = 150, topics: int = 2) -> str:
    """A small product (the demo corpus, indexed by index-v1), handed over, writing dual, backfilled:
    what the invariant can be checked on exactly."""
    from search_migration.local import demo_seed
    from search_migration.write_path import handover

    from ..support.backfill import backfill_all
    from ..support.writes import set_mode

    demo_seed.seed(url, meili, posts=posts, topics=topics, seed=3, namespace=namespace)
    with db.connect(url) as conn:
        handover.adopt(conn, from_consumer=contract.PRODUCT_INDEXER, by="drill", reason="tail drill")
        set_mode(conn, "dual")
    backfill_all(url, owner="tail-drill")
    return url
