"""check_chat_request (the gateway's check without building models) accepts and
refuses exactly what parse_chat_request (the pydantic model) does, with the same
OpenAI-shaped error."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.errors import InvalidRequest
from shared.openai_chat import ChatHead, _plain_head, check_chat_request, parse_chat_request

USER = {"role": "user", "content": "hi"}
DOCS: list[Any] = [
    {"model": "m", "messages": [USER]},
    {"model": "m", "messages": [USER], "stream": True, "stream_options": {"include_usage": True}},
    {"model": "m", "messages": [USER], "stream": False, "stream_options": {"include_usage": True}},
    {"model": "m", "messages": [USER], "stream": None, "temperature": 1, "top_p": 0.5},
    {"model": "m", "messages": [USER], "temperature": 2.5},
    {"model": "m", "messages": [USER], "temperature": True},
    {"model": "m", "messages": [USER], "temperature": "1"},
    {"model": "m", "messages": [USER], "top_p": -0.1},
    {"model": "m", "messages": [USER], "max_tokens": 0},
    {"model": "m", "messages": [USER], "max_tokens": 5.0},
    {"model": "m", "messages": [USER], "n": 129},
    {"model": "m", "messages": [USER], "stop": ["a", "b", "c", "d", "e"]},
    {"model": "m", "messages": [USER], "stop": "x", "seed": 7, "user": "u"},
    {"model": "m", "messages": [USER], "stream": "yes"},
    {"model": "m", "messages": [USER], "stream_options": {"include_usage": 1}},
    {"model": "m", "messages": [USER], "tools": [{"type": "function"}], "tool_choice": "auto"},
    {"model": "m", "messages": [USER], "tools": ["x"]},
    {"model": "m", "messages": [USER], "response_format": "json"},
    {"model": "m", "messages": [USER], "presence_penalty": 3},
    {"model": "m", "messages": [USER], "unknown_field": {"anything": [1]}},
    {"model": "", "messages": [USER]},
    {"model": "m" * 257, "messages": [USER]},
    {"model": 5, "messages": [USER]},
    {"model": "m", "messages": []},
    {"model": "m", "messages": {"role": "user"}},
    {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
    {"model": "m", "messages": [{"content": "x"}]},
    {"model": "m", "messages": [{"role": ["user"], "content": "x"}]},
    {"model": "m", "messages": [{"role": "user", "content": 5}]},
    {"model": "m", "messages": [{"role": "user", "content": None, "name": "n"}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "u", "detail": "low"}}],
            }
        ],
    },
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": 3}]}]},
    {"model": "m", "messages": [{"role": "user", "content": ["text"]}]},
    {
        "model": "m",
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": "ok"},
        ],
    },
    {"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
    {"model": "m", "messages": [{"role": "tool", "tool_call_id": 5, "content": "x"}]},
    {"model": "m", "messages": [USER], "jetty": {"task": "triage", "store": False}},
    {"model": "m", "messages": [USER], "jetty": {"task": "bad task!"}},
    {"model": "m", "messages": [USER], "jetty": {"runbook": True, "agent": "codex"}},
    {"model": "m", "messages": [USER], "jetty": {"nope": 1}},
    {"model": "m", "messages": [USER], "jetty": None},
    {"messages": [USER]},
    {"model": "m"},
    [1, 2],
]


def _outcome(fn: Any, body: bytes) -> Any:
    try:
        req = fn(body)
    except InvalidRequest as exc:
        return ("error", exc.status, exc.to_dict())
    head = req if isinstance(req, ChatHead) else ChatHead.of(req)
    return ("ok", head.model, head.stream, head.include_usage, head.task, head.jetty)


@pytest.mark.parametrize("doc", DOCS)
def test_the_check_agrees_with_the_model(doc: Any) -> None:
    body = orjson.dumps(doc)
    assert _outcome(check_chat_request, body) == _outcome(parse_chat_request, body)


def test_the_common_document_takes_the_plain_path() -> None:
    doc = {"model": "m", "messages": [USER], "stream": True, "temperature": 0.2}
    head = _plain_head(doc)
    assert head == ChatHead("m", True, False, None)
    assert head.task == "_chat"


def test_invalid_json_is_refused_the_same_way() -> None:
    for body in (b"{", b"", b'"text"'):
        assert _outcome(check_chat_request, body) == _outcome(parse_chat_request, body)
