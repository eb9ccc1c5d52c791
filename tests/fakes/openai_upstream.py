"""A local OpenAI-compatible chat-completions server (aiohttp).

Speaks the wire format where it matters: ``POST /v1/chat/completions`` JSON or SSE
(``data: {...}\\n\\n`` events, ``data: [DONE]\\n\\n`` last, ``usage: null`` on every
chunk and a final ``choices: []`` usage chunk only with
``stream_options.include_usage``), OpenAI error bodies
(``{"error": {message, type, param, code}}``), ``Authorization: Bearer`` checking
(401 ``invalid_api_key``), and OpenAI's rejection of unknown top-level arguments
(so a leaked ``jetty`` block fails loudly). ``GET /v1/models`` too.

Behaviour per model name: a :class:`Script` registered with :meth:`FakeUpstream.script`
(or ``POST /_control/script`` with the same fields plus ``model``), else a preset
chosen by name (see :data:`PRESETS`: ``fake-429``, ``fake-500``, ``fake-slow``,
``fake-cut``, ``fake-tools``…), else a plain text reply. Requests received are kept
(the last :data:`RECORD_LIMIT`) in :attr:`FakeUpstream.requests` and at
``GET /_control/requests``; client disconnects in :attr:`FakeUpstream.disconnects`.

Standalone (the benchmark's direct baseline)::

    python -m tests.fakes.openai_upstream --port 9000 [--api-key sk-fake]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import RECORD_LIMIT, FakeServer

DEFAULT_TEXT = "Hello! How can I help you today?"
FINGERPRINT = "fp_fake0001"

# What the real API accepts at the top level; anything else is a 400 there too.
KNOWN_ARGUMENTS = frozenset(
    [
        "model",
        "messages",
        "stream",
        "stream_options",
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "service_tier",
        "store",
        "metadata",
        "modalities",
        "audio",
        "prediction",
        "reasoning_effort",
        "web_search_options",
        "functions",
        "function_call",
        "verbosity",
        "prompt_cache_key",
        "safety_identifier",
    ]
)


@dataclass
class Script:
    """How the fake answers one model. Delays are seconds."""

    text: str = DEFAULT_TEXT
    # (function name, JSON arguments) per tool call; when set, no text is sent.
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200
    error_message: str = "The server had an error while processing your request."
    error_type: str = "server_error"
    error_code: str | None = None
    error_param: str | None = None
    retry_after: str | None = None
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    words_per_chunk: int = 1
    # Streams: drop the connection after this many content chunks (no [DONE]).
    cut_after: int | None = None
    # Streams: send an {"error": ...} event after this many content chunks.
    error_after: int | None = None
    usage: bool = True
    finish_reason: str | None = None


PRESETS: dict[str, Script] = {
    "fake-tools": Script(tool_calls=[("get_weather", '{"city": "Paris", "unit": "celsius"}')]),
    "fake-429": Script(
        status=429,
        error_message="Rate limit reached for requests.",
        error_type="requests",
        error_code="rate_limit_exceeded",
        retry_after="7",
    ),
    "fake-500": Script(status=500),
    "fake-400": Script(
        status=400,
        error_message="Invalid value for 'temperature': must be at most 2.",
        error_type="invalid_request_error",
        error_param="temperature",
        error_code="invalid_value",
    ),
    "fake-slow": Script(first_byte_delay=2.0, chunk_delay=0.2),
    "fake-cut": Script(text="one two three four five six", cut_after=3),
    "fake-stream-error": Script(text="one two three four", error_after=2),
    "fake-no-usage": Script(usage=False),
}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


def _error(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def _json(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


class FakeUpstream(FakeServer[Script]):
    url_suffix = "/v1"

    def __init__(self, api_key: str | None = "sk-fake", record_limit: int = RECORD_LIMIT) -> None:
        super().__init__(api_key, presets=PRESETS, default=Script, record_limit=record_limit)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/_control/script", self._control_script)
        self.app.router.add_get("/_control/requests", self._control_requests)
        self.app.router.add_post("/_control/reset", self._control_reset)

    # --- the API ----------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._unauthorised(request)
        data = [{"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"}]
        return _json(200, orjson.dumps({"object": "list", "data": data}))

    def _unauthorised(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        if not given:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            return _json(401, _error(message, "invalid_request_error", None, None))
        key = given.removeprefix("Bearer ")
        masked = key[:3] + "*" * max(0, len(key) - 7) + key[-4:]
        message = f"Incorrect API key provided: {masked}."
        return _json(401, _error(message, "invalid_request_error", None, "invalid_api_key"))

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            message = "We could not parse the JSON body of your request."
            return _json(400, _error(message, "invalid_request_error", None, None))
        if not isinstance(body, dict):
            return _json(400, _error("Invalid body.", "invalid_request_error", None, None))
        self.requests.append(
            RecordedRequest(
                request.path,
                {str(k): v for k, v in request.headers.items()},
                body,
                time.time(),
            )
        )
        if not self._authorised(request):
            return self._unauthorised(request)
        invalid = self._validate(body)
        if invalid is not None:
            return invalid
        model = str(body["model"])
        script = self._script_for(model, body)
        if script.first_byte_delay:
            await asyncio.sleep(script.first_byte_delay)
        if script.status >= 400:
            headers = {"Retry-After": script.retry_after} if script.retry_after else None
            error = _error(
                script.error_message,
                script.error_type,
                script.error_param,
                script.error_code,
            )
            return _json(script.status, error, headers)
        n = int(body.get("n") or 1)
        prompt_tokens = _tokens(orjson.dumps(body.get("messages")).decode())
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage")) and script.usage
            return await self._stream(
                request,
                model=model,
                script=script,
                n=n,
                prompt_tokens=prompt_tokens,
                include_usage=include_usage,
            )
        return _json(200, self._completion(model, script, n, prompt_tokens))

    def _validate(self, body: dict[str, Any]) -> web.Response | None:
        for name in body:
            if name not in KNOWN_ARGUMENTS:
                message = f"Unrecognized request argument supplied: {name}"
                return _json(400, _error(message, "invalid_request_error", None, None))
        if not body.get("model"):
            message = "you must provide a model parameter"
            return _json(400, _error(message, "invalid_request_error", None, None))
        if not body.get("messages"):
            message = "Missing required parameter: 'messages'."
            return _json(
                400,
                _error(message, "invalid_request_error", "messages", "missing_required_parameter"),
            )
        if body.get("stream_options") is not None and not body.get("stream"):
            message = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            return _json(400, _error(message, "invalid_request_error", "stream_options", None))
        return None

    def _usage(self, script: Script, n: int, prompt_tokens: int) -> dict[str, Any]:
        if script.tool_calls:
            completion = sum(_tokens(name + args) for name, args in script.tool_calls) * n
        else:
            completion = _tokens(script.text) * n
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _finish_reason(self, script: Script) -> str:
        return script.finish_reason or ("tool_calls" if script.tool_calls else "stop")

    def _completion(self, model: str, script: Script, n: int, prompt_tokens: int) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if script.tool_calls else script.text,
            "refusal": None,
            "annotations": [],
        }
        if script.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{i}_{uuid.uuid4().hex[:20]}",
                    "type": "function",
                    "function": {"name": name, "arguments": args},
                }
                for i, (name, args) in enumerate(script.tool_calls)
            ]
        document: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish_reason(script),
                }
                for i in range(n)
            ],
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        if script.usage:
            document["usage"] = self._usage(script, n, prompt_tokens)
        return orjson.dumps(document)

    def _deltas(self, script: Script) -> list[dict[str, Any]]:
        """The content deltas of one choice, after the role-bearing first one."""
        if script.tool_calls:
            out: list[dict[str, Any]] = []
            for i, (name, args) in enumerate(script.tool_calls):
                head = {
                    "index": i,
                    "id": f"call_{i}_{uuid.uuid4().hex[:20]}",
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                out.append({"tool_calls": [head]})
                step = max(1, len(args) // 3)
                for start in range(0, len(args), step):
                    fragment = {"index": i, "function": {"arguments": args[start : start + step]}}
                    out.append({"tool_calls": [fragment]})
            return out
        words = script.text.split(" ")
        per = max(1, script.words_per_chunk)
        return [
            {"content": ("" if i == 0 else " ") + " ".join(words[i : i + per])}
            for i in range(0, len(words), per)
        ]

    async def _stream(
        self,
        request: web.Request,
        *,
        model: str,
        script: Script,
        n: int,
        prompt_tokens: int,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        head: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
        tail = {"usage": None} if include_usage else {}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**head, "choices": choices, **tail, **extra}) + b"\n\n"

        # As OpenAI does: a text stream opens with a role-only delta (empty content);
        # a tool-call stream puts the role on the first tool-call delta.
        first_delta: dict[str, Any] = {"role": "assistant", "content": "", "refusal": None}
        try:
            sent = 0
            for index in range(n):
                deltas = self._deltas(script)
                if script.tool_calls:
                    deltas[0] = {**first_delta, "content": None, **deltas[0]}
                else:
                    deltas.insert(0, first_delta)
                for delta in deltas:
                    if script.cut_after is not None and sent >= script.cut_after:
                        # Drop the connection mid-stream: no terminating chunk, no [DONE].
                        assert request.transport is not None
                        request.transport.close()
                        return response
                    if script.error_after is not None and sent >= script.error_after:
                        error = {
                            "message": script.error_message,
                            "type": script.error_type,
                            "param": None,
                            "code": script.error_code,
                        }
                        await response.write(b"data: " + orjson.dumps({"error": error}) + b"\n\n")
                        return response
                    choice = {
                        "index": index,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    await response.write(event([choice]))
                    sent += 1
                    if script.chunk_delay:
                        await asyncio.sleep(script.chunk_delay)
                finish = {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": self._finish_reason(script),
                }
                await response.write(event([finish]))
            if include_usage:
                await response.write(event([], usage=self._usage(script, n, prompt_tokens)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self._hung_up(model)
            raise
        return response

    # --- control API ------------------------------------------------------------------

    async def _control_script(self, request: web.Request) -> web.Response:
        doc = await request.json()
        model = doc.pop("model")
        allowed = {f.name for f in fields(Script)}
        script = replace(Script(), **{k: v for k, v in doc.items() if k in allowed})
        script.tool_calls = [tuple(call) for call in script.tool_calls]  # type: ignore[misc]
        self.script(str(model), script)
        return _json(200, orjson.dumps({"ok": True, "script": asdict(script)}))

    async def _control_requests(self, request: web.Request) -> web.Response:
        return _json(200, orjson.dumps([asdict(r) for r in self.requests]))

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json(200, b'{"ok":true}')


async def _serve(host: str, port: int, api_key: str | None) -> None:
    fake = FakeUpstream(api_key=api_key)
    url = await fake.start(host, port)
    print(f"fake OpenAI upstream on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--api-key", default="sk-fake", help="expected Bearer key")
    parser.add_argument("--no-auth", action="store_true", help="accept any or no key")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, None if args.no_auth else args.api_key))


if __name__ == "__main__":
    main()
