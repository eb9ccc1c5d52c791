"""Bounds on everything the runner takes from an agent's output.

An agent's stdout is the agent's own account, and whatever runs in its sandbox
may shape it: no field read from it reaches the record unbounded. Text is
clipped with a marker saying how much was left out (as the adapters' output
clipper does); names (a tool's, a call id) are short by nature and clipped
hard; a tool's input keeps its shape but each string is clipped, containers
hold at most :data:`MAX_ITEMS` entries and :data:`MAX_DEPTH` levels, and the
whole stays under a byte budget (past it the input is replaced by a note).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson

from services.runner.agents.base import ParsedStep
from shared.events.runbook import AgentOutcome

#: tool names and call ids, characters
MAX_NAME = 256
MAX_ITEMS = 256
MAX_DEPTH = 16
#: reported usage: how many counters are kept, and their names' length
MAX_USAGE_KEYS = 32
CLIPPED = "…[clipped]"


def clip(text: str | None, limit: int) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n… [{len(text) - limit} more characters]"


def clip_name(name: str | None) -> str | None:
    if name is None or len(name) <= MAX_NAME:
        return name
    return name[: MAX_NAME - len(CLIPPED)] + CLIPPED


def bound_value(value: Any, limit: int, depth: int = 0) -> Any:
    """A JSON value with every string clipped to ``limit`` characters and every
    container cut to :data:`MAX_ITEMS` entries, :data:`MAX_DEPTH` levels deep."""
    if isinstance(value, str):
        return clip(value, limit)
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return CLIPPED
        items = list(value.items())
        kept = {
            str(clip_name(str(k))): bound_value(v, limit, depth + 1) for k, v in items[:MAX_ITEMS]
        }
        if len(items) > MAX_ITEMS:
            kept[CLIPPED] = f"{len(items) - MAX_ITEMS} more entries"
        return kept
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            return CLIPPED
        out = [bound_value(v, limit, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out.append(f"{CLIPPED} {len(value) - MAX_ITEMS} more items")
        return out
    return value


def bound_input(value: dict[str, Any] | None, limit: int) -> dict[str, Any] | None:
    """A tool's input, bounded; one past ``4 * limit`` bytes in all (many clipped
    strings) becomes a note of its size."""
    if value is None:
        return None
    bounded: dict[str, Any] = bound_value(value, limit)
    size = len(orjson.dumps(bounded, default=str))
    if size > 4 * limit:
        return {CLIPPED: f"the tool input was {size} bytes after clipping; not kept"}
    return bounded


def bound_step(step: ParsedStep, limit: int) -> ParsedStep:
    return replace(
        step,
        text=clip(step.text, limit),
        tool_name=clip_name(step.tool_name),
        tool_call_id=clip_name(step.tool_call_id),
        tool_input=bound_input(step.tool_input, limit),
    )


def bound_outcome(outcome: AgentOutcome, limit: int) -> AgentOutcome:
    usage = {
        str(clip_name(key))[:64]: value
        for key, value in list(outcome.reported_usage.items())[:MAX_USAGE_KEYS]
    }
    return outcome.model_copy(
        update={"result": clip(outcome.result, limit), "reported_usage": usage}
    )
