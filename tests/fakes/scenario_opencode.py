"""A scripted opencode conversation for the fake OpenAI upstream (opencode calls
``/v1/chat/completions`` through the gateway with its OpenAI-compatible client).

Each answer is chosen from the request body alone:

* a request offering no tools is opencode titling its session: a short text;
* no ``read`` result yet: call ``read`` on ``<workspace>/uploads/data.csv``;
* the read's result is there (opencode numbers the lines inside ``<content>``):
  call ``write`` with ``<workspace>/results/summary.md`` computed from that CSV
  (:func:`~tests.fakes.scenario_claude_code.summarize_csv`);
* the write's result is there: the final text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tests.fakes.openai_upstream import Script
from tests.fakes.scenario_claude_code import summarize_csv

DATA_PATH = "uploads/data.csv"
SUMMARY_PATH = "results/summary.md"
FINAL_TEXT = f"Done: wrote {SUMMARY_PATH} from {DATA_PATH}."
_NUMBERED = re.compile(r"^\s*\d+: ?")


def tool_results(body: dict[str, Any]) -> dict[str, str]:
    """Tool name → the text of its (last) result in the conversation."""
    names: dict[str, str] = {}
    results: dict[str, str] = {}
    for message in body.get("messages") or []:
        for call in message.get("tool_calls") or []:
            names[str(call.get("id"))] = str((call.get("function") or {}).get("name"))
        if message.get("role") == "tool":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            results[names.get(str(message.get("tool_call_id")), "")] = str(content or "")
    return results


def file_text(read_result: str) -> str:
    inside = read_result.split("<content>", 1)[-1].split("</content>", 1)[0]
    lines = [
        _NUMBERED.sub("", line, count=1) for line in inside.splitlines() if _NUMBERED.match(line)
    ]
    return "\n".join(lines) + "\n"


class ReadSummarizeWrite:
    def __init__(self, workspace: str) -> None:
        self.workspace = workspace.rstrip("/")

    def __call__(self, body: Any) -> Script:
        body = body if isinstance(body, dict) else {}
        if not body.get("tools"):
            return Script(text="CSV summary")
        results = tool_results(body)
        if "write" in results:
            return Script(text=FINAL_TEXT)
        if "read" in results:
            summary = summarize_csv(file_text(results["read"]))
            arguments = {"filePath": f"{self.workspace}/{SUMMARY_PATH}", "content": summary}
            return Script(tool_calls=[("write", json.dumps(arguments))])
        return Script(
            tool_calls=[("read", json.dumps({"filePath": f"{self.workspace}/{DATA_PATH}"}))]
        )
