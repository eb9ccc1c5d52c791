"""A scripted claude-code conversation for :class:`~tests.fakes.anthropic_upstream.FakeAnthropic`.

Register it with ``fake.respond_with(model, ReadSummarizeWrite(workspace))``. Each
answer is chosen from the request body alone (which tool results the agent has sent
back), never from a call counter, so retries and side requests do not shift it:

1. no ``tool_result`` yet → a ``Read`` of ``<workspace>/uploads/data.csv``;
2. the Read's result is present, no Write yet → a ``Write`` of
   ``<workspace>/results/summary.md`` whose content is computed from the CSV text
   found in that result (:func:`summarize_csv`);
3. the Write's result is present → a final text.

Every answer carries usage, so the gateway records tokens for each call.
"""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from tests.fakes.anthropic_upstream import Script

DATA_PATH = "uploads/data.csv"
SUMMARY_PATH = "results/summary.md"
PREFACE = "I'll read the data file first."
FINAL_PREFIX = "Done: wrote results/summary.md"

# claude-code's Read tool numbers lines like ``cat -n``: spaces, the number, then a
# tab (older versions used an arrow).
_LINE_NUMBER = re.compile(r"^\s*\d+(?:\t|\u2192)")
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)


def summarize_csv(text: str) -> str:
    """``rows: N`` and ``sum of <column>: X`` for every all-numeric column."""
    rows = list(csv.reader(io.StringIO(text.strip())))
    if not rows:
        return "# Summary\n\nrows: 0\n"
    header, data = rows[0], [r for r in rows[1:] if any(cell.strip() for cell in r)]
    lines = ["# Summary", "", f"rows: {len(data)}"]
    for i, name in enumerate(header):
        try:
            total = sum((Decimal(r[i].strip()) for r in data), Decimal(0))
        except (InvalidOperation, IndexError):
            continue
        lines.append(f"sum of {name.strip()}: {_number(total)}")
    return "\n".join(lines) + "\n"


def _number(value: Decimal) -> str:
    """``50`` rather than ``50.0``; ``49.5`` as it is."""
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(b.get("text", ""))
            for b in content
            if isinstance(b, dict) and b.get("type") == "text"
        )
    return ""


def file_text_from_read(result: str) -> str:
    """The file's own text out of a Read tool result (line numbers and reminders off)."""
    lines = []
    for line in _REMINDER.sub("", result).splitlines():
        if _LINE_NUMBER.match(line):
            lines.append(_LINE_NUMBER.sub("", line, count=1))
    return "\n".join(lines)


def tool_results(body: dict[str, Any]) -> dict[str, str]:
    """Tool name → text of its result, over the whole conversation in ``body``."""
    names: dict[str, str] = {}
    results: dict[str, str] = {}
    for message in body.get("messages") or []:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use":
                names[str(block.get("id"))] = str(block.get("name"))
            elif block.get("type") == "tool_result":
                name = names.get(str(block.get("tool_use_id")), "")
                results[name] = _text_of(block.get("content"))
    return results


class ReadSummarizeWrite:
    """The responder: ``(request body) -> Script``."""

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace.rstrip("/")

    def __call__(self, body: Any) -> Script:
        results = tool_results(body if isinstance(body, dict) else {})
        if "Write" in results:
            return Script(text=f"{FINAL_PREFIX} from {DATA_PATH}.")
        if "Read" in results:
            summary = summarize_csv(file_text_from_read(results["Read"]))
            arguments = {"file_path": f"{self.workspace}/{SUMMARY_PATH}", "content": summary}
            return Script(tool_calls=[("Write", orjson.dumps(arguments).decode())])
        arguments = {"file_path": f"{self.workspace}/{DATA_PATH}"}
        return Script(preface=PREFACE, tool_calls=[("Read", orjson.dumps(arguments).decode())])
