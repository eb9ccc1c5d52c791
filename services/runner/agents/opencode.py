"""opencode (``opencode run``) as an agent: its headless command and its
``--format json`` events read as :class:`ParsedStep` items.

How it reaches the gateway: a provider ``jetty`` in opencode's global config
(``$HOME/.config/opencode/opencode.json``) using its bundled OpenAI-compatible
client (``@ai-sdk/openai-compatible``, nothing downloaded): ``baseURL`` is the
gateway's ``/v1``, the key is read from ``JETTY_GATEWAY_TOKEN``, and the one model
is the run's. It calls ``POST /v1/chat/completions`` (streamed), so any provider
the gateway routes to works. Besides the run's turns it makes one short call to
title the session; that is recorded like any other.

The runbook: opencode has no system-prompt flag; the config's ``instructions``
names ``$HOME/.config/opencode/runbook.md``, which opencode adds to its system
prompt (its own tool guidance stays). Permissions are allowed in the config (the
sandbox is the boundary), web fetches denied; update checks, model-list fetches
and LSP downloads are off.

The npm package ``opencode-ai`` is a launcher whose install script links the
platform binary; ``make`` installs with scripts off, so the adapter starts the
platform package's binary (``opencode-linux-<arch>/bin/opencode``) itself.

Its JSON lines: ``step_start``; ``text`` (``part.text``, ``part.time`` in ms);
``tool_use`` once a tool call has finished (``part.tool``, ``part.callID``,
``part.state``: ``status`` completed/error, ``input``, ``output`` or ``error``,
``time``); ``step_finish`` (``part.reason``, ``part.tokens``: ``input``,
``output``, ``reasoning``, ``cache.read``/``cache.write``); ``error``
(``error.data.message`` or ``error.message``).
"""

from __future__ import annotations

import json
import platform
from typing import Any

from services.runner.agents.base import AgentCommand, AgentSpec, ParsedStep, clip_output
from shared.events.runbook import AgentOutcome

NAME = "opencode"
PROVIDER = "jetty"
TOKEN_ENV = "JETTY_GATEWAY_TOKEN"
CONFIG_PATH = ".config/opencode/opencode.json"
RUNBOOK_PATH = ".config/opencode/runbook.md"
MAX_RESULT_BYTES = 16 * 1024
PROGRESS_TEXT_CHARS = 200
_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def binary(agents_dir: str) -> str:
    arch = _ARCH.get(platform.machine().lower(), "x64")
    return f"{agents_dir.rstrip('/')}/node_modules/opencode-linux-{arch}/bin/opencode"


def config(spec: AgentSpec) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "permission": {
            "edit": "allow",
            "bash": "allow",
            "webfetch": "deny",
            "external_directory": "allow",
        },
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Jetty gateway",
                "options": {
                    "baseURL": spec.gateway_url.rstrip("/") + "/v1",
                    "apiKey": "{env:" + TOKEN_ENV + "}",
                },
                "models": {spec.model: {"name": spec.model}},
            }
        },
        "model": f"{PROVIDER}/{spec.model}",
        "small_model": f"{PROVIDER}/{spec.model}",
    }
    if spec.runbook.strip():
        doc["instructions"] = [f"{spec.home.rstrip('/')}/{RUNBOOK_PATH}"]
    return doc


class OpencodeAdapter:
    name = NAME

    def command(self, spec: AgentSpec) -> AgentCommand:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": spec.home,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            TOKEN_ENV: spec.token,
            "OPENCODE_DISABLE_AUTOUPDATE": "1",
            "OPENCODE_DISABLE_MODELS_FETCH": "1",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
            "OPENCODE_DISABLE_SHARE": "1",
            "NO_COLOR": "1",
        }
        home_files = {CONFIG_PATH: json.dumps(config(spec), indent=2).encode() + b"\n"}
        if spec.runbook.strip():
            home_files[RUNBOOK_PATH] = spec.runbook.encode()
        argv = [
            binary(spec.agents_dir),
            "run",
            "--format",
            "json",
            "-m",
            f"{PROVIDER}/{spec.model}",
            "--",
            spec.prompt,
        ]
        return AgentCommand(argv=argv, env=env, home_files=home_files)

    def parser(self) -> OpencodeParser:
        return OpencodeParser()


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ms(value: Any, default: float) -> float:
    return value / 1000 if isinstance(value, int | float) else default


def _shorten(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= PROGRESS_TEXT_CHARS else line[:PROGRESS_TEXT_CHARS] + "…"


class OpencodeParser:
    def __init__(self) -> None:
        self._turns = 0
        self._last_text: str | None = None
        self._error: str | None = None
        self._usage: dict[str, int] = {}

    def feed(self, line: str, now: float) -> list[ParsedStep]:
        try:
            event = json.loads(line)
        except ValueError:
            return []
        if not isinstance(event, dict):
            return []
        part = _obj(event.get("part"))
        kind = event.get("type")
        if kind == "step_start":
            self._turns += 1
        elif kind == "text":
            return self._text(part, now)
        elif kind == "tool_use":
            return self._tool(part, now)
        elif kind == "step_finish":
            self._add_usage(part.get("tokens"))
        elif kind == "error":
            self._error = _error_text(event.get("error"))
        return []

    def _text(self, part: dict[str, Any], now: float) -> list[ParsedStep]:
        text = part.get("text")
        if not isinstance(text, str) or not text.strip():
            return []
        self._last_text = text
        times = _obj(part.get("time"))
        started = _ms(times.get("start"), now)
        return [
            ParsedStep(kind="message", started=started, ended=_ms(times.get("end"), now), text=text)
        ]

    def _tool(self, part: dict[str, Any], now: float) -> list[ParsedStep]:
        state = _obj(part.get("state"))
        status = state.get("status")
        if status not in ("completed", "error"):
            return []
        name = str(part.get("tool") or "tool")
        call_id = str(part.get("callID") or part.get("id") or "")
        tool_input = _obj(state.get("input"))
        times = _obj(state.get("time"))
        started, ended = _ms(times.get("start"), now), _ms(times.get("end"), now)
        failed = status == "error"
        output = state.get("error") if failed else state.get("output")
        text = output if isinstance(output, str) else json.dumps(output)
        return [
            ParsedStep(kind="tool_call", started=started, ended=started, tool_name=name,
                       tool_call_id=call_id, tool_input=tool_input),
            ParsedStep(kind="tool_result", started=started, ended=ended, tool_name=name,
                       tool_call_id=call_id, text=clip_output(text, MAX_RESULT_BYTES),
                       is_error=failed),
        ]  # fmt: skip

    def _add_usage(self, tokens: Any) -> None:
        if not isinstance(tokens, dict):
            return
        flat = {k: v for k, v in tokens.items() if isinstance(v, int)}
        cache = tokens.get("cache")
        if isinstance(cache, dict):
            flat |= {f"cache_{k}": v for k, v in cache.items() if isinstance(v, int)}
        for key, value in flat.items():
            self._usage[key] = self._usage.get(key, 0) + value

    def outcome(self, exit_code: int | None) -> AgentOutcome:
        result = self._last_text
        if self._error is not None and (result is None or exit_code not in (0, None)):
            result = self._error
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
            target = (step.tool_input or {}).get("filePath") or (step.tool_input or {}).get(
                "command"
            )
            return f"→ {step.tool_name}" + (f" {target}" if isinstance(target, str) else "")
        if step.is_error:
            return f"✗ tool error: {_shorten(step.text or '')}"
        return f"✓ tool result ({len((step.text or '').encode())} bytes)"


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        data = error.get("data")
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return str(data["message"])
        if isinstance(error.get("message"), str):
            return str(error["message"])
        return json.dumps(error)
    return str(error)
