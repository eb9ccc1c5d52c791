"""In-process cost of translating one request and its answer between wire
formats (no I/O): the part of the added latency that translation alone is."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from services.gateway.ingress.anthropic import message_from_completion
from services.gateway.ingress.anthropic_translate import MessagesRequest, parse_request, to_openai
from services.proxy.providers.anthropic import response_from_message
from services.proxy.providers.anthropic_translate import build_request
from services.proxy.providers.base import UpstreamCall
from shared.openai_chat import parse_chat_request

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": f"tool_{i}",
            "description": "Does a thing with a file in the workspace.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
    for i in range(8)
]
CHAT_BODY = orjson.dumps(
    {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            *[
                {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20}
                for i in range(9)
            ],
        ],
        "tools": TOOLS,
    }
)
ANTHROPIC_ANSWER: dict[str, Any] = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "Here is the summary. " * 10}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 812, "output_tokens": 64, "cache_read_input_tokens": 0},
}
MESSAGES_BODY = orjson.dumps(
    {
        "model": "openai/gpt-4o-mini",
        "max_tokens": 1024,
        "system": "You are a careful assistant.",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 20}
            for i in range(9)
        ],
        "tools": [
            {
                "name": t["function"]["name"],
                "description": t["function"]["description"],
                "input_schema": t["function"]["parameters"],
            }
            for t in TOOLS
        ],
    }
)
OPENAI_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Here is the summary. " * 10},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 812, "completion_tokens": 64, "total_tokens": 876},
}


def _outbound_anthropic() -> None:
    request = parse_chat_request(CHAT_BODY)
    body, _ = build_request(
        UpstreamCall(model="claude-sonnet-4-5", request=request, body=CHAT_BODY), stream=False
    )
    orjson.dumps(body)
    response_from_message(ANTHROPIC_ANSWER, "claude-sonnet-4-5")


def _inbound_anthropic() -> None:
    req = parse_request(MESSAGES_BODY, MessagesRequest)
    chat = orjson.dumps(to_openai(req, betas=[], stream=False))
    parse_chat_request(chat)
    orjson.dumps(message_from_completion(OPENAI_ANSWER, "openai/gpt-4o-mini"))


def _per_call_us(fn: Callable[[], None], rounds: int = 2000) -> float:
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - started) / rounds)
    return best * 1e6


def measure() -> list[tuple[str, float]]:
    """(what, microseconds per request and answer), best of three."""
    return [
        ("chat request → Anthropic Messages → chat answer (10 messages, 8 tools)",
         _per_call_us(_outbound_anthropic)),
        ("Anthropic Messages request → chat → Messages answer (9 messages, 8 tools)",
         _per_call_us(_inbound_anthropic)),
    ]  # fmt: skip
