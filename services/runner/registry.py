"""The agent adapters this runner offers, by agent name."""

from __future__ import annotations

from services.runner.agents.base import AgentAdapter
from services.runner.agents.claude_code import ClaudeCodeAdapter
from services.runner.agents.codex import CodexAdapter
from services.runner.agents.gemini_cli import GeminiCliAdapter
from services.runner.agents.opencode import OpencodeAdapter


def build_adapters() -> dict[str, AgentAdapter]:
    adapters: list[AgentAdapter] = [
        ClaudeCodeAdapter(),
        CodexAdapter(),
        GeminiCliAdapter(),
        OpencodeAdapter(),
    ]
    return {adapter.name: adapter for adapter in adapters}
