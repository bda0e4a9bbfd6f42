"""Drill 11: log hygiene over a representative session, every log source captured at DEBUG.

Fault: secrets and personal data flowing into logs through error messages, progress lines, run events or
server logs. Protection: logs carry classes, counts, seqs and hashes only (DESIGN.md, Operations).
The session, on the product's shape: CLI `demo seed` (the product's writer and index-v1's per-topic
indexes) and `adopt` (the handover), dual catch-up through real Dagster runs of canary posts published
by the product's writer, with a rejected row, an outbox row whose event is missing and a
stalled-then-retried side, a backfill partition, replay, shadow reads with viewer ids, a refused
cutover, `status`, a `metrics serve` scrape. Every entry point gets a DSN carrying a password. Then
every line of Python logging (all loggers), the CLI's stdout/stderr, the Dagster event log read from
the instance, the process's own fds, the embedded PostgreSQL server log and the Meilisearch log is
scanned for post content, pubkeys, viewer ids, the Meilisearch master key, the PostgreSQL password and
the DSN.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time
import urllib.request
import uuid
from urllib.parse import urlsplit

import dagster as dg
import pytest

from search_migration import backfill
from search_migration import db
from search_migration.cutover import flags
from search_migration.local.product_writer import ProductWriter, build_event
from search_migration.source import contract
from search_migration.backfill import Window
from search_migration.definitions import defs
from search_migration.search.read_router import ReadRouter
from search_migration.settings import Settings

from ..support.servers import REPO, free_port
from ..support.writes import NOW
from .helpers import capture as capture_watermark
from ..support.cutover import run_job

CANARY = f"canary{uuid.uuid4().hex[:12]}"
CANARY_PUBKEY = hashlib.sha256(CANARY.encode()).hexdigest()
PASSWORD = f"pw-{uuid.uuid4().hex[:16]}"
VIEWERS = [f"viewer-{CANARY}-{i}" for i in range(20)]
# The CLI as an operator runs it, with every logger at DEBUG on stderr.
DEBUG_CLI = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr); "
             "from search_migration.cli import main; sys.argv[0] = 'search-migration'; main()")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(logging.Formatter("%(name)s %(levelname)s %(message)s").format(record))


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DEBUG_CLI, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def canary_posts(conn, n: int, tag: str, topic: str, marked: dict[int, str]) -> list[str]:
    """Notes by the canary's pubkey published through the product's writer (`marked`: extra words by index)."""
    writer, ids = ProductWriter(conn), []
    for i in range(n):
        event = build_event(pubkey=CANARY_PUBKEY, topics=[topic], created_at=NOW + i,
                            content=f"秘密の投稿 {CANARY} {tag} {i} です" + marked.get(i, ""))
        writer.publish(event, now=NOW + i)
        ids.append(event["id"])
    return ids


def tail(path, offset: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace").splitlines()


def size(path) -> int:
    return path.stat().st_size if path.exists() else 0



@pytest.fixture
def session(servers, database_url, monkeypatch):
    """The drill's database behind a DSN that carries a password (trust authentication ignores it, so it
    is only there to leak), and a Dagster instance whose resources read it, as a deployment's env does."""
    dsn = urlsplit(database_url)._replace(netloc=f"postgres:{PASSWORD}@{urlsplit(database_url).hostname}:"
                                                 f"{urlsplit(database_url).port}").geturl()
    env = servers.env(DATABASE_URL=dsn)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with dg.instance_for_test() as instance:
        yield dsn, env, instance


def test_no_secret_or_personal_data_in_any_log(session, servers, namespace, meili, capfd):
    url, env, dagster_env = session
    s: Settings | None = servers.settings
    server_logs = [s.services_dir / "pgdata" / "server.log", s.services_dir / "meili" / "meilisearch.log"] if s else []
    offsets = {p: size(p) for p in server_logs}
    capture = Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    outputs: dict[str, str] = {}
    try:
        run = cli("demo", "seed", "--posts", "600", "--topics", "4", "--seed", "5", "--namespace", namespace,
                  "--quiet", env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs["seed"] = run.stdout + run.stderr
        run = cli("adopt", "--from-consumer", contract.PRODUCT_INDEXER, "--by", "drill", "--reason", "log drill",
                  env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs["adopt"] = run.stdout + run.stderr
        run = cli("flags", "set", "search_write_mode", "dual", "--by", "drill", "--reason", "log drill", env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs["flags"] = run.stdout + run.stderr

        with db.connect(url) as conn:
            capture_watermark(conn, by="drill")
            TOPIC = contract.topic_ids(conn)[0]
        backfill.run_partition(url, f"all-{TOPIC}", TOPIC, Window(-2**62, 2**62), owner="log-drill")

        with db.connect(url) as conn:
            # PostgreSQL rejects one row for good (its error names the failing row) and another for now.
            ids = canary_posts(conn, 30, "dual", TOPIC, {3: " reject-me"})
            rejected, stalled = ids[3], ids[7]
            missing = hashlib.sha256(f"{CANARY}:missing".encode()).hexdigest()
            conn.execute("INSERT INTO cn_relay.events_outbox (op, event_id, topic_id, kind, created_at, ingested_at) "
                         "VALUES ('upsert', %s, %s, 1, %s, now())", (missing, TOPIC, NOW))  # its event is missing
            conn.execute("ALTER TABLE cn_search.post_search_documents "
                         "ADD CONSTRAINT drill_reject CHECK (content NOT LIKE '%%reject-me%%')")
            conn.execute(f"""
                CREATE FUNCTION cn_search.drill_stall() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.post_id = '{stalled}' THEN
                        RAISE EXCEPTION 'injected stall for %', NEW.content USING DETAIL = NEW.content;
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER drill_stall BEFORE INSERT OR UPDATE ON cn_search.post_search_documents
                    FOR EACH ROW EXECUTE FUNCTION cn_search.drill_stall();
            """)
        config = {"ops": {"catch_up": {"config": {"batch_size": 8}}}}
        first = defs.resolve_job_def("catchup_job").execute_in_process(
            instance=dagster_env, run_config=config, raise_on_error=False)
        assert not first.success  # the PostgreSQL side stalled on the trigger
        with db.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM cn_search.side_write_failures").fetchone()[0] == 1
            conn.execute("DROP TRIGGER drill_stall ON cn_search.post_search_documents")
        second = defs.resolve_job_def("catchup_job").execute_in_process(
            instance=dagster_env, run_config=config, raise_on_error=False)
        assert second.success
        with db.connect(url) as conn:
            reasons = sorted(r for r, in conn.execute("SELECT reason_class FROM cn_search.dead_letters"))
            assert reasons == ["rejected"]  # the missing event's upsert is a delete, as the product's indexer has it
            assert conn.execute("SELECT delete_reason FROM cn_search.post_search_documents WHERE post_id = %s",
                                (missing,)).fetchone() == ("missing",)
            assert conn.execute("SELECT count(*) FROM cn_search.side_write_failures").fetchone()[0] == 0

        run = cli("replay-failed", "--by", "drill", "--reason", "log drill", env=env)
        assert run.returncode == 1  # the rejected row still fails: audited, printed one line
        outputs["replay"] = run.stdout + run.stderr

        with db.connect(url) as conn:
            flags.set_flags(conn, {"shadow_sample_rate": "100"}, by="drill", reason="log drill")
        with ReadRouter(url, meili) as router:
            for viewer in VIEWERS:
                router.search(TOPIC, CANARY, viewer=viewer)
                router.suggest("秘密", viewer=viewer)
            router.drain()
        run = cli("search", "--topic", TOPIC, "--q", CANARY, "--viewer", VIEWERS[0], env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        outputs["search"] = run.stderr  # stdout is the answer itself (ids), not a log

        refused = run_job(dagster_env, "cutover_job", target_stage="live")
        assert not refused.success

        for args in (("status",), ("status", "--json")):
            run = cli(*args, env=env)
            assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr[-2000:]
            outputs[" ".join(args)] = run.stdout + run.stderr

        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", DEBUG_CLI, "metrics", "serve", "--port", str(port)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        try:
            deadline, body = time.monotonic() + 60, None
            while body is None:
                assert server.poll() is None and time.monotonic() < deadline, "metrics serve did not answer"
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                except OSError:
                    time.sleep(0.2)  # polling a port that is not open yet, bounded by the deadline
            assert "search_dual_write_errors_total" in body
            outputs["metrics scrape"] = body
        finally:
            server.terminate()
            try:
                outputs["metrics serve"] = server.communicate(timeout=30)[0]
            except subprocess.TimeoutExpired:  # SIGTERM ignored (inherited disposition): stop it for good
                server.kill()
                outputs["metrics serve"] = server.communicate()[0]
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)

    out, err = capfd.readouterr()
    sources: dict[str, list[str]] = {"python logging": capture.lines, "fd stdout": out.splitlines(),
                                     "fd stderr": err.splitlines()}
    sources.update({f"cli {name}": text.splitlines() for name, text in outputs.items()})
    for run in dagster_env.get_runs():
        sources[f"dagster run {run.job_name}"] = [repr(e) for e in dagster_env.all_logs(run.run_id)]
    for path in server_logs:
        sources[path.name] = tail(path, offsets[path])
    assert len(capture.lines) > 50 and len(dagster_env.get_runs()) == 3  # the session really logged
    assert all(sources[name] for name in ("cli seed", "cli adopt", "cli replay", "cli status", "cli metrics scrape",
                                          "dagster run catchup_job", "dagster run cutover_job")), \
        [name for name, lines in sources.items() if not lines]

    with db.connect(url) as conn:
        contents = [c for c, in conn.execute("SELECT content FROM cn_relay.events") if len(c) >= 12]
        pubkeys = {p for p, in conn.execute("SELECT DISTINCT pubkey FROM cn_relay.events")}
    needles = {"post content": {c[:24] for c in contents} | {CANARY}, "pubkey": pubkeys,
               "viewer id": set(VIEWERS), "Meilisearch master key": {servers.meili_key} - {""},
               "PostgreSQL password": {PASSWORD}, "DSN": {url, urlsplit(url).netloc}}
    leaks = []
    for name, lines in sources.items():
        for n, line in enumerate(lines):
            for kind, values in needles.items():
                found = [v for v in values if v in line]
                if found:  # reported with the secret itself masked, so the report is no leak of its own
                    masked = line
                    for v in found:
                        masked = masked.replace(v, f"<{kind}>")
                    leaks.append(f"{name} line {n + 1}: {masked[:300]}")
    assert not leaks, "\n".join(leaks[:30])


def test_settings_and_fixtures_never_show_keys_or_dsns(servers):
    """Failure reports (pytest, hypothesis) and tracebacks print these objects whole."""
    s = Settings.from_env({"DATABASE_URL": "postgresql://app:s3cret-pw@db/x", "MEILI_MASTER_KEY": "k3y-" + CANARY,
                           "DAGSTER_PG_URL": "postgresql://d:s3cret-pw@db/d"})
    assert "s3cret-pw" not in repr(s) and CANARY not in repr(s)
    assert not servers.meili_key or servers.meili_key not in repr(servers)
