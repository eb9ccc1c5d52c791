"""A first start as root from a private directory (a clone in ``/root/jetty``,
mode 0700): PostgreSQL's unprivileged user cannot enter it, so the cluster lives
where that user can reach, and the private directory says where."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jetty_cli import pguser
from jetty_cli.embedded import EmbeddedPostgres

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root switches PostgreSQL's user")


@pytest.fixture
def private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jetty-private-"))
    path.chmod(0o700)
    yield path
    shutil.rmtree(path)


def test_postgres_starts_from_a_private_directory_and_says_where(private_dir: Path) -> None:
    wanted = private_dir / "checkout" / ".jetty" / "pg"
    pg = EmbeddedPostgres(wanted, durable=False)
    try:
        assert pg.relocated_from == wanted
        assert not pg.base_dir.is_relative_to(private_dir)
        pg.start()
        assert pg.psql("SELECT 41 + 1", database=pg.database) == "42"
        note = (wanted / pguser.LOCATION_FILE).read_text()
        assert note.splitlines()[0] == str(pg.base_dir)
        # The data is the server user's alone; nothing on the way was loosened.
        user = pguser.server_user()
        assert user is not None
        assert pg.data_dir.stat().st_uid == user.uid
        assert pg.base_dir.stat().st_mode & 0o777 == 0o700
        assert private_dir.stat().st_mode & 0o777 == 0o700
        pg.stop()

        # A second start of the same state directory finds the same cluster.
        again = EmbeddedPostgres(wanted, durable=False)
        assert again.base_dir == pg.base_dir
        assert again.initialised
        again.start()
        assert again.database_exists(pg.database)
        again.stop()
    finally:
        pg.stop()
        shutil.rmtree(pg.base_dir, ignore_errors=True)


def test_a_reachable_directory_is_used_as_it_is() -> None:
    base = Path(tempfile.mkdtemp(prefix="jetty-open-"))
    try:
        base.chmod(0o711)
        pg = EmbeddedPostgres(base / "pg", durable=False)
        assert pg.relocated_from is None
        assert pg.base_dir == base / "pg"
    finally:
        shutil.rmtree(base)
