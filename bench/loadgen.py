"""A small HTTP/1.1 load generator on raw asyncio streams.

Kept deliberately thin (keep-alive connections, Content-Length and chunked
bodies) so that its own cost is the same whichever server it measures: the
benchmark compares a direct call with the same call through the gateway, and
only the difference matters.
"""

from __future__ import annotations

import asyncio
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
