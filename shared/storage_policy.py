"""What a trajectory keeps of a call's bodies (``JETTY_STORE_BODIES``, and per
request ``jetty.store: false``):

* ``full``: the request (messages, parameters; large base64 redacted as always)
  and the output, as today;
* ``redacted``: the shape without the words: every text becomes a marker with its
  length (``[redacted: 42 chars]``), tool-call arguments too; roles, tool names,
  call ids, parameters, usage and cost stay;
* ``none``: metadata only: no messages and no output (usage, cost, latency,
  status, model and parameters stay).

The choice is recorded in the step's request document as ``store``.
"""

from __future__ import annotations

from typing import Any, Literal

from shared.events.completion import ChoiceRecord, ResponseRecord, ToolCall

StoreMode = Literal["full", "redacted", "none"]
STORE_MODES: tuple[StoreMode, ...] = ("full", "redacted", "none")


def _mark(text: str) -> str:
    return f"[redacted: {len(text)} chars]"


def _redact_content(value: Any) -> Any:
    if isinstance(value, str):
        return _mark(value)
    if isinstance(value, list):
        return [_redact_part(part) for part in value]
    return value


def _redact_part(part: Any) -> Any:
    if not isinstance(part, dict):
        return _redact_content(part)
    kept = {"type": part.get("type")}
    for key, value in part.items():
        if key in ("type", "cache_control"):
            continue
        kept[key] = _redact_content(value) if isinstance(value, str | list) else "[redacted]"
    return kept


def _redact_message(message: Any) -> Any:
    if not isinstance(message, dict):
        return "[redacted]"
    out: dict[str, Any] = {}
    for key, value in message.items():
        if key in ("role", "name", "tool_call_id"):
            out[key] = value
        elif key == "tool_calls" and isinstance(value, list):
            out[key] = [
                {
                    "id": call.get("id"),
                    "type": call.get("type", "function"),
                    "function": {
                        "name": (call.get("function") or {}).get("name"),
                        "arguments": _mark(str((call.get("function") or {}).get("arguments", ""))),
                    },
                }
                if isinstance(call, dict)
                else "[redacted]"
                for call in value
            ]
        else:
            out[key] = _redact_content(value) if value is not None else None
    return out


def apply_to_request(recorded: dict[str, Any], mode: StoreMode) -> dict[str, Any]:
    """The recorded request document under ``mode`` (with ``store`` set)."""
    if mode == "full":
        return {**recorded, "store": mode}
    if mode == "none":
        return {**recorded, "messages": [], "store": mode}
    return {
        **recorded,
        "messages": [_redact_message(m) for m in recorded.get("messages", [])],
        "store": mode,
    }


def _redact_calls(calls: list[ToolCall]) -> list[ToolCall]:
    return [c.model_copy(update={"arguments": _mark(c.arguments)}) for c in calls]


def _choice(choice: ChoiceRecord, mode: StoreMode) -> ChoiceRecord:
    if mode == "none":
        return choice.model_copy(update={"content": None, "refusal": None, "tool_calls": []})
    return choice.model_copy(
        update={
            "content": _mark(choice.content) if choice.content is not None else None,
            "refusal": _mark(choice.refusal) if choice.refusal is not None else None,
            "tool_calls": _redact_calls(choice.tool_calls),
        }
    )


def apply_to_response(record: ResponseRecord, mode: StoreMode) -> ResponseRecord:
    if mode == "full":
        return record
    if mode == "none":
        content, calls = None, []
    else:
        content = _mark(record.content) if record.content is not None else None
        calls = _redact_calls(record.tool_calls)
    return record.model_copy(
        update={
            "content": content,
            "tool_calls": calls,
            "choices": [_choice(c, mode) for c in record.choices],
        }
    )
