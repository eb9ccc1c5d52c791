"""PostgreSQL adapters shared by the recorder (writes) and the gateway (reads)."""

from shared.db.pool import (
    DatabaseError,
    MigrationError,
    apply_migrations,
    create_pool,
    is_refused_data,
    is_transient,
)

__all__ = [
    "DatabaseError",
    "MigrationError",
    "apply_migrations",
    "create_pool",
    "is_refused_data",
    "is_transient",
]
