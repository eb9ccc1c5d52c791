"""A scripted codex conversation for the fake OpenAI upstream (chat completions, as
the gateway's Responses ingress translates codex's requests).

Each answer is chosen from what the request carries, never from a call counter:

1. no result of a read yet: call ``exec_command`` with ``cat <workspace>/uploads/data.csv``;
2. the read's output is in a ``tool`` message: parse the CSV out of it and call
   ``exec_command`` with an ``apply_patch`` heredoc adding
   ``<workspace>/results/summary.md`` (rows, and the sum of the last numeric
   column). codex runs ``apply_patch`` itself rather than in a shell (its prompt
   tells the model to edit files that way) and reports a ``file_change`` item;
3. the write's result is there too: a final text answer.

If the read failed (its report says a non-zero exit code), the answer is a final
text saying so, and nothing is written.

codex hands a command's output back as a small report (``Chunk ID``, ``Wall time``,
``Process exited with code N``, ``Output:`` and then the output), so the CSV is the
text after the ``Output:`` line. Usage is in every answer (the fake adds it when
the request asks for it, and the gateway always does).

Use: ``upstream.respond_with(MODEL, codex_scenario(str(workspace)))``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakes.openai_upstream import Script

SUMMARY_PATH = "results/summary.md"
INPUT_PATH = "uploads/data.csv"
FINAL_TEXT = f"I read {INPUT_PATH} and wrote its summary to {SUMMARY_PATH}."
READ_FAILED = f"I could not read {INPUT_PATH}:"


@dataclass(frozen=True)
class CsvSummary:
    rows: int
    column: str
    total: float

    def markdown(self) -> str:
        total = int(self.total) if self.total == int(self.total) else self.total
        return f"# Summary of {INPUT_PATH}\n\nrows: {self.rows}\n{self.column} total: {total}\n"


def summarise(text: str) -> CsvSummary:
    """Rows and the sum of the last column whose every value is a number."""
    records = list(csv.reader(io.StringIO(text.strip())))
    header, rows = records[0], [r for r in records[1:] if r]
    for index in reversed(range(len(header))):
        try:
            total = sum(float(row[index]) for row in rows)
        except (ValueError, IndexError):
            continue
        return CsvSummary(rows=len(rows), column=header[index], total=total)
    return CsvSummary(rows=len(rows), column="(none)", total=0.0)


def command_output(tool_message: str) -> str:
    """The output part of codex's report of a finished command."""
    _, marker, output = tool_message.partition("\nOutput:\n")
    return output if marker else tool_message


def add_file(workspace: str, content: str) -> str:
    """An ``apply_patch`` command adding ``results/summary.md`` with ``content``."""
    added = "".join(f"+{line}\n" for line in content.splitlines())
    return (
        "apply_patch <<'EOF'\n*** Begin Patch\n"
        f"*** Add File: {workspace}/{SUMMARY_PATH}\n{added}*** End Patch\nEOF"
    )


def _calls_and_results(messages: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """(command, output or None) of every ``exec_command`` call in the conversation."""
    results = {
        str(m.get("tool_call_id")): _content(m.get("content"))
        for m in messages
        if m.get("role") == "tool"
    }
    out = []
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except ValueError:
                arguments = {}
            out.append((str(arguments.get("cmd", "")), results.get(str(call.get("id")))))
    return out


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def codex_scenario(workspace: str) -> Callable[[Any], Script]:
    workspace = workspace.rstrip("/")
    read = f"cat {workspace}/{INPUT_PATH}"

    def respond(body: Any) -> Script:
        calls = _calls_and_results(body.get("messages") or [])
        read_output = next((out for cmd, out in calls if cmd == read and out is not None), None)
        wrote = any(SUMMARY_PATH in cmd and out is not None for cmd, out in calls)
        if read_output is None:
            return Script(tool_calls=[("exec_command", json.dumps({"cmd": read}))])
        if "Process exited with code 0\n" not in read_output:
            return Script(text=f"{READ_FAILED} {command_output(read_output).strip()}")
        if not wrote:
            summary = summarise(command_output(read_output)).markdown()
            return Script(
                tool_calls=[("exec_command", json.dumps({"cmd": add_file(workspace, summary)}))]
            )
        return Script(text=FINAL_TEXT)

    return respond
