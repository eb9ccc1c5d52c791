"""``jetty upload`` and ``jetty run``: put files where a runbook can read them, run a
runbook with live progress, and bring its artifacts home.

``jetty run`` streams the run (``stream: true``); if the connection drops it
reconnects to ``GET /api/v1/trajectories/{id}/events`` with the last event id it
saw, so nothing is missed. Ctrl-C asks whether to cancel the run (no: keep
watching; a second Ctrl-C leaves it running and exits 130). The exit code is 0
for ``completed``, 1 for ``failed``/``cancelled``/errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from jetty_cli.client import Api, CliError, resolve_target
from jetty_cli.progress_view import ProgressView, RunPicture, money, status_text

RECONNECTS = 5
# Files this large get a progress bar.
_BAR_FROM = 1024 * 1024


async def upload_files(
    api: Api, paths: list[Path], collection: str | None, console: Console, *, quiet: bool = False
) -> list[dict[str, Any]]:
    for path in paths:
        if not path.is_file():
            raise CliError(f"{path}: no such file")
    uploaded = []
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
        disable=quiet or not console.is_terminal,
    ) as bars:
        for path in paths:
            size = path.stat().st_size
            task = bars.add_task(path.name, total=size, visible=size >= _BAR_FROM)
            uploaded.append(await api.upload(path, collection, partial(bars.advance, task)))
    return uploaded


def run_upload(args: argparse.Namespace) -> int:
    async def go() -> int:
        console = Console(stderr=True)
        async with Api(resolve_target(args)) as api:
            files = await upload_files(api, list(args.files), args.collection, console)
        for item in files:
            if args.json:
                print(orjson.dumps(item).decode())
            else:
                print(item["path"])
        return 0

    return asyncio.run(go())


class _Detach(Exception):
    pass


class _Interrupts:
    """SIGINT while a run goes on: the first asks, a second while asking leaves."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.detach = asyncio.Event()

    def __call__(self) -> None:
        if self.asked.is_set():
            self.detach.set()
        self.asked.set()


def _read_line(console: Console, prompt: str) -> asyncio.Future[str]:
    """``input()`` on a daemon thread: a process leaving mid-prompt does not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            answer = console.input(prompt)
        except (EOFError, KeyboardInterrupt, OSError):
            answer = ""

        def give() -> None:
            if not future.done():
                future.set_result(answer)

        with contextlib.suppress(RuntimeError):  # the loop may be gone
            loop.call_soon_threadsafe(give)

    threading.Thread(target=read, daemon=True).start()
    return future


async def _ask_cancel(
    api: Api, picture: RunPicture, view: ProgressView, console: Console, interrupts: _Interrupts
) -> None:
    view.pause()
    answer_future = _read_line(console, f"Cancel run {picture.trajectory_id}? \\[y/N] ")
    detach = asyncio.ensure_future(interrupts.detach.wait())
    pending: set[asyncio.Future[Any]] = {answer_future, detach}
    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    detach.cancel()
    if interrupts.detach.is_set():
        raise _Detach
    answer = answer_future.result()
    view.resume()
    if answer.strip().lower() in ("y", "yes") and picture.trajectory_id:
        result = await api.json("POST", f"/api/v1/trajectories/{picture.trajectory_id}/cancel")
        view.note(f"[magenta]cancel requested[/] ({result.get('status', '?')})")


async def follow_run(
    api: Api,
    picture: RunPicture,
    view: ProgressView,
    method: str,
    path: str,
    **kwargs: Any,
) -> None:
    """Read the run's chunks until ``[DONE]``, reconnecting to its events URL with
    the last id seen when the connection is lost."""
    attempts = 0
    while True:
        try:
            async for event_id, chunk in api.sse(method, path, **kwargs):
                if chunk is None:
                    return
                picture.last_event_id = event_id or picture.last_event_id
                for line in picture.apply(chunk):
                    view.line(line)
            if picture.final is not None:
                return
            raise CliError("the progress stream ended early")
        except CliError as exc:
            attempts += 1
            if picture.trajectory_id is None or attempts > RECONNECTS or "HTTP " in str(exc):
                raise
            view.note(f"[yellow]connection lost ({exc}); resuming[/]")
            await asyncio.sleep(min(2.0**attempts / 4, 5.0))
            method = "GET"
            path = f"/api/v1/trajectories/{picture.trajectory_id}/events"
            headers = {"Last-Event-ID": picture.last_event_id or "open"}
            kwargs = {"headers": headers}


async def _poll_usage(api: Api, picture: RunPicture) -> None:
    """Tokens and cost so far, from the trajectory (the stream has them only at the end)."""
    while picture.final is None:
        await asyncio.sleep(2.0)
        if picture.trajectory_id is None:
            continue
        with contextlib.suppress(CliError):
            view = await api.json("GET", f"/api/v1/trajectories/{picture.trajectory_id}")
            usage = view.get("usage") or {}
            if picture.final is None:
                picture.tokens = usage.get("total_tokens", picture.tokens)
                picture.cost_usd = view.get("cost_usd", picture.cost_usd)


async def download_artifacts(
    api: Api, picture: RunPicture, out: Path
) -> list[tuple[str, Path, int]]:
    final = picture.final or {}
    done = []
    for artifact in final.get("artifacts", []):
        rel = Path(artifact["path"])
        if rel.is_absolute() or ".." in rel.parts:
            continue  # never write outside the folder
        dest = out / rel
        tid = picture.trajectory_id
        size = await api.download(f"/api/v1/trajectories/{tid}/artifacts/{artifact['path']}", dest)
        done.append((artifact["path"], dest, size))
    return done


def _request_body(args: argparse.Namespace, file_paths: list[str]) -> dict[str, Any]:
    try:
        runbook = args.runbook.read_text()
    except OSError as exc:
        raise CliError(f"{args.runbook}: {exc.strerror or exc}") from None
    jetty: dict[str, Any] = {
        "runbook": True,
        "agent": args.agent,
        "task": args.task,
        "file_paths": file_paths,
    }
    if args.collection:
        jetty["collection"] = args.collection
    if args.timeout:
        jetty["timeout_s"] = args.timeout
    return {
        "model": args.model,
        "stream": True,
        "messages": [
            {"role": "system", "content": runbook},
            {"role": "user", "content": args.prompt or "Carry out the runbook."},
        ],
        "jetty": jetty,
    }


def _summary(console: Console, picture: RunPicture, files: list[tuple[str, Path, int]]) -> None:
    final = picture.final or {}
    console.print()
    console.print(status_text(picture.status), f"[dim]{picture.trajectory_id}[/]")
    usage = final.get("usage") or {}
    timing = final.get("timing") or {}
    run_ms = timing.get("total_ms")
    console.print(
        f"  {usage.get('total_tokens', 0):,} tokens · {money(final.get('cost_usd'))}"
        + (f" · {run_ms / 1000:,.1f}s" if run_ms else "")
    )
    error = final.get("error")
    if error:
        console.print(f"  [red]{error.get('code') or error.get('type')}[/]: {error.get('message')}")
    if files:
        table = Table(show_header=False, box=None, padding=(0, 2))
        for path, dest, size in files:
            table.add_row(f"  {path}", f"{size:,} B", f"[dim]{dest}[/]")
        console.print(table)


def run_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    console = Console(stderr=args.json)
    picture = RunPicture(agent=args.agent, model=args.model, task=args.task)
    interrupts = _Interrupts()
    loop = asyncio.get_running_loop()
    async with Api(resolve_target(args)) as api:
        uploaded = await upload_files(
            api, list(args.file), args.collection, console, quiet=args.json
        )
        body = _request_body(args, [u["path"] for u in uploaded])
        loop.add_signal_handler(signal.SIGINT, interrupts)
        poller = asyncio.create_task(_poll_usage(api, picture))
        try:
            with ProgressView(console, picture, quiet=args.json) as view:
                follow = asyncio.create_task(
                    follow_run(api, picture, view, "POST", "/v1/chat/completions", json=body)
                )
                while not follow.done():
                    asked = asyncio.create_task(interrupts.asked.wait())
                    await asyncio.wait({follow, asked}, return_when=asyncio.FIRST_COMPLETED)
                    if interrupts.asked.is_set() and not follow.done():
                        try:
                            await _ask_cancel(api, picture, view, console, interrupts)
                        except _Detach:
                            follow.cancel()
                            raise
                        finally:
                            interrupts.asked.clear()
                    asked.cancel()
                await follow
        except _Detach:
            console.print()
            where = f" ({picture.trajectory_id} keeps running)" if picture.trajectory_id else ""
            print(f"jetty: detached{where}", file=sys.stderr)
            return 130
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            poller.cancel()
        out = args.out or Path("jetty-runs") / (picture.trajectory_id or "run")
        files = await download_artifacts(api, picture, out)
    if args.json:
        result = dict(picture.final or {})
        result["downloaded"] = [{"path": p, "file": str(d), "size": s} for p, d, s in files]
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        _summary(console, picture, files)
    return 0 if picture.status == "completed" else 1
