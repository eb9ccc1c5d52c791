"""A scripted claude-code conversation that runs shell commands in its sandbox:
the attacker's seat for the sandbox tests.

``BashScript(commands)`` answers each request from its body alone: while fewer
``Bash`` results than commands have come back, the next command as a ``Bash``
tool call; then a final text. Every result the agent sent back is kept in
``outputs`` (in order), so a test reads what each command printed inside the
sandbox.
"""

from __future__ import annotations

from typing import Any

import orjson

from tests.fakes.anthropic_upstream import Script

FINAL = "Done."


def bash_results(body: dict[str, Any]) -> list[str]:
    """The text of every Bash tool result in the conversation, in order."""
    bash_ids: set[str] = set()
    results: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_use" and block.get("name") == "Bash":
                bash_ids.add(str(block.get("id")))
            elif block.get("type") == "tool_result" and block.get("tool_use_id") in bash_ids:
                inner = block.get("content")
                if isinstance(inner, list):
                    inner = "\n".join(str(b.get("text", "")) for b in inner if isinstance(b, dict))
                results.append(str(inner or ""))
    return results


class BashScript:
    """The responder: ``(request body) -> Script``."""

    def __init__(self, commands: list[str], timeout_ms: int = 120_000) -> None:
        self.commands = commands
        self.timeout_ms = timeout_ms
        self.outputs: list[str] = []

    def __call__(self, body: Any) -> Script:
        results = bash_results(body if isinstance(body, dict) else {})
        if len(results) > len(self.outputs):
            self.outputs = results
        if len(results) >= len(self.commands):
            return Script(text=FINAL)
        arguments = {"command": self.commands[len(results)], "timeout": self.timeout_ms}
        return Script(tool_calls=[("Bash", orjson.dumps(arguments).decode())])
