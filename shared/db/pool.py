"""PostgreSQL adapters: pool creation with explicit timeouts, and schema migrations.

Exception tree::

    DatabaseError
     └── MigrationError     a migration file changed after it was applied, or is misnamed

Transport errors (Postgres down, timeouts) are asyncpg's / OSError and are left to
the caller, who decides whether to retry (see :func:`is_transient`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger(__name__)

# Aliases as strings: asyncpg's classes are only generic in the stubs.
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
Executor: TypeAlias = "Pool | Connection"

# pg_advisory_lock key serialising migrations across processes ("JETTY" in ASCII).
_MIGRATION_LOCK_KEY = 0x4A45545459
_MIGRATION_NAME = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")

# SQLSTATE classes meaning "this data can never be stored": 22 data exception
# (e.g. a NUL byte in text), 23 integrity constraint violation. Everything else
# (connection loss, shutdown, serialization failure, even a missing table) is
# retried rather than dropped: stalling is recoverable, losing an event is not.
_PERMANENT_SQLSTATE_CLASSES = ("22", "23")


class DatabaseError(Exception):
    pass


class MigrationError(DatabaseError):
    pass


async def create_pool(
    dsn: str,
    *,
    min_size: int = 0,
    max_size: int = 4,
    connect_timeout: float = 5.0,
    command_timeout: float = 30.0,
    max_inactive_connection_lifetime: float = 300.0,
    application_name: str = "jetty",
    server_settings: Mapping[str, str] | None = None,
) -> Pool:
    """A pool that connects lazily (``min_size=0`` by default), so a process can
    start while Postgres is still down; every connect and every command is bounded."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=command_timeout,
        max_inactive_connection_lifetime=max_inactive_connection_lifetime,
        server_settings={"application_name": application_name, **(server_settings or {})},
    )
    return pool


def is_transient(exc: BaseException) -> bool:
    """True when retrying later may succeed (Postgres unreachable, restarting, a
    timeout, a lost connection); False when the data itself is refused or the error
    is not a database error at all (a bug should surface, not loop)."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = exc.sqlstate or ""
        return not sqlstate.startswith(_PERMANENT_SQLSTATE_CLASSES)
    return isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError)


def is_refused_data(exc: BaseException) -> bool:
    """The database refuses this data for good: retrying the same rows cannot help."""
    return isinstance(exc, asyncpg.PostgresError) and not is_transient(exc)


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """``shared/db/migrations/NNN_name.sql`` in version order."""
    folder = resources.files("shared.db").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file name must be NNN_name.sql: {entry.name}")
        found.append(Migration(match.group(1), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return found


async def apply_migrations(
    dsn: str, *, connect_timeout: float = 10.0, timeout: float = 300.0
) -> None:
    """Apply pending migrations in order, each in its own transaction.

    Safe to run from several processes at once: a session advisory lock serialises
    them, and whoever comes second finds the work done. An applied migration whose
    file has since changed is an error (a new migration is the way to change schema).
    """
    migrations = load_migrations()
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(
        dsn,
        timeout=connect_timeout,
        command_timeout=timeout,
        server_settings={"application_name": "jetty-migrate"},
    )
    try:
        # Taken before creating schema_migrations: two concurrent
        # CREATE TABLE IF NOT EXISTS can still collide on the catalog. A session lock
        # is released when the connection closes, also when it breaks mid-way.
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version  text PRIMARY KEY,
                name     text NOT NULL,
                checksum text NOT NULL
            )
            """
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: (r["name"], r["checksum"]) for r in rows}
        for migration in migrations:
            if migration.version in applied:
                name, checksum = applied[migration.version]
                if checksum != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} changed after it was applied "
                        f"(as {name}); add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %s", migration.name)
    finally:
        await _close(conn, connect_timeout)


async def _close(conn: asyncpg.Connection[asyncpg.Record], timeout: float) -> None:
    try:
        await conn.close(timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("closing the migration connection failed (%s); terminating it", exc)
        conn.terminate()
