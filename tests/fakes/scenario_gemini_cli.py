"""A scripted gemini-cli conversation for :class:`~tests.fakes.gemini_upstream.FakeGemini`.

Register it with ``fake.respond_with(model, ReadSummarizeWrite(workspace))``. Each
answer is chosen from the request body alone (which function responses the agent
has sent back), never from a call counter, so retries and side requests do not
shift it:

1. no ``read_file`` response yet → a ``read_file`` call for
   ``<workspace>/uploads/data.csv`` (with ``missing_first``: first a ``read_file``
   of a file that does not exist, so the run holds a failing tool);
2. the data file's content is in a ``read_file`` response, no ``write_file`` yet →
   a ``write_file`` of ``<workspace>/results/summary.md`` whose content is computed
   from the CSV text found in that response (:func:`summarize_csv`);
3. the ``write_file`` response is present → a final text.

Every answer carries usage (the fake's default), so the gateway records tokens for
each call.
"""

from __future__ import annotations

from typing import Any

from tests.fakes.gemini_upstream import Script
from tests.fakes.scenario_claude_code import summarize_csv

DATA_PATH = "uploads/data.csv"
SUMMARY_PATH = "results/summary.md"
MISSING_PATH = "uploads/missing.csv"
PREFACE = "I'll read the data file first."
FINAL_PREFIX = "Done: wrote results/summary.md"


def _strings(value: Any) -> list[str]:
    """Every string inside a function response (its shape varies by tool and by
    whoever re-encoded it: ``{"output": "..."}``, ``{"content": ...}``)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def function_responses(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(function name, its response's text) for every successful
    ``functionResponse`` in the conversation, in order (gemini-cli answers a failed
    tool with ``{"error": "..."}``)."""
    found: list[tuple[str, str]] = []
    for content in body.get("contents") or []:
        for part in content.get("parts") or []:
            response = part.get("functionResponse") if isinstance(part, dict) else None
            if not isinstance(response, dict):
                continue
            payload = response.get("response")
            if isinstance(payload, dict) and "error" in payload:
                continue
            found.append((str(response.get("name") or ""), "\n".join(_strings(payload))))
    return found


def failed_calls(body: dict[str, Any]) -> int:
    """How many function responses in the conversation report an error."""
    return sum(
        1
        for content in body.get("contents") or []
        for part in content.get("parts") or []
        if isinstance(part, dict)
        and isinstance(response := part.get("functionResponse"), dict)
        and isinstance(payload := response.get("response"), dict)
        and "error" in payload
    )


def csv_text(result: str) -> str | None:
    """The CSV out of a ``read_file`` response (it is the file's text as is); None
    when it does not look like one (no header line with a comma)."""
    text = result.strip()
    if not text or "," not in text.splitlines()[0]:
        return None
    return text + "\n"


class ReadSummarizeWrite:
    """The responder: ``fake.respond_with(model, ReadSummarizeWrite(workspace))``."""

    def __init__(self, workspace: str, *, missing_first: bool = False) -> None:
        self.workspace = workspace.rstrip("/")
        self.missing_first = missing_first

    def __call__(self, body: dict[str, Any]) -> Script:
        responses = function_responses(body)
        if any(name == "write_file" for name, _ in responses):
            written = f"{self.workspace}/{SUMMARY_PATH}"
            return Script(text=f"{FINAL_PREFIX} ({written}).")
        reads = [text for name, text in responses if name == "read_file"]
        data = next((c for c in map(csv_text, reads) if c is not None), None)
        if data is not None:
            call = {"file_path": f"{self.workspace}/{SUMMARY_PATH}", "content": summarize_csv(data)}
            return Script(tool_calls=[("write_file", call)], call_ids=True)
        failed_before = failed_calls(body) > 0
        target = MISSING_PATH if self.missing_first and not failed_before else DATA_PATH
        call = {"file_path": f"{self.workspace}/{target}"}
        return Script(tool_calls=[("read_file", call)], preamble=PREFACE, call_ids=True)
