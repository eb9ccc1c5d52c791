"""Fixtures on real infrastructure: a NATS server with JetStream, a PostgreSQL
server, and whole stacks of service processes. All take free ports, so a test
run, a benchmark and a `make up` stack never collide.

Session scope (started once, on first use):

* ``nats_server`` / ``nats_url`` - an :class:`EmbeddedNats` (tests may stop and start it)
* ``pg_server`` - an :class:`EmbeddedPostgres` (fsync off; tests may stop and start it)
* ``stack_factory`` - call it to start an isolated :class:`TestStack` (own NATS,
  fresh database; ``own_postgres=True`` for a private Postgres, ``env=`` for
  e.g. ``OPENAI_BASE_URL``)
* ``stack`` - one shared stack with the mock provider only

Function scope: ``database_url`` (fresh empty database) and
``migrated_database_url`` (the same with migrations applied).

After every test, servers and services that a test stopped are started again,
and a service that died on its own fails the test; a failing test that used a
stack shows the tail of each service log.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from jetty_cli.embedded import EmbeddedNats, EmbeddedPostgres
from jetty_cli.testing import StackFactory, TestStack, new_database, traversable_tmpdir
from tests.k8s_support import k8s_cluster, report_skipped  # noqa: F401 (the cluster tier)

# Session objects the guard below keeps healthy between tests.
_SERVERS: list[EmbeddedNats | EmbeddedPostgres] = []
_FACTORIES: list[StackFactory] = []


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    root = tmp_path_factory.mktemp("nats")
    server = EmbeddedNats(root / "store", log_path=root / "nats.log")
    with server:
        _SERVERS.append(server)
        yield server
    _SERVERS.remove(server)


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    base = traversable_tmpdir("jetty-test-pg-")
    server = EmbeddedPostgres(base, durable=False)
    try:
        with server:
            _SERVERS.append(server)
            yield server
        _SERVERS.remove(server)
    finally:
        shutil.rmtree(base)


@pytest.fixture
def database_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """DSN of a fresh, empty database (no migrations)."""
    name, dsn = new_database(pg_server, migrate=False)
    yield dsn
    if not pg_server.running:  # the test stopped it
        pg_server.start()
    pg_server.drop_database(name)


@pytest.fixture
async def migrated_database_url(database_url: str) -> str:
    """DSN of a fresh database with every migration applied."""
    from shared.db.pool import apply_migrations

    await apply_migrations(database_url)
    return database_url


@pytest.fixture(scope="session")
def stack_factory(
    tmp_path_factory: pytest.TempPathFactory, pg_server: EmbeddedPostgres
) -> Iterator[StackFactory]:
    factory = StackFactory(tmp_path_factory.mktemp("stacks"), lambda: pg_server)
    _FACTORIES.append(factory)
    try:
        yield factory
    finally:
        _FACTORIES.remove(factory)
        factory.close_all()


@pytest.fixture(scope="session")
def stack(stack_factory: StackFactory) -> TestStack:
    """The shared stack: gateway, proxy and recorder on their own NATS and a
    fresh migrated database; ``stack.base_url``, ``stack.token``, ``stack.collection``."""
    return stack_factory()


@pytest.fixture(autouse=True)
def _infrastructure_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    crashes = []
    for factory in _FACTORIES:
        for live in factory.live():
            crashes += [
                f"{s.name} exited with code {s.returncode}\n{live.log_tails((s.name,))}"
                for s in live.crashed()
            ]
            live.heal()
    for server in _SERVERS:
        if not server.running:
            server.start()
    if crashes:
        pytest.fail("a service died during the test:\n" + "\n".join(crashes), pytrace=False)


@pytest.fixture(autouse=True)
async def _background_exception_guard() -> AsyncIterator[None]:
    """An exception nobody retrieved in a background task fails the test."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield
    finally:
        loop.set_exception_handler(previous)
    if seen:
        described = "\n".join(f"{c.get('message')}: {c.get('exception')!r}" for c in seen)
        pytest.fail(f"unhandled exception in the event loop:\n{described}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    uses_stack = {"stack", "stack_factory"} & set(getattr(item, "fixturenames", ()))
    if report.failed and uses_stack:
        for factory in _FACTORIES:
            for live in factory.live():
                report.sections.append((f"service logs of {live.base_url}", live.log_tails()))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    report_skipped(terminalreporter)
