"""Where the services are: the environment first, the embedded local services otherwise.

Every entry point (CLI, Dagster resources, tests) resolves connection settings here so that
`DATABASE_URL` / `MEILI_URL` always win and nothing is started behind an operator's back.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULT_PG_PORT = 54329
DEFAULT_MEILI_PORT = 7701
SOURCE_DB = "search_migration"
DAGSTER_DB = "dagster"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is safe to print."""


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a port number, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be between 1 and 65535, got {port}")
    return port


@dataclass(frozen=True)
class Settings:
    home: Path
    pg_port: int
    meili_port: int
    # repr=False: a Settings shows up in tracebacks, test reports and logs; DSNs and keys must not
    external_database_url: str | None = field(repr=False)
    external_meili_url: str | None
    external_meili_key: str | None = field(repr=False)
    meili_write_key_env: str | None = field(repr=False)  # MEILI_WRITE_KEY: documents on topic_*, for the write path
    meili_search_key_env: str | None = field(repr=False)  # MEILI_SEARCH_KEY: search only, for the read path
    external_dagster_pg_url: str | None = field(repr=False)
    cache_dir: Path  # downloaded binaries; shareable between homes

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Settings":
        home = Path(env.get("SEARCH_MIGRATION_HOME") or Path.cwd() / ".local").resolve()
        return cls(
            home=home,
            pg_port=_port(env, "SEARCH_MIGRATION_PG_PORT", DEFAULT_PG_PORT),
            meili_port=_port(env, "SEARCH_MIGRATION_MEILI_PORT", DEFAULT_MEILI_PORT),
            external_database_url=env.get("DATABASE_URL") or None,
            external_meili_url=env.get("MEILI_URL") or None,
            external_meili_key=env.get("MEILI_MASTER_KEY") or None,
            meili_write_key_env=env.get("MEILI_WRITE_KEY") or None,
            meili_search_key_env=env.get("MEILI_SEARCH_KEY") or None,
            external_dagster_pg_url=env.get("DAGSTER_PG_URL") or None,
            cache_dir=Path(env.get("SEARCH_MIGRATION_CACHE") or home / "bin"),
        )

    @property
    def services_dir(self) -> Path:
        return self.home / "services"

    @property
    def embedded_pg(self) -> bool:
        return self.external_database_url is None

    @property
    def embedded_meili(self) -> bool:
        return self.external_meili_url is None

    def embedded_pg_url(self, dbname: str = SOURCE_DB) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/{dbname}"

    @property
    def database_url(self) -> str:
        return self.external_database_url or self.embedded_pg_url()

    @property
    def dagster_pg_url(self) -> str:
        """Dagster's instance storage: its own database next to ours when embedded.

        With DATABASE_URL naming an existing server, Dagster's storage must be named too: it is never
        the product database unless DAGSTER_PG_URL says so."""
        if self.external_dagster_pg_url:
            return self.external_dagster_pg_url
        if self.external_database_url:
            raise ConfigError("DAGSTER_PG_URL is not set: with DATABASE_URL set, name Dagster's own storage "
                              "database (it is never the product database unless you set it to that)")
        return self.embedded_pg_url(DAGSTER_DB)

    @property
    def meili_url(self) -> str:
        return (self.external_meili_url or f"http://127.0.0.1:{self.meili_port}").rstrip("/")

    @property
    def meili_master_key(self) -> str:
        """The external key, or a local key generated once and kept out of the repository."""
        if self.external_meili_url:
            return self.external_meili_key or ""
        if self.external_meili_key:
            return self.external_meili_key
        path = self.services_dir / "meili_master_key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    @property
    def meili_write_key(self) -> str:
        """The write path's key (least privilege: a documents key on topic_*), else the master key."""
        return self.meili_write_key_env or self.meili_master_key

    @property
    def meili_search_key(self) -> str:
        """The read path's key (least privilege: search only), else the master key."""
        return self.meili_search_key_env or self.meili_master_key

    def environment(self) -> dict[str, str]:
        """Variables that point a child process (dagster dev, a run) at the same services."""
        return {
            "SEARCH_MIGRATION_HOME": str(self.home),
            "DATABASE_URL": self.database_url,
            "DAGSTER_PG_URL": self.dagster_pg_url,
            "MEILI_URL": self.meili_url,
            "MEILI_MASTER_KEY": self.meili_master_key,
        }


def redact_dsn(dsn: str) -> str:
    """A DSN fit for logs and status output: the password never leaves the process."""
    try:
        parts = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable DSN>"
    if parts.get("password"):
        parts["password"] = "***"
    return make_conninfo(**{k: v for k, v in parts.items() if v is not None})
