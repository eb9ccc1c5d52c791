"""The Responses API's objects built from a chat completion: the Response shell
and object, its output items and parts, usage and errors (used for whole answers
and by the stream translator in :mod:`services.gateway.ingress.responses`)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from services.gateway.ingress.responses_translate import (
    ENCRYPTED_REASONING,
    JSON,
    ResponsesRequest,
    encode_thinking,
)
from shared.errors import ApiError

# --- answer: chat → Responses ----------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_object(usage: JSON | None) -> JSON | None:
    """Chat ``usage`` → Responses ``usage`` (cached and reasoning counts kept)."""
    if not usage:
        return None
    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    input_tokens = int(usage.get("prompt_tokens") or 0)
    output_tokens = int(usage.get("completion_tokens") or 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": int(prompt.get("cached_tokens") or 0),
            "cache_write_tokens": int(prompt.get("cache_creation_tokens") or 0),
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": int(completion.get("reasoning_tokens") or 0)},
        "total_tokens": int(usage.get("total_tokens") or input_tokens + output_tokens),
    }


# finish_reason → why a response is incomplete (others complete it).
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass
class ResponseShell:
    """What every Response object of one call repeats: the request's settings."""

    id: str
    created_at: int
    model: str
    echo: JSON
    include_thinking: bool

    @classmethod
    def of(cls, req: ResponsesRequest, response_id: str) -> ResponseShell:
        text: JSON = {"format": {"type": "text"}}
        if req.text is not None:
            text["format"] = req.text.format or text["format"]
            if req.text.verbosity is not None:
                text["verbosity"] = req.text.verbosity
        reasoning = req.reasoning
        echo: JSON = {
            "background": False,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": None,
            "metadata": req.metadata or {},
            "parallel_tool_calls": (
                True if req.parallel_tool_calls is None else req.parallel_tool_calls
            ),
            "previous_response_id": None,
            "prompt_cache_key": req.prompt_cache_key,
            "reasoning": {
                "effort": reasoning.effort if reasoning else None,
                "summary": reasoning.summary if reasoning else None,
            },
            "safety_identifier": req.safety_identifier,
            "service_tier": req.service_tier or "auto",
            # Nothing is kept, whatever the client asked for.
            "store": False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": text,
            "tool_choice": req.tool_choice if req.tool_choice is not None else "auto",
            "tools": [
                {
                    "type": "function",
                    "name": t["name"],
                    "description": t.get("description"),
                    "parameters": t.get("parameters"),
                    "strict": bool(t.get("strict")),
                }
                for t in req.tools or ()
                if t.get("type") == "function"
            ],
            "top_logprobs": 0,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": "disabled",
        }
        if req.user is not None:
            echo["user"] = req.user
        return cls(
            id=response_id,
            created_at=int(time.time()),
            model=req.model,
            echo=echo,
            include_thinking=ENCRYPTED_REASONING in (req.include or ()),
        )

    def document(
        self,
        status: str,
        output: list[JSON],
        *,
        usage: JSON | None = None,
        error: JSON | None = None,
        incomplete: str | None = None,
        extra: JSON | None = None,
    ) -> JSON:
        doc: JSON = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.model,
            "output": output,
            **self.echo,
        }
        if usage is not None:
            doc["usage"] = usage
        if extra:
            doc.update(extra)
        return doc

    def status_of(self, finish_reason: str | None) -> tuple[str, str | None]:
        incomplete = INCOMPLETE_REASONS.get(finish_reason or "")
        return ("incomplete", incomplete) if incomplete else ("completed", None)

    def reasoning_item(self, text: str, blocks: list[Any]) -> JSON:
        item: JSON = {"id": new_id("rs"), "type": "reasoning", "summary": [], "status": "completed"}
        item["content"] = [{"type": "reasoning_text", "text": text}] if text else []
        if blocks and self.include_thinking:
            item["encrypted_content"] = encode_thinking(blocks)
        return item


def output_text_part(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(call: JSON, status: str = "completed") -> JSON:
    function = call.get("function") or {}
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or new_id("call"),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
    }


def response_object(shell: ResponseShell, completion: JSON) -> JSON:
    """A ``chat.completion`` (first choice) as a Response object."""
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    message = choice.get("message") or {}
    output: list[JSON] = []
    reasoning = message.get("reasoning_content") or ""
    blocks = message.get("thinking_blocks") or []
    if reasoning or blocks:
        output.append(shell.reasoning_item(reasoning, blocks))
    content: list[JSON] = []
    if message.get("content"):
        content.append(output_text_part(message["content"]))
    if message.get("refusal"):
        content.append({"type": "refusal", "refusal": message["refusal"]})
    if content:
        output.append(
            {
                "id": new_id("msg"),
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": content,
            }
        )
    output.extend(function_call_item(call) for call in message.get("tool_calls") or ())
    status, incomplete = shell.status_of(choice.get("finish_reason"))
    shell.model = completion.get("model") or shell.model
    metadata = completion.get("jetty_metadata")
    extra = {"jetty_metadata": metadata} if metadata is not None else None
    return shell.document(
        status,
        output,
        usage=usage_object(completion.get("usage")),
        incomplete=incomplete,
        extra=extra,
    )


# ResponseErrorCode is a closed enum; these are the ones our errors can be.
_FAILED_CODES = {429: "rate_limit_exceeded", 400: "invalid_prompt"}


def error_object(exc: ApiError) -> JSON:
    """A ``response.failed`` Response's ``error``. codex parses ``rate_limit_exceeded``
    messages for "try again in Ns" and retries after that delay."""
    code = _FAILED_CODES.get(exc.status, "server_error")
    if exc.code in ("context_length_exceeded", "insufficient_quota"):
        code = exc.code  # the ones codex treats specially, whatever the enum says
    message = exc.message
    if code == "rate_limit_exceeded" and exc.retry_after is not None:
        message += f" Please try again in {max(0.0, exc.retry_after):g}s."
    return {"code": code, "message": message}
