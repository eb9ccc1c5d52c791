"""A small HTTP/1.1 load generator on raw asyncio streams.

Kept deliberately thin (keep-alive connections, Content-Length and chunked
bodies) so that its own cost is the same whichever server it measures: the
benchmark compares a direct call with the same call through the gateway, and
only the difference matters.

Two shapes of load:

* :func:`run` — closed loop: ``concurrency`` connections, each sending its next
  request when the previous answer is in. It measures throughput; its latency
  hides a stalled server (a stalled connection sends nothing, so the requests it
  would have sent are never timed: coordinated omission).
* :func:`run_open` — open loop at a constant rate (wrk2's method): request ``i``
  is due at ``start + i / rate`` whatever the server does, and its latency runs
  from that scheduled time, so a stall shows up in every request it delays. A
  pool of keep-alive connections, grown when every connection is busy at a due
  time, carries the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds
    ttfb: list[float] = field(default_factory=list)  # time to first body byte of data
    errors: int = 0
    elapsed: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    def pct(self, p: float, values: list[float] | None = None) -> float:
        data = sorted(values if values is not None else self.latencies)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k] * 1000

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.latencies) * 1000 if self.latencies else float("nan")


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader, started: float) -> tuple[int, float]:
    """Read one response; return (status, seconds to the first body bytes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = head.decode("latin-1").lower()
    first: float | None = None
    if "transfer-encoding: chunked" in headers:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
            if first is None:
                first = time.perf_counter() - started
    else:
        marker = "content-length:"
        idx = headers.find(marker)
        length = int(headers[idx + len(marker) :].split("\r\n", 1)[0]) if idx >= 0 else 0
        if length:
            await reader.readexactly(length)
        first = time.perf_counter() - started
    return status, first if first is not None else time.perf_counter() - started


async def _worker(
    host: str, port: int, request: bytes, deadline: float, count: list[int], result: Result
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while count[0] > 0 and time.perf_counter() < deadline:
            count[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            status, first = await _read_response(reader, started)
            elapsed = time.perf_counter() - started
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if status == 200:
                result.latencies.append(elapsed)
                result.ttfb.append(first)
            else:
                result.errors += 1
    finally:
        writer.close()


async def run(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    requests: int,
    max_seconds: float = 60.0,
    warmup: int = 50,
) -> Result:
    request = build_request(host, port, path, body, headers)
    if warmup:
        await run(
            host,
            port,
            path,
            body,
            headers,
            concurrency=concurrency,
            requests=warmup,
            max_seconds=max_seconds,
            warmup=0,
        )
    result = Result()
    count = [requests]
    started = time.perf_counter()
    deadline = started + max_seconds
    await asyncio.gather(
        *(_worker(host, port, request, deadline, count, result) for _ in range(concurrency))
    )
    result.elapsed = time.perf_counter() - started
    return result


#: how early :func:`run_open` may send a request (a fraction of its timer's granularity)
EARLY = 0.0005


@dataclass
class OpenResult:
    """One open-loop run. Latencies are from each request's scheduled send time."""

    rate: float  #: requests/s asked for
    duration: float  #: seconds of scheduled sends
    scheduled: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, from the scheduled time
    service: list[float] = field(default_factory=list)  # seconds, from the actual send
    errors: int = 0  #: non-200 answers and broken connections
    unsent: int = 0  #: still waiting for a connection when the run gave up
    late: int = 0  #: sent more than ``late_after`` after their scheduled time
    late_after: float = 0.001
    elapsed: float = 0.0  #: from the first scheduled send to the last answer
    connections: int = 0  #: the pool's size at the end
    statuses: dict[int, int] = field(default_factory=dict)

    def pct(self, p: float, values: list[float] | None = None) -> float:
        """Percentile ``p`` in ms (nearest rank) of the latencies, or of ``values``."""
        data = sorted(values if values is not None else self.latencies)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, math.ceil(p / 100 * len(data)) - 1))
        return data[k] * 1000

    @property
    def achieved(self) -> float:
        """Answers (200) per second over the run, answers after the last send included."""
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def summary(self) -> str:
        return (
            f"{self.rate:,.0f} req/s asked, {self.achieved:,.0f} achieved: "
            f"{len(self.latencies)} ok, {self.errors} errors, {self.unsent} unsent, "
            f"{self.late} late (> {self.late_after * 1000:.0f} ms); from the scheduled time "
            f"p50 {self.pct(50):.2f} ms, p99 {self.pct(99):.2f} ms, "
            f"p99.9 {self.pct(99.9):.2f} ms; {self.connections} connections"
        )


async def run_open(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    rate: float,
    duration: float,
    connections: int | None = None,
    max_connections: int = 512,
    late_after: float = 0.001,
    drain_timeout: float = 30.0,
) -> OpenResult:
    """Send ``rate * duration`` requests, request ``i`` due at ``start + i / rate``.

    The pool starts with ``connections`` keep-alive connections (default: enough
    for the rate at 20 ms per answer, at least 2) and gains one whenever a request
    is due and every connection is busy, up to ``max_connections``; past that,
    due requests wait in order and count as ``late``. Answers still missing
    ``drain_timeout`` seconds after the last scheduled send are given up on
    (in flight: errors; never sent: ``unsent``).
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    request = build_request(host, port, path, body, headers)
    total = max(1, round(rate * duration))
    result = OpenResult(rate=rate, duration=duration, scheduled=total, late_after=late_after)
    due: asyncio.Queue[float | None] = asyncio.Queue()
    idle = [0]  # connections free to take a due request (counting queued ones as taken)
    workers: list[asyncio.Task[None]] = []
    last_answer = [0.0]

    Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]

    async def worker(opened: Connection | None) -> None:
        reader, writer = opened if opened is not None else (None, None)
        try:
            while True:
                scheduled = await due.get()
                idle[0] -= 1
                if scheduled is None:
                    return
                try:
                    if writer is None or reader is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    sent = time.perf_counter()
                    if sent - scheduled > late_after:
                        result.late += 1
                    writer.write(request)
                    status, _ = await _read_response(reader, sent)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                    idle[0] += 1
                    continue
                done = time.perf_counter()
                idle[0] += 1
                last_answer[0] = max(last_answer[0], done)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 200:
                    # A request sent a little early counts from its send, never less.
                    result.latencies.append(done - min(scheduled, sent))
                    result.service.append(done - sent)
                else:
                    result.errors += 1
        finally:
            if writer is not None:
                writer.close()

    def grow(opened: Connection | None = None) -> None:
        idle[0] += 1  # free from the start: it takes the next due request
        workers.append(asyncio.create_task(worker(opened)))

    initial = connections if connections is not None else max(2, math.ceil(rate * 0.02))
    # The first connections are open before the clock starts; later ones open on demand.
    for opened in await asyncio.gather(
        *(asyncio.open_connection(host, port) for _ in range(min(initial, max_connections)))
    ):
        grow(opened)
    start = time.perf_counter() + 0.01
    interval = 1.0 / rate
    i = 0
    while i < total:
        # asyncio's timers wake up to 1 ms late (epoll counts in whole ms): a request
        # due within EARLY of now goes out now, and the next wake-up aims EARLY before
        # its due time, so sends land within about half a millisecond either side.
        horizon = time.perf_counter() + EARLY
        while i < total and start + i * interval <= horizon:
            if idle[0] - due.qsize() <= 0 and len(workers) < max_connections:
                grow()
            due.put_nowait(start + i * interval)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, start + i * interval - EARLY - time.perf_counter()))
    for _ in workers:
        due.put_nowait(None)
    _, pending = await asyncio.wait(workers, timeout=drain_timeout)
    unsent = sum(1 for _ in range(due.qsize()) if due.get_nowait() is not None)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    result.unsent = unsent
    result.errors += len(pending)  # each was waiting for an answer
    result.connections = len(workers)
    result.elapsed = max(duration, last_answer[0] - start)
    return result
