"""``jetty trajectories ls|show|tail``: the collection's trajectories, one in
full, or a running one followed to its end (its events URL, the same chunks as
``jetty run`` shows)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import urlencode

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from jetty_cli.client import Api, CliError, resolve_target
from jetty_cli.progress_view import ProgressView, RunPicture, money, status_text
from jetty_cli.run_cmd import follow_run

TERMINAL = ("completed", "failed", "cancelled")


def _console() -> Console:
    # Piped, nothing is truncated for an 80-column guess.
    plain = Console()
    return plain if plain.is_terminal else Console(width=250)


def _print_json(doc: Any) -> None:
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def run_ls(args: argparse.Namespace) -> int:
    query = {
        key: value
        for key, value in {
            "task": args.task,
            "status": args.status,
            "model": args.model,
            "since": args.since,
            "limit": args.limit,
        }.items()
        if value is not None
    }

    async def go() -> Any:
        async with Api(resolve_target(args)) as api:
            return await api.json("GET", "/api/v1/trajectories?" + urlencode(query))

    page = asyncio.run(go())
    if args.json:
        _print_json(page)
        return 0
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("id", "created", "task", "mode", "status", "model", "tokens", "cost", "latency"):
        right = column in ("tokens", "cost", "latency")
        table.add_column(column, justify="right" if right else "left", no_wrap=column != "task")
    for row in page.get("data", []):
        usage = row.get("usage") or {}
        table.add_row(
            row["trajectory_id"],
            (row.get("created_at") or "")[5:19].replace("T", " "),
            row.get("task") or "",
            row.get("mode") or "",
            status_text(row.get("status") or "?"),
            row.get("model") or "",
            f"{usage.get('total_tokens', 0):,}" if usage else "—",
            money(row.get("cost_usd")),
            _ms(row.get("latency_ms")),
        )
    console = _console()
    if not page.get("data"):
        console.print("[dim]no trajectories[/]")
    else:
        console.print(table)
    if page.get("has_more"):
        console.print(
            f"[dim]more: --since or a smaller filter (next cursor {page['next_cursor']})[/]"
        )
    return 0


def _step_line(step: dict[str, Any]) -> str:
    kind = str(step.get("kind", "?"))
    if step.get("tool_name"):
        return f"{kind} {step['tool_name']}"
    if step.get("text"):
        text = " ".join(str(step["text"]).split())
        return f"{kind} {text[:90]}{'…' if len(text) > 90 else ''}"
    if step.get("model"):
        usage = step.get("usage") or {}
        return f"{kind} {step['model']} ({usage.get('total_tokens', 0)} tokens)"
    return kind


def run_show(args: argparse.Namespace) -> int:
    async def go() -> Any:
        async with Api(resolve_target(args)) as api:
            return await api.json("GET", f"/api/v1/trajectories/{args.trajectory_id}")

    view = asyncio.run(go())
    if args.json:
        _print_json(view)
        return 0
    console = _console()
    usage = view.get("usage") or {}
    console.print(Text(view["trajectory_id"], style="bold"), status_text(view.get("status", "?")))
    facts = [
        ("collection", view.get("collection")),
        ("task", view.get("task")),
        ("mode", view.get("mode")),
        ("agent", view.get("agent")),
        ("model", view.get("model")),
        ("created", view.get("created_at")),
        ("completed", view.get("completed_at")),
        ("tokens", f"{usage.get('total_tokens', 0):,}" if usage else None),
        ("cost", money(view.get("cost_usd"))),
        ("latency", _ms(view.get("latency_ms"))),
    ]
    grid = Table.grid(padding=(0, 2))
    for name, value in facts:
        if value is not None:
            grid.add_row(Text(name, style="dim"), str(value))
    console.print(grid)
    steps = view.get("steps") or []
    if steps:
        console.print(Text(f"\n{len(steps)} steps", style="bold"))
        for step in steps:
            console.print(f"  {step.get('index', '?'):>3}  {_step_line(step)}", highlight=False)
    artifacts = view.get("artifacts") or []
    if artifacts:
        console.print(Text("\nartifacts", style="bold"))
        for artifact in artifacts:
            console.print(f"  {artifact.get('path')}  [dim]{artifact.get('size_bytes', '?')} B[/]")
    return 0


def run_tail(args: argparse.Namespace) -> int:
    async def go() -> int:
        console = Console()
        picture = RunPicture(trajectory_id=args.trajectory_id)
        async with Api(resolve_target(args)) as api:
            view = await api.json("GET", f"/api/v1/trajectories/{args.trajectory_id}")
            if view.get("mode") != "runbook":
                raise CliError(
                    f"{args.trajectory_id} is a {view.get('mode')} trajectory: nothing to "
                    f"follow (jetty trajectories show {args.trajectory_id})"
                )
            with ProgressView(console, picture, quiet=args.json) as progress:
                path = f"/api/v1/trajectories/{args.trajectory_id}/events"
                await follow_run(api, picture, progress, "GET", path)
        if args.json:
            _print_json(picture.final)
        else:
            console.print(status_text(picture.status), f"[dim]{picture.trajectory_id}[/]")
        return 0 if picture.status == "completed" else 1

    return asyncio.run(go())
