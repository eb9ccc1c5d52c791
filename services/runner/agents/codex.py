"""codex (``codex exec``) as an agent: its headless command and its ``--json``
events read as :class:`ParsedStep` items.

How it reaches the gateway: codex speaks only the Responses API, and only to a
configured provider (``OPENAI_BASE_URL`` alone makes it try a WebSocket first). The
command defines a provider ``jetty`` with ``-c`` overrides: ``base_url`` is the
gateway's ``/v1``, ``wire_api = "responses"`` and ``env_key`` names the variable
holding the run's token (sent as ``Authorization: Bearer``).

The runbook: codex has no system-prompt flag. Its ``developer_instructions``
setting is sent as the first part of the developer message of every request, after
the CLI's own base instructions (which describe its tools, so they stay). The
adapter writes it into ``$CODEX_HOME/config.toml`` rather than passing ``-c``: a
runbook may be longer than one command-line argument may be, and argv is visible to
every process. Replacing the base instructions (``model_instructions_file``) would
drop the tool guidance; an ``AGENTS.md`` would have to sit in the workspace, where
it would come back as an artifact.

The prompt is the last argument, after ``--``; one longer than
:data:`MAX_ARGV_PROMPT_BYTES` goes in on stdin instead (``-`` as the prompt).

The same file turns off analytics and the update check, and keeps the token out of
the commands the agent runs (``shell_environment_policy.inherit = "core"``: only
``HOME``, ``PATH``, ``USER``, ``TMPDIR`` and the like; by default every variable
reaches them).

Its ``--json`` lines: ``thread.started`` (``thread_id``), ``turn.started``,
``item.started`` / ``item.updated`` / ``item.completed`` (``item`` with ``id`` and
``type``: ``agent_message`` {text}, ``reasoning`` {text}, ``command_execution``
{command, aggregated_output, exit_code, status}, ``file_change`` {changes: [{path,
kind}], status}, ``mcp_tool_call`` {server, tool, arguments, result, error,
status}, ``web_search`` {query}, ``todo_list`` {items}, ``error`` {message: a
warning, e.g. unknown model metadata}), ``turn.completed`` (``usage``:
``input_tokens``, ``cached_input_tokens``, ``output_tokens``,
``reasoning_output_tokens``…), ``turn.failed`` (``error.message``) and ``error``
(``message``: a stream error; ``Reconnecting... n/m`` before a retry, then the
final one). ``codex exec`` runs one turn; the model calls inside it are not events
of their own (the gateway records each of them). A shell command that is an
``apply_patch`` invocation is run by codex itself and reported as a ``file_change``
(paths and kinds, no contents), not as a ``command_execution``.

``codex`` is a node script that starts the native binary as its child: stopping a
run means signalling the whole process group (or the sandbox), not just the pid.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from services.runner.agents.base import AgentCommand, AgentSpec, ParsedStep, clip_output
from shared.events.runbook import AgentOutcome

NAME = "codex"
BIN = "codex"
PROVIDER = "jetty"
#: the variable holding the run's token (codex reads the provider's key from it)
TOKEN_ENV = "JETTY_GATEWAY_TOKEN"
CODEX_HOME = ".codex"
CONFIG_PATH = f"{CODEX_HOME}/config.toml"
#: a tool result's text is cut to this many bytes (UTF-8)
MAX_RESULT_BYTES = 16 * 1024
PROGRESS_TEXT_CHARS = 200
#: a longer prompt goes in on stdin (``-`` as the prompt): one argument may hold
#: at most 128 KiB on Linux
MAX_ARGV_PROMPT_BYTES = 64 * 1024

# Tools whose items the parser turns into a call and its result.
_TOOL_ITEMS = frozenset({"command_execution", "file_change", "mcp_tool_call", "web_search"})
_FAILED_STATUSES = frozenset({"failed", "declined"})


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (escapes what TOML requires: quote,
    backslash and control characters other than tab; lone surrogates replaced)."""
    out = ['"']
    for char in value.encode("utf-8", "replace").decode("utf-8"):
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def provider_override(gateway_url: str) -> str:
    """The ``-c`` value that defines our provider (an inline TOML table)."""
    fields = {
        "name": toml_string("Jetty gateway"),
        "base_url": toml_string(gateway_url.rstrip("/") + "/v1"),
        "env_key": toml_string(TOKEN_ENV),
        "wire_api": toml_string("responses"),
        # The gateway retries upstreams itself; a refusal (budget, auth) must end
        # the run quickly, not after minutes of back-off.
        "request_max_retries": "1",
        "stream_max_retries": "1",
    }
    body = ", ".join(f"{key} = {value}" for key, value in fields.items())
    return f"model_providers.{PROVIDER}={{ {body} }}"


def config_toml(runbook: str) -> bytes:
    lines = []
    if runbook.strip():
        lines.append(f"developer_instructions = {toml_string(runbook)}")
    lines += [
        "check_for_update_on_startup = false",
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[shell_environment_policy]",
        'inherit = "core"',
        "",
    ]
    return "\n".join(lines).encode()


class CodexAdapter:
    name = NAME

    def command(self, spec: AgentSpec) -> AgentCommand:
        bin_dir = f"{spec.agents_dir.rstrip('/')}/node_modules/.bin"
        home = spec.home.rstrip("/")
        in_argv = len(spec.prompt.encode()) <= MAX_ARGV_PROMPT_BYTES
        argv = [
            f"{bin_dir}/{BIN}",
            "exec",
            "--json",
            "--color",
            "never",
            "--skip-git-repo-check",
            # The sandbox we run it in is the isolation; codex's own (bwrap again,
            # helper binaries under TMPDIR) does not nest inside it.
            "--dangerously-bypass-approvals-and-sandbox",
            "--ephemeral",
            "-C",
            spec.workspace,
            "-c",
            f"model_provider={toml_string(PROVIDER)}",
            "-c",
            provider_override(spec.gateway_url),
            "-m",
            spec.model,
            # After "--": a prompt starting with "-" is still the prompt.
            "--",
            spec.prompt if in_argv else "-",
        ]
        env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": spec.home,
            "CODEX_HOME": f"{home}/{CODEX_HOME}",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
            TOKEN_ENV: spec.token,
        }
        return AgentCommand(
            argv=argv,
            env=env,
            home_files={CONFIG_PATH: config_toml(spec.runbook)},
            stdin=None if in_argv else spec.prompt.encode(),
        )

    def parser(self) -> CodexStreamParser:
        return CodexStreamParser()


def truncate(text: str, limit: int = MAX_RESULT_BYTES) -> str:
    return clip_output(text, limit)


def shell_script(command: str) -> str:
    """The script inside codex's ``/bin/bash -lc '<script>'`` wrapper (the command
    itself when it is not wrapped)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if len(words) == 3 and words[0].endswith("sh") and words[1] in ("-lc", "-c"):
        return words[2]
    return command


def _one_line(text: str, limit: int = PROGRESS_TEXT_CHARS) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _int_usage(usage: Any) -> dict[str, int]:
    if not isinstance(usage, dict):
        return {}
    return {str(k): v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}


def _changes(value: Any) -> list[str]:
    """``<kind> <path>`` of each change of a ``file_change`` item."""
    if not isinstance(value, list):
        return []
    return [f"{_text(c.get('kind'))} {_text(c.get('path'))}" for c in value if isinstance(c, dict)]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def error_message(text: str) -> str:
    """codex reports an HTTP error as the response body it got; an OpenAI error
    body (``{"error": {"message": ...}}``) is reduced to its message."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else text


class CodexStreamParser:
    """Reads ``codex exec --json`` lines. A tool's call is a step when its item
    starts (or, for items reported only once, when it completes) and its result a
    step when the item completes; the result's ``started`` is the call's time."""

    def __init__(self) -> None:
        self.thread_id: str | None = None
        self._calls: dict[str, float] = {}
        self._last_message: str | None = None
        self._error: str | None = None
        self._turns = 0
        self._usage: dict[str, int] = {}
        self._last_seen: float | None = None

    # --- StreamParser ------------------------------------------------------------------

    def feed(self, line: str, now: float) -> list[ParsedStep]:
        try:
            event = json.loads(line)
        except ValueError:
            return []
        if not isinstance(event, dict):
            return []
        since = self._last_seen if self._last_seen is not None else now
        self._last_seen = now
        try:
            return self._event(event, since, now)
        except (TypeError, ValueError, AttributeError, KeyError):
            return []  # a known event type in a shape this version does not expect

    def outcome(self, exit_code: int | None) -> AgentOutcome:
        return AgentOutcome(
            result=self._last_message if self._last_message is not None else self._error,
            exit_code=exit_code,
            num_turns=self._turns or None,
            reported_usage=dict(self._usage),
        )

    def progress_text(self, step: ParsedStep) -> str | None:
        if step.kind == "message":
            return step.text or None
        if step.kind == "tool_call":
            return f"→ {self._describe_call(step)}"
        size = len((step.text or "").encode())
        if step.is_error:
            return f"✗ {step.tool_name or 'tool'} failed ({size} bytes)"
        return f"✓ tool result ({size} bytes)"

    # --- events ------------------------------------------------------------------------

    @property
    def error(self) -> str | None:
        """The last fatal error codex reported (``turn.failed`` / ``error``)."""
        return self._error

    def _event(self, event: dict[str, Any], since: float, now: float) -> list[ParsedStep]:
        kind = event.get("type")
        if kind == "thread.started":
            self.thread_id = str(event.get("thread_id") or "") or None
        elif kind == "turn.completed":
            self._turns += 1
            self._error = None  # "Reconnecting…" errors before it were not fatal
            for key, value in _int_usage(event.get("usage")).items():
                self._usage[key] = self._usage.get(key, 0) + value
        elif kind == "turn.failed":
            self._turns += 1
            error = event.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            self._error = error_message(_text(message)) or "turn failed"
        elif kind == "error":
            self._error = error_message(_text(event.get("message"))) or "error"
        elif kind in ("item.started", "item.completed"):
            item = event.get("item")
            if isinstance(item, dict):
                return self._item(item, kind == "item.completed", since, now)
        return []

    def _item(
        self, item: dict[str, Any], completed: bool, since: float, now: float
    ) -> list[ParsedStep]:
        item_type = item.get("type")
        if item_type == "agent_message":
            text = _text(item.get("text"))
            if not completed or not text:
                return []
            self._last_message = text
            return [ParsedStep(kind="message", started=since, ended=now, text=text)]
        if item_type not in _TOOL_ITEMS:
            return []  # reasoning, todo lists, warnings: nothing the client sees as a step
        call_id = str(item.get("id") or "")
        steps: list[ParsedStep] = []
        if call_id not in self._calls:
            self._calls[call_id] = now
            name, tool_input = self._call_of(item)
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
        if completed:
            name, _ = self._call_of(item)
            text, is_error = self._result_of(item)
            steps.append(
                ParsedStep(
                    kind="tool_result",
                    started=self._calls[call_id],
                    ended=now,
                    text=truncate(text),
                    tool_name=name,
                    tool_call_id=call_id,
                    is_error=is_error,
                )
            )
        return steps

    @staticmethod
    def _call_of(item: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        item_type = item["type"]
        if item_type == "command_execution":
            return "exec_command", {"command": _text(item.get("command"))}
        if item_type == "file_change":
            changes = item.get("changes")
            return "apply_patch", {"changes": changes if isinstance(changes, list) else []}
        if item_type == "mcp_tool_call":
            name = f"{_text(item.get('server'))}.{_text(item.get('tool'))}"
            arguments = item.get("arguments")
            return name, arguments if isinstance(arguments, dict) else {"arguments": arguments}
        return "web_search", {"query": _text(item.get("query"))}

    @staticmethod
    def _result_of(item: dict[str, Any]) -> tuple[str, bool]:
        item_type = item["type"]
        failed = item.get("status") in _FAILED_STATUSES
        if item_type == "command_execution":
            exit_code = item.get("exit_code")
            failed = failed or (isinstance(exit_code, int) and exit_code != 0)
            return _text(item.get("aggregated_output")), failed
        if item_type == "file_change":
            return "\n".join(_changes(item.get("changes"))), failed
        if item_type == "mcp_tool_call":
            error = item.get("error")
            if error:
                message = error.get("message") if isinstance(error, dict) else error
                return _text(message), True
            return _text(item.get("result")), failed
        return "", failed

    @staticmethod
    def _describe_call(step: ParsedStep) -> str:
        tool_input = step.tool_input or {}
        if step.tool_name == "exec_command":
            return "$ " + _one_line(shell_script(_text(tool_input.get("command"))))
        if step.tool_name == "apply_patch":
            return "apply_patch " + _one_line(", ".join(_changes(tool_input.get("changes"))))
        if step.tool_name == "web_search":
            return "web_search " + _one_line(_text(tool_input.get("query")))
        return _one_line(f"{step.tool_name} {json.dumps(tool_input, ensure_ascii=False)}")
