"""How a runbook's progress looks in a terminal: the agent's steps scroll by, one
line each, above a status line (status, elapsed time, tokens and cost so far)
that ``rich`` keeps redrawing at the bottom. Without a terminal (a pipe, CI) the
steps are printed as plain lines and the status line is left out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def money(value: float | None) -> str:
    return "—" if value is None else f"${value:,.4f}"


def status_text(status: str) -> Text:
    return Text(status, style=f"bold {STATUS_STYLE.get(status, 'white')}")


@dataclass
class RunPicture:
    """What the stream has told us so far."""

    trajectory_id: str | None = None
    status: str = "pending"
    agent: str = ""
    model: str = ""
    task: str = ""
    tokens: int | None = None
    cost_usd: float | None = None
    steps: int = 0
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    last_event_id: str | None = None
    started: float = field(default_factory=time.monotonic)

    def apply(self, chunk: dict[str, Any]) -> list[str]:
        """Fold one chunk in; returns the lines of progress it carries."""
        meta = chunk.get("jetty_metadata")
        if isinstance(meta, dict):
            self.trajectory_id = meta.get("trajectory_id", self.trajectory_id)
            self.status = meta.get("status", self.status)
            self.agent = meta.get("agent") or self.agent
            self.model = meta.get("model") or self.model
            self.task = meta.get("task") or self.task
            if "artifacts" in meta:  # the last chunk: the run's result
                self.final = meta
                usage = meta.get("usage") or {}
                self.tokens = usage.get("total_tokens", self.tokens)
                self.cost_usd = meta.get("cost_usd", self.cost_usd)
        jetty = chunk.get("jetty") or {}
        kind = jetty.get("type")
        if kind == "status":
            self.status = jetty.get("status", self.status)
        elif kind == "step":
            self.steps += 1
        elif kind == "artifact":
            self.artifacts.append(jetty.get("artifact", {}))
        lines: list[str] = []
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content") or ""
            lines += [line for line in content.splitlines() if line.strip()]
        return lines

    def status_line(self) -> Table:
        elapsed = time.monotonic() - self.started
        grid = Table.grid(padding=(0, 2))
        spinner: Any = Spinner("dots") if self.status in ("pending", "running") else Text("•")
        tokens = "—" if self.tokens is None else f"{self.tokens:,}"
        grid.add_row(
            spinner,
            status_text(self.status),
            Text(f"{elapsed:,.1f}s", style="dim"),
            Text(f"{self.steps} steps"),
            Text(f"{tokens} tokens"),
            Text(money(self.cost_usd)),
            Text(self.trajectory_id or "", style="dim"),
        )
        return grid


class ProgressView:
    """A live view on a terminal, plain lines elsewhere; ``quiet`` shows nothing."""

    def __init__(self, console: Console, picture: RunPicture, *, quiet: bool = False) -> None:
        self.console = console
        self.picture = picture
        self.quiet = quiet
        self._live: Live | None = None

    def __enter__(self) -> ProgressView:
        if not self.quiet and self.console.is_terminal:
            self._live = Live(
                self.picture.status_line(),
                console=self.console,
                refresh_per_second=8,
                transient=True,
                get_renderable=self.picture.status_line,
            )
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def pause(self) -> None:
        """Stop redrawing (before a prompt); :meth:`resume` starts again."""
        if self._live is not None:
            self._live.stop()

    def resume(self) -> None:
        if self._live is not None:
            self._live.start()

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(Text("  ") + Text.from_markup(escape(text)), highlight=False)

    def note(self, markup: str) -> None:
        if not self.quiet:
            self.console.print(markup, highlight=False)
