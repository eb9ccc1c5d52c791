"""Health, the OpenAI chat routes and the three other ingress formats."""

from __future__ import annotations

from services.gateway.ingress.anthropic_translate import MessagesRequest
from services.gateway.ingress.gemini_translate import GenerateContentRequest
from services.gateway.ingress.responses_translate import ResponsesRequest
from services.gateway.openapi.models import (
    OPEN_OBJECT,
    SSE,
    ChatCompletion,
    ErrorResponse,
    Health,
    ModelList,
)
from services.gateway.openapi.registry import Body, Operation, Param
from shared.openai_chat import ChatCompletionRequest

_CHAT_DESCRIPTION = (
    "OpenAI's chat completions. The optional `jetty` block names the `task` (and, with "
    "`runbook: true`, runs an agent in a sandbox: `agent`, `file_paths`, `budget`, "
    "`timeout_s`). With `stream: true` the answer is SSE `chat.completion.chunk` events; "
    "a runbook's chunks carry an `id` (resume at `/api/v1/trajectories/{id}/events`) and "
    "a `jetty` field with the structured progress. A `stream: false` runbook that is "
    "still running answers 202 with the same `chat.completion` shape."
)

_ERRORS = {
    400: ("invalid request", ErrorResponse),
    404: ("unknown model or file", ErrorResponse),
    413: ("body too large", ErrorResponse),
    429: ("rate limited upstream", ErrorResponse),
    502: ("the provider failed", ErrorResponse),
    503: ("no proxy available", ErrorResponse),
}


def _operation_id(name: str, path: str) -> str:
    return name if path.startswith("/v1") else name + "_root"


def _json_or_sse(description: str) -> tuple[str, Body]:
    return description, {"application/json": OPEN_OBJECT, "text/event-stream": SSE}


def _chat(path: str) -> Operation:
    return Operation(
        "post",
        path,
        "Create a chat completion (or run a runbook)",
        "chat",
        description=_CHAT_DESCRIPTION,
        request=ChatCompletionRequest,
        responses={
            200: ("the completion", {"application/json": ChatCompletion, "text/event-stream": SSE}),
            202: ("a runbook still running (stream: false)", ChatCompletion),
            **_ERRORS,
        },
        extra={"operationId": _operation_id("create_chat_completion", path)},
    )


_HEALTH: dict[int, tuple[str, Body | None]] = {200: ("ok", Health)}

OPERATIONS = [
    Operation("get", "/healthz", "Liveness", "health", responses=_HEALTH, public=True),
    Operation(
        "get",
        "/readyz",
        "Readiness (connected to NATS)",
        "health",
        responses={**_HEALTH, 503: ("not ready", Health)},
        public=True,
    ),
    _chat("/v1/chat/completions"),
    _chat("/chat/completions"),
    Operation(
        "get",
        "/v1/models",
        "The models this deployment routes",
        "chat",
        responses={200: ("models", ModelList)},
    ),
    Operation(
        "post",
        "/v1/messages",
        "Anthropic Messages API (what claude-code speaks)",
        "ingress",
        description="Token in `x-api-key` or Bearer. `?beta=true` accepted.",
        request=MessagesRequest,
        responses={
            200: _json_or_sse("an Anthropic message or SSE"),
            **_ERRORS,
        },
    ),
    Operation(
        "post",
        "/v1/messages/count_tokens",
        "Anthropic token count (estimated)",
        "ingress",
        request=OPEN_OBJECT,
        responses={
            200: (
                "the count",
                {"type": "object", "properties": {"input_tokens": {"type": "integer"}}},
            ),
            **_ERRORS,
        },
    ),
    *[
        Operation(
            "post",
            path,
            "OpenAI Responses API (what codex speaks); no stored state",
            "ingress",
            request=ResponsesRequest,
            responses={
                200: _json_or_sse("a Response or SSE"),
                **_ERRORS,
            },
            extra={"operationId": _operation_id("create_response", path)},
        )
        for path in ("/v1/responses", "/responses")
    ],
    Operation(
        "post",
        "/{version}/models/{target}",
        "Gemini generateContent / streamGenerateContent (what gemini-cli speaks)",
        "ingress",
        description="`target` is `<model>:generateContent` or `<model>:streamGenerateContent` "
        "(`?alt=sse`). Token in `x-goog-api-key`, Bearer or `?key=`.",
        params=(
            Param("version", "path", schema={"type": "string", "enum": ["v1beta", "v1"]}),
            Param("target", "path", "model and method, e.g. gemini-2.5-pro:generateContent"),
        ),
        request=GenerateContentRequest,
        responses={
            200: _json_or_sse("a GenerateContentResponse or SSE"),
            **_ERRORS,
        },
    ),
]
