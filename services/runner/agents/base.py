"""The port every agent adapter implements: how to start the CLI against our
gateway, and how to read its JSON event stream as steps of one shape.

An adapter knows nothing of sandboxes, NATS or the object store: it is given
where things are *inside* the sandbox (:class:`AgentSpec`) and answers with a
command (:class:`AgentCommand`). Its :class:`StreamParser` is fed the CLI's
stdout line by line and returns :class:`ParsedStep` items, which the runner
numbers and publishes as ``runbook.step`` events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.events.runbook import AgentOutcome, AgentStepKind


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One run, as the agent inside the sandbox sees it."""

    model: str
    #: the system message(s): goes in through the CLI's system-prompt mechanism
    runbook: str
    #: the user message(s): the CLI's prompt
    prompt: str
    #: base URL of the gateway as reachable from inside the sandbox, no trailing
    #: slash, no path (``http://127.0.0.1:18080``)
    gateway_url: str
    #: the run-scoped token (reaches only the gateway's model endpoints)
    token: str
    #: absolute path of the workspace inside the sandbox (the agent's cwd)
    workspace: str
    #: absolute path of $HOME inside the sandbox (writable, private to the run)
    home: str
    #: the folder holding the installed CLIs' ``node_modules`` inside the sandbox
    agents_dir: str


@dataclass(frozen=True, slots=True)
class AgentCommand:
    argv: list[str]
    #: the whole environment of the agent (the sandbox starts from an empty one)
    env: dict[str, str]
    #: files to create before start, by path relative to $HOME (settings files)
    home_files: dict[str, bytes] = field(default_factory=dict)
    #: bytes for the agent's stdin (None: stdin is /dev/null)
    stdin: bytes | None = None


@dataclass(frozen=True, slots=True)
class ParsedStep:
    """One agent step before the runner gives it an index and publishes it.

    Times are epoch seconds: ``started`` when the step began (a tool call: when the
    agent asked for it; a tool result: when the call was issued), ``ended`` when the
    line that completed it was read.
    """

    kind: AgentStepKind
    started: float
    ended: float
    text: str | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None
    tool_input: dict[str, Any] | None = None
    is_error: bool = False


class StreamParser(Protocol):
    def feed(self, line: str, now: float) -> list[ParsedStep]:
        """One line of the CLI's stdout (without the newline). Lines that are not
        JSON events are ignored (return [])."""

    def outcome(self, exit_code: int | None) -> AgentOutcome:
        """What the agent reported at its end (after the last line)."""

    def progress_text(self, step: ParsedStep) -> str | None:
        """The human-readable progress line for a step, streamed to the client as
        chat content (None: nothing visible)."""


class AgentAdapter(Protocol):
    #: ``claude-code``, ``codex`` or ``gemini-cli``
    name: str

    def command(self, spec: AgentSpec) -> AgentCommand: ...

    def parser(self) -> StreamParser: ...


def clip_output(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (never inside a character), with
    a note of how much was left out: tool outputs can be megabytes."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text
    kept = raw[:limit].decode("utf-8", "ignore")
    return f"{kept}\n… [{len(raw) - limit} more bytes]"
