"""claude-code (``claude -p``) as a runbook agent.

The command runs the CLI headless with one JSON event per stdout line
(``--output-format stream-json --verbose``), the runbook appended to its own system
prompt from a file in $HOME (``--append-system-prompt-file``: no argv size limit, not
visible in ``ps``), and the prompt on stdin (a prompt starting with ``-`` cannot be
taken for a flag). ``--permission-mode bypassPermissions`` lets it write files and run
commands without asking: the sandbox is the isolation. The CLI refuses that mode
for root unless ``IS_SANDBOX=1`` is set, which it is, so the command works whatever
uid the sandbox gives it (checked both as root and as uid 1000).

Every model call goes to the gateway (``ANTHROPIC_BASE_URL``, the run's token as
``x-api-key``) and uses the run's model: the CLI's small/fast and subagent models are
pinned to it too. Non-essential traffic, telemetry, error reports and the updater are
off, so the CLI contacts nothing but the gateway. Its own retries are bounded
(``CLAUDE_CODE_MAX_RETRIES``): it otherwise retries a 401 for minutes.

npm installs it as a 500-byte launcher that a postinstall script replaces with the
native binary; we install without scripts, so the command runs the platform
package's binary directly (``@anthropic-ai/claude-code-<platform>/claude``).

Its stream (2.1.x): ``system`` (``init`` with ``cwd``; ``api_retry``), ``assistant``
(one content block per event: ``text``, ``tool_use``, ``thinking``), ``user``
(``tool_result`` blocks) and a final ``result`` (``result``, ``num_turns``,
``usage``, ``total_cost_usd``, ``is_error``).
"""

from __future__ import annotations

import platform
import posixpath
from typing import Any

import orjson

from services.runner.agents.base import AgentCommand, AgentSpec, ParsedStep, clip_output
from shared.events.runbook import AgentOutcome

NAME = "claude-code"
#: the runbook file, relative to $HOME
RUNBOOK_FILE = ".jetty/runbook.md"
#: the CLI's own retries of a failed model call (the gateway retries upstream itself)
MAX_RETRIES = 2
#: longest tool output kept in a step, bytes of UTF-8
TOOL_OUTPUT_LIMIT = 16 * 1024
_PROGRESS_ARGUMENT_LIMIT = 120


def platform_key() -> str:
    """The suffix of the CLI's native package for this machine (``linux-x64``).

    The sandbox runs on the host's ``/usr``, so the host's platform is the agent's.
    """
    machine = platform.machine().lower()
    cpu = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        machine, machine
    )
    system = platform.system().lower()
    if system != "linux":
        return f"{system}-{cpu}"
    libc, _ = platform.libc_ver()
    return f"linux-{cpu}" + ("" if libc == "glibc" else "-musl")


class ClaudeCodeAdapter:
    name = NAME

    def __init__(self, *, max_retries: int = MAX_RETRIES, binary: str | None = None) -> None:
        #: the CLI, relative to ``agents_dir`` (default: the native platform binary)
        self.binary = binary or f"node_modules/@anthropic-ai/claude-code-{platform_key()}/claude"
        self.max_retries = max_retries

    def command(self, spec: AgentSpec) -> AgentCommand:
        home = spec.home.rstrip("/") or "/"
        argv = [
            posixpath.join(spec.agents_dir, self.binary),
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--model",
            spec.model,
            "--permission-mode",
            "bypassPermissions",
            "--no-session-persistence",
        ]
        home_files: dict[str, bytes] = {}
        if spec.runbook.strip():
            home_files[RUNBOOK_FILE] = spec.runbook.encode()
            argv += ["--append-system-prompt-file", posixpath.join(home, RUNBOOK_FILE)]
        bin_dir = posixpath.join(spec.agents_dir, "node_modules", ".bin")
        env = {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": posixpath.join(home, "tmp"),
            "SHELL": "/bin/bash",
            "ANTHROPIC_BASE_URL": spec.gateway_url.rstrip("/"),
            "ANTHROPIC_API_KEY": spec.token,
            "ANTHROPIC_DEFAULT_HAIKU_MODEL": spec.model,
            "ANTHROPIC_SMALL_FAST_MODEL": spec.model,
            "CLAUDE_CODE_SUBAGENT_MODEL": spec.model,
            "CLAUDE_CODE_MAX_RETRIES": str(self.max_retries),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "DISABLE_AUTOUPDATER": "1",
            "IS_SANDBOX": "1",
        }
        return AgentCommand(argv=argv, env=env, home_files=home_files, stdin=spec.prompt.encode())

    def parser(self) -> ClaudeCodeParser:
        return ClaudeCodeParser()


def truncate(text: str, limit: int = TOOL_OUTPUT_LIMIT) -> str:
    return clip_output(text, limit)


def _result_text(content: Any) -> str:
    """A tool result's ``content``: a string, or blocks (text kept, others named)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            parts.append(f"[{block.get('type', 'block')}]")
    return "\n".join(parts)


def _ints(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    return {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}


class ClaudeCodeParser:
    """Reads claude-code's stream-json lines; never raises on odd input."""

    def __init__(self) -> None:
        self.cwd: str | None = None
        self._result: dict[str, Any] | None = None
        #: tool_use id → (time it was asked for, tool name)
        self._calls: dict[str, tuple[float, str]] = {}
        self._messages: set[str] = set()
        self._last_line_at: float | None = None

    def feed(self, line: str, now: float) -> list[ParsedStep]:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(event, dict):
            return []
        turn_began = self._last_line_at if self._last_line_at is not None else now
        self._last_line_at = now
        kind = event.get("type")
        if kind == "system" and event.get("subtype") == "init":
            cwd = event.get("cwd")
            self.cwd = cwd if isinstance(cwd, str) else None
        elif kind == "result":
            self._result = event
        message = event.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            return []
        if kind == "assistant":
            return self._assistant(message, turn_began, now)
        if kind == "user":
            return self._user(message["content"], now)
        return []

    def _assistant(
        self, message: dict[str, Any], turn_began: float, now: float
    ) -> list[ParsedStep]:
        # One message arrives as several events (a block each): the model call began
        # before the first of them.
        message_id = str(message.get("id", ""))
        started = now if message_id in self._messages else turn_began
        self._messages.add(message_id)
        steps: list[ParsedStep] = []
        for block in message["content"]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text = str(block.get("text", ""))
                if text.strip():
                    steps.append(ParsedStep(kind="message", started=started, ended=now, text=text))
            elif block.get("type") == "tool_use":
                call_id = str(block.get("id", ""))
                if call_id in self._calls:
                    continue
                name = str(block.get("name", ""))
                self._calls[call_id] = (now, name)
                arguments = block.get("input")
                tool_input = arguments if isinstance(arguments, dict) else {"input": arguments}
                steps.append(
                    ParsedStep(
                        kind="tool_call",
                        started=now,
                        ended=now,
                        tool_name=name,
                        tool_call_id=call_id,
                        tool_input=tool_input,
                    )
                )
        return steps

    def _user(self, content: list[Any], now: float) -> list[ParsedStep]:
        steps: list[ParsedStep] = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            call_id = str(block.get("tool_use_id", ""))
            asked_at, name = self._calls.get(call_id, (now, ""))
            steps.append(
                ParsedStep(
                    kind="tool_result",
                    started=asked_at,
                    ended=now,
                    text=truncate(_result_text(block.get("content"))),
                    tool_name=name or None,
                    tool_call_id=call_id,
                    is_error=block.get("is_error") is True,
                )
            )
        return steps

    def outcome(self, exit_code: int | None) -> AgentOutcome:
        event = self._result or {}
        result = event.get("result")
        turns = event.get("num_turns")
        return AgentOutcome(
            result=result if isinstance(result, str) else None,
            exit_code=exit_code,
            num_turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
            reported_usage=_ints(event.get("usage")),
        )

    def progress_text(self, step: ParsedStep) -> str | None:
        if step.kind == "message":
            return step.text
        if step.kind == "tool_call":
            argument = self._argument(step.tool_input or {})
            return f"→ {step.tool_name}" + (f" {argument}" if argument else "")
        size = len((step.text or "").encode())
        if step.is_error:
            first = (step.text or "").strip().splitlines()[:1]
            return "✗ tool error" + (f": {_clip(first[0])}" if first else "")
        return f"✓ tool result ({size} bytes)"

    def _argument(self, arguments: dict[str, Any]) -> str:
        """The one argument that says what a tool call does (a path, a command)."""
        for key in ("file_path", "notebook_path", "path", "command", "pattern", "url"):
            value = arguments.get(key)
            if isinstance(value, str) and value:
                if key.endswith("path") and self.cwd and value.startswith(self.cwd + "/"):
                    value = value[len(self.cwd) + 1 :]
                return _clip(value.splitlines()[0] if value.strip() else value)
        return ""


def _clip(text: str, limit: int = _PROGRESS_ARGUMENT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
