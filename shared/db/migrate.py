"""``python -m shared.db.migrate``: apply pending migrations to ``JETTY_DATABASE_URL``
and exit (the Kubernetes migrations Job, deploy/k8s/base/migrations.yaml)."""

from __future__ import annotations

import asyncio
import sys

from shared.db.pool import apply_migrations
from shared.settings import CommonSettings


def main() -> int:
    settings = CommonSettings()
    try:
        asyncio.run(apply_migrations(settings.database_url))
    except Exception as exc:
        print(f"migrations failed: {exc!r}", file=sys.stderr)
        return 1
    print("migrations applied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
