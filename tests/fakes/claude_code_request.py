"""Generates a request shaped like claude-code's (2.1.x) ``POST /v1/messages?beta=true``.

Synthetic, deterministic, and shaped after ``../shared/agent-clis.md``: ``x-api-key``
auth, ``anthropic-version: 2023-06-01``, a long ``anthropic-beta`` list (with one
value no API knows yet), a ~76 KB streaming body with ``max_tokens: 64000``,
``thinking: {"type": "adaptive"}``, ``context_management``, ``output_config``,
``metadata.user_id``, ``system`` text blocks with ``cache_control``, 24 tools, and a
conversation with a Write tool round trip, a signed thinking block and a
``{"role": "system"}`` message in the middle. No captured traffic is committed: the
texts are filler of the right size.

Write a fixture file (the API key is a placeholder the replayer fills in)::

    python -m tests.fakes.claude_code_request out.json [--model claude-opus-4-7]
"""

from __future__ import annotations

import argparse
import itertools
import uuid
from pathlib import Path
from typing import Any

import orjson

API_KEY_PLACEHOLDER = "<api-key>"
PATH = "/v1/messages?beta=true"
BETAS = (
    "claude-code-20250219",
    "interleaved-thinking-2025-05-14",
    "fine-grained-tool-streaming-2025-05-14",
    "context-management-2025-06-27",
    "prompt-caching-scope-2026-01-05",
    "effort-2025-11-24",
    "tool-examples-2025-10-29",
    "jetty-unknown-future-beta-2099-01-01",
)
TOOL_NAMES = (
    "Task",
    "Bash",
    "Glob",
    "Grep",
    "ExitPlanMode",
    "Read",
    "Edit",
    "Write",
    "NotebookEdit",
    "WebFetch",
    "TodoWrite",
    "WebSearch",
    "BashOutput",
    "KillShell",
    "Skill",
    "SlashCommand",
    "AskUserQuestion",
    "EnterPlanMode",
    "ListMcpResourcesTool",
    "ReadMcpResourceTool",
    "LSP",
    "mcp__ide__getDiagnostics",
    "mcp__ide__executeCode",
    "Monitor",
)
SIGNATURE = "EqQBCkYIBhgCKkDfakeSignature0123456789abcdef=="
MID_SYSTEM_TEXT = "The user switched to plan mode: do not edit files until they approve."
_FILLER = (
    "the tool reads files in the workspace and returns their contents with line numbers "
    "use absolute paths prefer dedicated tools over shell commands when a task needs "
    "several steps track them with the todo list keep answers short and cite paths"
)
_WORDS = _FILLER.split(" ")


def _filler(chars: int, seed: int) -> str:
    words = itertools.islice(itertools.cycle(_WORDS), seed % len(_WORDS), None)
    out: list[str] = []
    size = 0
    for word in words:
        if size >= chars:
            break
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def _tool(i: int, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": _filler(2000, i),
        "input_schema": {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "file_path": {"type": "string", "description": "The absolute path of the file"},
                "content": {"type": "string", "description": "What to write"},
                "timeout": {"type": "number", "description": "Milliseconds, at most 600000"},
            },
            "required": ["file_path"],
            "additionalProperties": False,
        },
    }


def build(model: str = "claude-opus-4-7") -> dict[str, Any]:
    """``{"path", "headers", "body"}`` of one claude-code-like call."""
    tool_id = "toolu_01" + "A" * 22
    ephemeral = {"type": "ephemeral"}
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 64000,
        "stream": True,
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "metadata": {
            "user_id": f"user_{'0' * 64}_account__session_{uuid.UUID(int=7)}",
        },
        "system": [
            {
                "type": "text",
                "text": "You are Claude Code, Anthropic's official CLI for Claude.",
                "cache_control": ephemeral,
            },
            {"type": "text", "text": _filler(14000, 1), "cache_control": ephemeral},
        ],
        "tools": [_tool(i, name) for i, name in enumerate(TOOL_NAMES)],
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "text",
                        "text": "<system-reminder>\n" + _filler(3000, 2) + "\n</system-reminder>",
                    },
                    {"type": "text", "text": "Write hello.txt containing 'hi'."},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should use Write.", "signature": SIGNATURE},
                    {"type": "text", "text": "I'll create the file."},
                    {
                        "type": "tool_use",
                        "id": tool_id,
                        "name": "Write",
                        "input": {"file_path": "/workspace/hello.txt", "content": "hi"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": tool_id,
                        "content": "File created successfully at: /workspace/hello.txt",
                    }
                ],
            },
            {"role": "system", "content": MID_SYSTEM_TEXT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Now say done.", "cache_control": ephemeral},
                ],
            },
        ],
    }
    headers = {
        "accept": "application/json",
        "content-type": "application/json",
        "user-agent": "claude-cli/2.1.197 (external, cli)",
        "x-app": "cli",
        "x-api-key": API_KEY_PLACEHOLDER,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": ",".join(BETAS),
        "anthropic-dangerous-direct-browser-access": "true",
        "x-stainless-lang": "js",
        "x-stainless-retry-count": "0",
        "x-stainless-timeout": "600",
    }
    return {"path": PATH, "headers": headers, "body": body}


def write(path: Path, model: str = "claude-opus-4-7") -> Path:
    path.write_bytes(orjson.dumps(build(model), option=orjson.OPT_INDENT_2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", default="claude-opus-4-7")
    args = parser.parse_args()
    write(args.out, args.model)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
