"""gemini-cli (``gemini``) as an agent: its headless command and its stream-json
events read as :class:`ParsedStep` items.

How it reaches the gateway: ``GOOGLE_GEMINI_BASE_URL`` is the gateway's base URL and
``GEMINI_API_KEY`` the run's token (sent as ``x-goog-api-key`` to
``/v1beta/models/<model>:streamGenerateContent?alt=sse``). It runs headless only
with ``$HOME/.gemini/settings.json`` selecting API-key auth,
``GEMINI_CLI_TRUST_WORKSPACE=true`` and an explicit ``-m`` (the default ``auto``
model first sends a classifier call).

The runbook: gemini-cli reads its whole system prompt from the file named by
``GEMINI_SYSTEM_MD`` when that is set, so the adapter writes the runbook to
``$HOME/.gemini/runbook.md`` and points the variable there; the model's system
instruction is then the runbook itself (plus any ``GEMINI.md`` context files the
workspace holds, which the CLI appends). The CLI substitutes a few ``${...}``
placeholders in such a file (``${AvailableTools}``, ``${AgentSkills}``,
``${SubAgents}``, ``${<tool>_ToolName}``); nothing else changes. An empty runbook
keeps the CLI's own system prompt. A ``GEMINI.md`` context file was the other
choice: it would only be appended to the CLI's prompt as low-precedence "global
preferences", not be the system message.

Its stream-json lines: ``init``; ``message`` (``role`` user/assistant,
``content``, ``delta: true`` for pieces of one assistant answer); ``tool_use``
(``tool_name``, ``tool_id``, ``parameters``); ``tool_result`` (``tool_id``,
``status`` success/error, ``output`` — the tool's display text, empty for
``read_file`` and absent for ``write_file`` — and ``error: {type, message}``);
``error`` (``severity``, ``message``: warnings and stream problems); ``result``
(``status``, ``error?``, ``stats`` with token counts). The result carries no final
text, so the outcome's result is the last assistant answer.
"""

from __future__ import annotations

import json
from typing import Any

from services.runner.agents.base import AgentCommand, AgentSpec, ParsedStep
from shared.events.runbook import AgentOutcome

NAME = "gemini-cli"
BIN = "gemini"
SETTINGS_PATH = ".gemini/settings.json"
RUNBOOK_PATH = ".gemini/runbook.md"
#: a tool result's text is cut to this many characters
MAX_RESULT_CHARS = 16 * 1024
PROGRESS_TEXT_CHARS = 200

SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
}

# Usage figures of the ``result`` event's stats kept in the outcome (ints only).
_USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens", "cached", "input", "tool_calls")


class GeminiCliAdapter:
    name = NAME

    def command(self, spec: AgentSpec) -> AgentCommand:
        bin_dir = f"{spec.agents_dir.rstrip('/')}/node_modules/.bin"
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": spec.home,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "GOOGLE_GEMINI_BASE_URL": spec.gateway_url,
            "GEMINI_API_KEY": spec.token,
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
            # One node process instead of a parent that re-spawns itself with a
            # bigger heap (and ignores SIGTERM while its child runs).
            "GEMINI_CLI_NO_RELAUNCH": "true",
            "NO_COLOR": "1",
        }
        home_files = {SETTINGS_PATH: json.dumps(SETTINGS, indent=2).encode() + b"\n"}
        if spec.runbook.strip():
            home_files[RUNBOOK_PATH] = spec.runbook.encode()
            env["GEMINI_SYSTEM_MD"] = f"{spec.home.rstrip('/')}/{RUNBOOK_PATH}"
        argv = [
            f"{bin_dir}/{BIN}",
            "--model",
            spec.model,
            "--approval-mode",
            "yolo",
            "--output-format",
            "stream-json",
            "--prompt",
            spec.prompt,
        ]
        return AgentCommand(argv=argv, env=env, home_files=home_files)

    def parser(self) -> GeminiCliParser:
        return GeminiCliParser()


class GeminiCliParser:
    """Reads gemini-cli's stream-json lines. Assistant pieces (``delta: true``) are
    joined into one ``message`` step, emitted when the next non-assistant event
    arrives (a tool call, the result, ...)."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._text_started = 0.0
        self._text_ended = 0.0
        self._calls: dict[str, float] = {}
        self._last_answer: str | None = None
        self._turns = 0
        # True while the model is answering: the next assistant output after a
        # tool result (or the prompt) starts a new turn.
        self._in_turn = False
        self._status: str | None = None
        self._error: str | None = None
        self._usage: dict[str, int] = {}

    # --- StreamParser ---------------------------------------------------------------

    def feed(self, line: str, now: float) -> list[ParsedStep]:
        event = _decode(line)
        if event is None:
            return []
        kind = event.get("type")
        if kind == "message" and event.get("role") == "assistant":
            self._assistant_text(event.get("content"), now)
            return []
        steps = self._flush()
        if kind == "tool_use":
            steps += self._tool_use(event, now)
        elif kind == "tool_result":
            steps += self._tool_result(event, now)
        elif kind == "message":  # the user's prompt, echoed
            self._in_turn = False
        elif kind == "result":
            self._result(event)
        elif kind == "error" and event.get("severity") == "error":
            message = event.get("message")
            if isinstance(message, str):
                self._error = message
        return steps

    def outcome(self, exit_code: int | None) -> AgentOutcome:
        pending = "".join(self._text)
        result = pending or self._last_answer
        if self._status == "error" or (result is None and self._error is not None):
            result = self._error or result
        return AgentOutcome(
            result=result,
            exit_code=exit_code,
            num_turns=self._turns or None,
            reported_usage=dict(self._usage),
        )

    def progress_text(self, step: ParsedStep) -> str | None:
        if step.kind == "message":
            return step.text or None
        if step.kind == "tool_call":
            target = _target(step.tool_input or {})
            return f"→ {step.tool_name}" + (f" {target}" if target else "")
        size = len((step.text or "").encode())
        if step.is_error:
            return f"✗ tool error: {_shorten(step.text or '')}"
        return f"✓ tool result ({size} bytes)"

    # --- events ---------------------------------------------------------------------

    def _start_turn(self) -> None:
        if not self._in_turn:
            self._turns += 1
            self._in_turn = True

    def _assistant_text(self, content: Any, now: float) -> None:
        if not isinstance(content, str) or not content:
            return
        self._start_turn()
        if not self._text:
            self._text_started = now
        self._text.append(content)
        self._text_ended = now

    def _flush(self) -> list[ParsedStep]:
        if not self._text:
            return []
        text = "".join(self._text)
        self._text.clear()
        self._last_answer = text
        return [
            ParsedStep(
                kind="message", started=self._text_started, ended=self._text_ended, text=text
            )
        ]

    def _tool_use(self, event: dict[str, Any], now: float) -> list[ParsedStep]:
        call_id = _str(event.get("tool_id"))
        params = event.get("parameters")
        self._start_turn()
        if call_id is not None:
            self._calls[call_id] = now
        return [
            ParsedStep(
                kind="tool_call",
                started=now,
                ended=now,
                tool_name=_str(event.get("tool_name")),
                tool_call_id=call_id,
                tool_input=params if isinstance(params, dict) else {},
            )
        ]

    def _tool_result(self, event: dict[str, Any], now: float) -> list[ParsedStep]:
        call_id = _str(event.get("tool_id"))
        is_error = event.get("status") == "error"
        text = _str(event.get("output")) or ""
        error = event.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str) and not text:
            text = error["message"]
        self._in_turn = False
        started = self._calls.pop(call_id, now) if call_id is not None else now
        return [
            ParsedStep(
                kind="tool_result",
                started=started,
                ended=now,
                tool_call_id=call_id,
                text=text[:MAX_RESULT_CHARS],
                is_error=is_error,
            )
        ]

    def _result(self, event: dict[str, Any]) -> None:
        self._in_turn = False
        self._status = _str(event.get("status"))
        error = event.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            self._error = error["message"]
        stats = event.get("stats")
        if isinstance(stats, dict):
            self._usage = {
                key: value
                for key in _USAGE_KEYS
                if isinstance(value := stats.get(key), int) and not isinstance(value, bool)
            }


def _decode(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _target(params: dict[str, Any]) -> str:
    for key in ("file_path", "dir_path", "path", "command", "pattern", "url", "query"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return _shorten(value)
    return ""


def _shorten(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= PROGRESS_TEXT_CHARS else line[: PROGRESS_TEXT_CHARS - 1] + "…"
