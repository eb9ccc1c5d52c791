"""``python -m bench.recorder``: can the recorder keep up with a constant event rate?

Publishes completion events straight to the JetStream events stream at a
constant rate (default 3,000/s for 20 s; the end event of a quick call, which
carries its request: one event and one trajectory per call, as the proxy
publishes them for a fast answer) while the recorder projects them, and
reports:

* **events/s**: what the recorder committed while the load ran, and over the
  whole run until the last trajectory was in PostgreSQL;
* **lag, publish to row visible**: for one event in ``sample_every``, the time
  from its publish until its ``trajectories`` row is readable (p50 / p99 / max);
* **consumer backlog**: the most messages the recorder's durable consumer had
  pending or unacknowledged at any moment, and that divided by the rate (how
  far behind, in seconds, the worst moment was);
* the recorder's CPU per event, when this module started it (``main``).

:func:`measure` works against any running recorder (the bench's own stack);
``main`` starts PostgreSQL, NATS and one recorder process. :func:`table_rows`
is the soak's check that no table grows beyond the trajectories themselves.
Numbers move with other load on the machine: the lag especially.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil
from nats.aio.client import Client as NATS

from jetty_cli.embedded import EmbeddedNats, EmbeddedPostgres
from jetty_cli.testing import traversable_tmpdir
from shared import subjects
from shared.bus import connect, encode_event, ensure_streams
from shared.events import Envelope, type_name
from shared.events.completion import CompletionFinished, ResponseRecord, Usage

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = "bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class RecorderResult:
    rate: float  #: events/s asked for
    published: int
    publish_seconds: float  #: how long publishing took (>= the planned duration)
    recorded: int
    #: events committed per second while the load ran
    events_per_s_under_load: float
    #: all events over the time from the first publish to the last row visible
    events_per_s_overall: float
    #: after the last publish, until the last row was visible
    drain_seconds: float
    lag_ms: list[float] = field(default_factory=list)
    max_backlog: int = 0
    recorder_cpu_ms_per_event: float | None = None
    postgresql_cpu_ms_per_event: float | None = None

    def pct(self, p: float) -> float:
        if not self.lag_ms:
            return float("nan")
        ordered = sorted(self.lag_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]

    @property
    def max_backlog_seconds(self) -> float:
        return self.max_backlog / self.rate if self.rate else 0.0

    def report(self) -> str:
        cpu = ""
        if self.recorder_cpu_ms_per_event is not None:
            cpu += f"; CPU per event: recorder {self.recorder_cpu_ms_per_event:.3f} ms"
        if self.postgresql_cpu_ms_per_event is not None:
            cpu += f", postgresql {self.postgresql_cpu_ms_per_event:.3f} ms"
        return (
            f"{self.published} events at {self.rate:,.0f}/s asked "
            f"({self.published / self.publish_seconds:,.0f}/s published), "
            f"{self.recorded} recorded: {self.events_per_s_under_load:,.0f} events/s under "
            f"load, {self.events_per_s_overall:,.0f}/s overall, drained "
            f"{self.drain_seconds:.2f} s after the last publish; lag publish -> row "
            f"p50 {self.pct(50):.0f} ms, p99 {self.pct(99):.0f} ms, max "
            f"{max(self.lag_ms, default=float('nan')):.0f} ms; consumer backlog max "
            f"{self.max_backlog} ({self.max_backlog_seconds:.2f} s){cpu}"
        )


def trajectory_id(run: str, i: int) -> str:
    return f"tr_bench_{run}_{i:08d}"


def call_event(run: str, i: int) -> bytes:
    """The end event of quick call ``i``: what the proxy publishes for a fast answer."""
    at = T0 + timedelta(milliseconds=i)
    data = CompletionFinished(
        task="bench",
        model="openai/gpt-4o-mini",
        provider="openai",
        stream=False,
        ingress="chat.completions",
        request={
            "model": "openai/gpt-4o-mini",
            "messages": [{"role": "user", "content": f"Summarise call {i} in one sentence."}],
        },
        response=ResponseRecord(content="A prince hesitates.", finish_reason="stop"),
        usage=Usage(prompt_tokens=14, completion_tokens=5, total_tokens=19),
        latency_ms=1.2,
        ttft_ms=1.0,
        received_at=at,
        ended_at=at + timedelta(milliseconds=1),
    )
    envelope = Envelope(
        id=f"ev_bench_{run}_{i:08d}",
        type=type_name(data),
        source="bench/recorder",
        time=at,
        trajectory_id=trajectory_id(run, i),
        collection=COLLECTION,
        data=data.model_dump(mode="json"),
    )
    return encode_event(envelope)


async def _recorded(conn: asyncpg.Connection[asyncpg.Record], run: str) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM trajectories WHERE collection = $1 AND trajectory_id LIKE $2",
        COLLECTION,
        f"tr_bench_{run}_%",
    )
    return count


async def measure(
    nats_url: str,
    database_url: str,
    *,
    rate: float = 3000.0,
    seconds: float = 20.0,
    sample_every: int = 50,
    drain_timeout: float = 120.0,
) -> RecorderResult:
    """Publish ``rate * seconds`` events at a constant rate to a running recorder's
    stream and measure it (see the module doc). Uses the events stream of
    ``nats_url`` and the projection in ``database_url``; its rows are trajectories
    of the collection ``bench``."""
    run = os.urandom(3).hex()
    total = int(rate * seconds)
    payloads = [call_event(run, i) for i in range(total)]  # encoded before the clock starts
    subject = subjects.event_subject(COLLECTION, "completion.finished")
    nc = await connect(nats_url, name="bench-recorder")
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        js = nc.jetstream(timeout=10)
        await ensure_streams(js)
        sent_at: dict[str, float] = {}
        lags: list[float] = []
        backlog = [0]
        publishing = [True]

        async def watch_rows() -> None:
            # Its own connection: the main task counts rows meanwhile.
            watcher = await asyncpg.connect(database_url, timeout=10)
            try:
                while publishing[0] or sent_at:
                    if sent_at:
                        rows = await watcher.fetch(
                            "SELECT trajectory_id FROM trajectories WHERE trajectory_id = ANY($1)",
                            list(sent_at),
                        )
                        seen = time.monotonic()
                        for row in rows:
                            lags.append((seen - sent_at.pop(row["trajectory_id"])) * 1000)
                    await asyncio.sleep(0.01)
            finally:
                await watcher.close(timeout=10)

        async def watch_consumer() -> None:
            while publishing[0]:
                try:
                    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.RECORDER_DURABLE)
                    backlog[0] = max(backlog[0], info.num_pending + info.num_ack_pending)
                except Exception:  # a missed sample is only a missed sample
                    pass
                await asyncio.sleep(0.1)

        base = await _recorded(conn, run)
        rows_task = asyncio.create_task(watch_rows())
        consumer_task = asyncio.create_task(watch_consumer())
        start = time.monotonic()
        # Constant rate in ticks of 5 ms: each tick publishes what is due by then.
        i = 0
        while i < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while i < due:
                await nc.publish(subject, payloads[i])
                if i % sample_every == 0:
                    sent_at[trajectory_id(run, i)] = time.monotonic()
                i += 1
            await nc.flush()
            await asyncio.sleep(0.005)
        published_at = time.monotonic()
        under_load = await _recorded(conn, run) - base
        deadline = published_at + drain_timeout
        recorded = under_load
        while recorded < total and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            recorded = await _recorded(conn, run) - base
        done_at = time.monotonic()
        publishing[0] = False
        consumer_task.cancel()
        try:
            await asyncio.wait_for(rows_task, 10)
        except TimeoutError:
            rows_task.cancel()
        return RecorderResult(
            rate=rate,
            published=total,
            publish_seconds=published_at - start,
            recorded=recorded,
            events_per_s_under_load=under_load / (published_at - start),
            events_per_s_overall=recorded / (done_at - start),
            drain_seconds=done_at - published_at,
            lag_ms=lags,
            max_backlog=backlog[0],
        )
    finally:
        await conn.close(timeout=10)
        await nc.drain()


async def table_rows(database_url: str) -> dict[str, int]:
    """Every table of the database and its row count (exact), for the soak: after
    N calls no table should hold more than the trajectories' own rows (a row per
    trajectory, step, event position), nothing per event besides."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        names = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        return {name: await conn.fetchval(f'SELECT count(*) FROM "{name}"') for name in names}
    finally:
        await conn.close(timeout=10)


def _cpu_seconds(*processes: psutil.Process) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # a backend that ended meanwhile
            continue
        total += times.user + times.system
    return total


def _postgres(pg: EmbeddedPostgres) -> list[psutil.Process]:
    """The postmaster and its children (backends, writers, WAL)."""
    root = psutil.Process(int((pg.data_dir / "postmaster.pid").read_text().split()[0]))
    return [root, *root.children(recursive=True)]


async def _wait_consumer(nats_url: str, timeout: float = 60.0) -> None:
    nc: NATS = await connect(nats_url, name="bench-recorder-wait")
    try:
        js = nc.jetstream(timeout=5)
        deadline = time.monotonic() + timeout
        while True:
            try:
                await js.consumer_info(subjects.EVENTS_STREAM, subjects.RECORDER_DURABLE)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=3000.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    root = traversable_tmpdir("jetty-bench-recorder-")
    pg = EmbeddedPostgres(root / "pg", durable=True).start()
    nats = EmbeddedNats(root / "nats").start()
    env = os.environ | {
        "JETTY_NATS_URL": nats.url,
        "JETTY_DATABASE_URL": pg.dsn,
        "JETTY_LOG_LEVEL": "WARNING",
    }
    recorder = subprocess.Popen([sys.executable, "-m", "services.recorder"], cwd=ROOT, env=env)
    try:
        asyncio.run(_wait_consumer(nats.url))
        process = psutil.Process(recorder.pid)
        print(f"recorder pid {recorder.pid}", flush=True)
        # A short warm-up (connections, plans), not counted.
        asyncio.run(measure(nats.url, pg.dsn, rate=500, seconds=1))
        postgres = _postgres(pg)
        before, before_pg = _cpu_seconds(process), _cpu_seconds(*postgres)
        result = asyncio.run(measure(nats.url, pg.dsn, rate=args.rate, seconds=args.seconds))
        per_event = 1000 / max(1, result.recorded)
        result.recorder_cpu_ms_per_event = (_cpu_seconds(process) - before) * per_event
        result.postgresql_cpu_ms_per_event = (_cpu_seconds(*postgres) - before_pg) * per_event
        print(result.report(), flush=True)
        rows = asyncio.run(table_rows(pg.dsn))
        print("rows per table: " + ", ".join(f"{k} {v}" for k, v in rows.items() if v))
    finally:
        recorder.terminate()
        recorder.wait(30)
        nats.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
