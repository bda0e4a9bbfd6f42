"""Apply the ordered SQL files in `migrations/` exactly once, under a PostgreSQL advisory lock.

They create and change `cn_search` only, and only after checking that `cn_relay` has the product's
shape and that `cn_search` is ours (or absent, or empty): nothing of the product is changed.

The files ship inside the package as `search_migration.migrations` (pyproject.toml maps the top-level
`migrations/` folder onto it) and are read through importlib.resources, so an installed wheel migrates
exactly as a checkout does.

Two runners at once serialize on the lock: one applies, the other waits and finds nothing to do.
A file that changed after it was applied is refused (by checksum) before anything else runs, so a
history edited by accident can never half-apply.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import psycopg

from search_migration.errors import first_line
from search_migration.schema import ownership
from search_migration.source import shape

# A plain directory (pathlib.Path) in practice: the package is a regular one, in a wheel or editable.
MIGRATIONS_DIR: Traversable = resources.files("search_migration.migrations")
# Any constant works as long as every runner agrees: derived from the project name.
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"search_migration.schema.migrate").digest()[:8], "big", signed=True)
FILENAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

# Our history lives in our schema: nothing of ours is written anywhere else (cn_relay is the product's).
TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS cn_search.schema_versions (
    filename   text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The migration history cannot be applied safely; the message names the file."""


@dataclass(frozen=True)
class Migration:
    filename: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    found = []
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        if not FILENAME.match(path.name):
            raise MigrationError(f"{path.name}: migration files must be named NNNN_snake_case.sql")
        found.append(Migration(path.name, path.read_text(encoding="utf-8")))
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    numbers = [m.filename[:4] for m in found]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise MigrationError(f"two migrations share the number {duplicates[0]}")
    return found


def migrate(conninfo: str, directory: Traversable = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations; return the filenames applied (empty when already up to date)."""
    migrations = discover(directory)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        try:
            try:
                ownership.check(conn)
                shape.verify(conn)
            except (ownership.ForeignSchema, shape.ShapeError) as exc:
                raise MigrationError(str(exc)) from None
            try:
                with conn.transaction():
                    if ownership.state(conn) == "absent":  # IF NOT EXISTS would still need CREATE on the database
                        conn.execute("CREATE SCHEMA cn_search")
                    conn.execute(TRACKING_DDL)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise MigrationError(f"cannot create cn_search ({first_line(exc)}): ask a DBA to run the SQL "
                                     "`search-migration db grants --role ROLE` prints") from None
            applied = dict(conn.execute("SELECT filename, checksum FROM cn_search.schema_versions").fetchall())
            on_disk = {m.filename for m in migrations}
            for filename in sorted(set(applied) - on_disk):
                raise MigrationError(f"{filename} was applied but is missing from {directory.name}/")
            for m in migrations:
                if m.filename in applied and applied[m.filename] != m.checksum:
                    raise MigrationError(
                        f"{m.filename} was edited after it was applied; add a new migration instead")
            done = []
            for m in migrations:
                if m.filename in applied:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(m.sql)
                        conn.execute(
                            "INSERT INTO cn_search.schema_versions (filename, checksum) "
                            "VALUES (%s, %s)", (m.filename, m.checksum))
                except psycopg.Error as exc:
                    raise MigrationError(f"{m.filename} failed: {first_line(exc)}") from exc
                done.append(m.filename)
            return done
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


def pending(conninfo: str, directory: Traversable = MIGRATIONS_DIR) -> list[str]:
    """Filenames not yet applied, without taking the lock (for status output)."""
    with psycopg.connect(conninfo) as conn:
        exists = conn.execute("SELECT to_regclass('cn_search.schema_versions')").fetchone()[0]
        applied = set()
        if exists:
            applied = {r[0] for r in conn.execute("SELECT filename FROM cn_search.schema_versions")}
    return [m.filename for m in discover(directory) if m.filename not in applied]
