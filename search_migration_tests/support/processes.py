"""Child processes as an operator starts them (the CLI, `python -m dagster`), and waiting on them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .servers import REPO

CLI = [sys.executable, "-m", "search_migration.cli"]  # the console entry point, in this interpreter
DAGSTER = [sys.executable, "-m", "dagster"]  # the Dagster CLI of this interpreter (the venv's, wherever it is)


def run_cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console entry point in a child process, as an operator would run it."""
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def postgres_dagster_home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME holding the repository's dagster.yaml (the instance on DAGSTER_PG_URL)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    return home


def poll(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll an observable condition with a deadline (never a sleep as synchronization)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def child(script: str, log: Path) -> subprocess.Popen:
    """A plain Python child process (the engine without Dagster) in its own process group."""
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the process group, SIGKILL if it has not exited within `timeout`."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)


def crash_meili(s) -> None:
    """Meilisearch gone at once (SIGKILL), as in a crash. A SIGTERM lets it drain: it went on serving a
    client's open connections long enough for a catch-up meant to meet the outage to finish first."""
    from search_migration.local import services

    for pid in services.recorded_pids(s):
        os.kill(pid, signal.SIGKILL)
    services.down(s)  # reaps the process and forgets it: `services.up` starts it again on its data

