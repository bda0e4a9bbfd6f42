"""Local services lifecycle against the real binaries: up, up again, status, busy port, down."""

from __future__ import annotations

import json
import shutil
import socket

import psutil

from search_migration.local import services
from search_migration.settings import Settings

from .support.processes import run_cli
from .support.servers import CACHE, REPO, free_port


def _env(home, pg_port: int, meili_port: int, **extra) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MEILI_URL", "MEILI_MASTER_KEY")}
    env.update(SEARCH_MIGRATION_HOME=str(home), SEARCH_MIGRATION_CACHE=str(CACHE),
               SEARCH_MIGRATION_PG_PORT=str(pg_port), SEARCH_MIGRATION_MEILI_PORT=str(meili_port), **extra)
    return env


def test_up_twice_status_down_leaves_no_process():
    # The home lives under .local like conftest's own_pg: as root the server runs as an unprivileged user,
    # and pytest's tmp_path is private to root (another pytest session re-closes /tmp/pytest-of-root)
    pg_port = free_port()
    home = REPO / ".local" / f"test-services-lifecycle-{pg_port}"
    try:
        _lifecycle(_env(home, pg_port, free_port()))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _lifecycle(env: dict[str, str]) -> None:
    s = Settings.from_env(env)
    first = run_cli("services", "up", env=env)
    assert first.returncode == 0, first.stderr
    assert "postgres: started" in first.stdout and "meilisearch: started" in first.stdout
    pids = services.recorded_pids(s)
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    try:
        second = run_cli("services", "up", env=env)
        assert second.returncode == 0, second.stderr
        assert "postgres: already running" in second.stdout and "meilisearch: already running" in second.stdout
        assert sorted(services.recorded_pids(s)) == sorted(pids)

        status = run_cli("services", "status", env=env)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count("healthy") == 2
        assert f"127.0.0.1:{s.pg_port}" in status.stdout and f"127.0.0.1:{s.meili_port}" in status.stdout
        # the generated master key is never printed by status
        assert s.meili_master_key not in status.stdout
    finally:
        down = run_cli("services", "down", env=env)
    assert down.returncode == 0, down.stderr
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert services.recorded_pids(s) == []
    after = run_cli("services", "status", env=env)
    assert after.returncode == 1 and after.stdout.count("DOWN") == 2


def test_busy_port_is_one_clear_error(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        env = _env(tmp_path / "home", busy, free_port())
        result = run_cli("services", "up", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: port {busy} is in use by another process; set SEARCH_MIGRATION_PG_PORT to a free port"]
    assert services.recorded_pids(Settings.from_env(env)) == []


def test_external_servers_start_nothing(tmp_path, servers):
    env = _env(tmp_path / "home", free_port(), free_port(), DATABASE_URL=servers.database_url,
               MEILI_URL=servers.meili_url, MEILI_MASTER_KEY=servers.meili_key)
    before = {p.pid for p in psutil.process_iter()}
    result = run_cli("services", "up", env=env)
    assert result.returncode == 0, result.stderr
    assert "postgres: external" in result.stdout and "meilisearch: external" in result.stdout
    state_file = tmp_path / "home" / "services" / "state.json"
    assert not state_file.exists() or json.loads(state_file.read_text()) == {}
    # other test sessions on this machine start servers too: ours would name this home or these ports
    ours = (str(tmp_path / "home"), env["SEARCH_MIGRATION_PG_PORT"], env["SEARCH_MIGRATION_MEILI_PORT"])
    spawned = [p for p in psutil.process_iter(["name", "cmdline"]) if p.pid not in before
               and p.info["name"] in ("postgres", "meilisearch-1.21.0")
               and any(o in " ".join(p.info["cmdline"] or []) for o in ours)]
    assert spawned == []
    status = run_cli("services", "status", env=env)
    assert status.returncode == 0 and status.stdout.count("external") == 2
