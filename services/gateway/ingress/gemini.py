"""The Gemini API in and out: ``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent``, as gemini-cli and the google-genai SDKs call it, over
the same call path as chat completions. ``/v1/models/…`` is served the same way
(google-genai 3.x defaults to ``v1``).

**Auth.** Our API token in ``x-goog-api-key`` (what the SDKs and gemini-cli send),
``Authorization: Bearer``, or Google's ``?key=`` query parameter (accepted under
``/v1beta/`` only, and never logged: the gateway writes no access log and its error
log names the path alone).

**Model.** The model is everything between ``models/`` and the last ``:`` of the
path, slashes included, and goes to the router as is: bare names route by family
(``/v1beta/models/gemini-2.5-flash:generateContent`` → the Gemini adapter), and the
router's ``provider/model`` form works unchanged because the SDKs put the model in
the path verbatim (``genai.Client(...).models.generate_content(model="mock/echo")``
calls ``/v1beta/models/mock/echo:generateContent``; ``mock%2Fecho`` works too).

**Streams.** ``:streamGenerateContent?alt=sse`` answers ``text/event-stream`` events
``data: <GenerateContentResponse>\\r\\n\\r\\n`` with the parts of each piece; the last
event carries every candidate's ``finishReason`` and the ``usageMetadata`` (one
piece is held back so the finish reason rides on real content, as Google sends it).
Without ``alt=sse`` the documents stream as one JSON array (``[{…}\\r\\n,{…}]``), as
the real API does. Function calls are sent whole, once their arguments are complete.

**Errors** are Google's ``{"error": {"code", "message", "status", "details"}}``
(400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND,
429 RESOURCE_EXHAUSTED with a ``RetryInfo`` detail, 500 INTERNAL, 502 and 503
UNAVAILABLE, 504 DEADLINE_EXCEEDED), with our error code in an ``ErrorInfo``
detail; every error under ``/v1beta/`` takes this shape, the auth middleware's 401
and unknown routes included. Under ``/v1/`` (shared with the OpenAI API's
``GET /v1/models``) the handler's own errors do, but a bad token or a wrong HTTP
method gets the middleware's OpenAI-shaped body (the Google SDKs still raise on the
status). An error after a stream started is one last ``{"error": …}`` document.

Mapping decisions (lossy where the two APIs differ):

* **Contents.** ``systemInstruction`` text parts → ``system`` messages; ``user`` (and
  the legacy ``function``) turns → ``user`` messages (text, ``inlineData`` images as
  data URLs, wav/mp3 as ``input_audio``, other inline types as ``file`` parts,
  ``fileData`` as an image URL — the MIME type is not carried); ``model`` turns →
  ``assistant`` messages, ``functionCall`` parts → ``tool_calls`` (the call's ``id``,
  else ``call_<message>_<part>``) with their ``thoughtSignature`` as
  ``extra_content.google.thought_signature`` (the Gemini adapter sends it back) in
  standard base64 (google-genai re-encodes the bytes URL-safe; Gemini 3 checks them).
  ``functionResponse`` parts → ``tool`` messages, paired with an unanswered call by
  ``id``, else by name in order (a response no call matches is a 400); a response
  ``{"output": "<text>"}`` is sent as the text, anything else as JSON. Thought parts,
  code execution parts and a model turn's media are dropped.
* **Tools.** ``functionDeclarations`` → function tools (``parametersJsonSchema`` as
  is; ``parameters``, Gemini's OpenAPI subset, as JSON Schema with lower-case types
  and ``nullable`` as a ``null`` type). Google-side tools (``googleSearch``,
  ``codeExecution``, ``urlContext``…) are dropped. ``functionCallingConfig`` NONE →
  ``none``, ANY → ``required``, or the one allowed function, or ``allowed_tools``;
  AUTO and VALIDATED → the default.
* **generationConfig.** temperature, topP → ``top_p``, topK → ``top_k`` (an extension
  the Anthropic and Gemini adapters read), maxOutputTokens →
  ``max_completion_tokens``, stopSequences → ``stop`` (at most 4), candidateCount →
  ``n``, seed, penalties; ``responseMimeType: application/json`` → ``response_format``
  (``json_schema`` when a ``responseJsonSchema``/``responseSchema`` is given, else
  ``json_object``; other MIME types are a 400); ``thinkingConfig.thinkingLevel`` →
  ``reasoning_effort`` as is, ``thinkingBudget`` 0 → ``none``, ≤1024 → ``low``,
  ≤8192 → ``medium``, more → ``high``, -1 (dynamic) → nothing. ``safetySettings``,
  ``responseModalities``, ``speechConfig``… are not sent; ``cachedContent`` is a 400.
* **Answer.** ``content`` → a text part; ``reasoning_content`` → a ``thought: true``
  part only if ``thinkingConfig.includeThoughts`` asked for it; tool calls →
  ``functionCall`` parts with their ``id`` and ``thoughtSignature``; arguments that
  are not a JSON object make the candidate end with ``MALFORMED_FUNCTION_CALL``.
  Finish reasons: stop and tool_calls → STOP, length → MAX_TOKENS, content_filter →
  SAFETY. Usage: ``promptTokenCount``, ``candidatesTokenCount`` (completion minus
  reasoning), ``thoughtsTokenCount``, ``cachedContentTokenCount``,
  ``totalTokenCount``. ``modelVersion`` is the model that answered, ``responseId``
  the upstream's id.
"""

from __future__ import annotations

import logging
import time

import orjson
from aiohttp import web

from services.gateway.calls import open_call, read_body
from services.gateway.ingress.gemini_translate import JSON, invalid, parse_request, to_chat
from services.gateway.middleware import TRAJECTORY_HEADER, register_error_renderer
from services.gateway.sse import relay_stream
from services.gateway.state import GATEWAY, auth_of
from shared.errors import ApiError, NotFound
from shared.openai_chat import check_chat_request

log = logging.getLogger(__name__)

INGRESS = "gemini"
PREFIX = "/v1beta"
METHODS = frozenset({"generateContent", "streamGenerateContent"})

# --- errors ----------------------------------------------------------------------------

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_document(exc: ApiError) -> JSON:
    status = _STATUS.get(exc.status) or ("INTERNAL" if exc.status >= 500 else "INVALID_ARGUMENT")
    details: list[JSON] = []
    if exc.code:
        info: JSON = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": exc.code.upper(),
            "domain": "jetty",
        }
        if exc.param:
            info["metadata"] = {"param": exc.param}
        details.append(info)
    if exc.retry_after is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{max(0, round(exc.retry_after))}s",
            }
        )
    error: JSON = {"code": exc.status, "message": exc.message, "status": status}
    if details:
        error["details"] = details
    return {"error": error}


def render_error(exc: ApiError) -> bytes:
    return orjson.dumps(error_document(exc))


register_error_renderer(PREFIX, render_error)

# --- answer: chat → Gemini ---------------------------------------------------------------

FINISH_REASONS = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}
MALFORMED = "MALFORMED_FUNCTION_CALL"


def usage_metadata(usage: JSON | None) -> JSON | None:
    if not usage:
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    thoughts = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    doc: JSON = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": max(0, completion - thoughts),
        "totalTokenCount": int(usage.get("total_tokens") or prompt + completion),
    }
    if cached:
        doc["cachedContentTokenCount"] = cached
    if thoughts:
        doc["thoughtsTokenCount"] = thoughts
    return doc


def function_call_part(call: JSON) -> JSON | None:
    """A chat tool call as a ``functionCall`` part; None when its arguments are not a
    JSON object (Gemini's args must be one)."""
    function = call.get("function") or {}
    try:
        args = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(args, dict):
        return None
    fc: JSON = {"name": function.get("name") or "", "args": args}
    if call.get("id"):
        fc["id"] = call["id"]
    part: JSON = {"functionCall": fc}
    google = (call.get("extra_content") or {}).get("google") or {}
    if isinstance(google, dict) and isinstance(google.get("thought_signature"), str):
        part["thoughtSignature"] = google["thought_signature"]
    return part


def _call_parts(calls: list[JSON]) -> tuple[list[JSON], bool]:
    parts, malformed = [], False
    for call in calls:
        part = function_call_part(call)
        if part is None:
            malformed = True
        else:
            parts.append(part)
    return parts, malformed


def _candidate(index: int, parts: list[JSON], finish: str | None) -> JSON:
    candidate: JSON = {"content": {"role": "model", "parts": parts}}
    if finish is not None:
        candidate["finishReason"] = finish
        if finish == MALFORMED:
            candidate["finishMessage"] = (
                "The model's function call arguments were not a JSON object."
            )
    candidate["index"] = index
    return candidate


def response_document(completion: JSON, include_thoughts: bool) -> JSON:
    """A ``chat.completion`` as a ``GenerateContentResponse``."""
    candidates = []
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        parts: list[JSON] = []
        if include_thoughts and message.get("reasoning_content"):
            parts.append({"text": message["reasoning_content"], "thought": True})
        if message.get("content"):
            parts.append({"text": message["content"]})
        calls, malformed = _call_parts(message.get("tool_calls") or [])
        parts += calls
        finish = MALFORMED if malformed else FINISH_REASONS.get(choice.get("finish_reason"), "STOP")
        candidates.append(_candidate(int(choice.get("index") or 0), parts, finish))
    doc: JSON = {"candidates": candidates}
    usage = usage_metadata(completion.get("usage"))
    if usage is not None:
        doc["usageMetadata"] = usage
    doc["modelVersion"] = completion.get("model") or ""
    doc["responseId"] = completion.get("id") or ""
    return doc


class StreamTranslator:
    """``chat.completion.chunk`` JSONs in, GenerateContentResponse documents out (pure).

    The newest document is held back until the next one exists, so that the last
    document sent — with every finish reason and the usage — also carries the last
    piece of content."""

    def __init__(self, model: str, include_thoughts: bool) -> None:
        self.include_thoughts = include_thoughts
        self.model_version = model
        self.response_id = ""
        self.held: JSON | None = None
        # (choice index, tool-call index) → the call being assembled.
        self.calls: dict[tuple[int, int], JSON] = {}
        self.finish: dict[int, str] = {}
        self.usage: JSON | None = None

    def _document(self, candidates: list[JSON]) -> JSON:
        return {
            "candidates": candidates,
            "modelVersion": self.model_version,
            "responseId": self.response_id,
        }

    def _flush_calls(self, choice: int) -> tuple[list[JSON], bool]:
        keys = sorted(k for k in self.calls if k[0] == choice)
        return _call_parts([self.calls.pop(k) for k in keys])

    def _assemble(self, choice: int, calls: list[JSON]) -> None:
        for call in calls:
            key = (choice, int(call.get("index") or 0))
            function = call.get("function") or {}
            current = self.calls.get(key)
            if current is None:
                current = {"id": call.get("id"), "function": {"name": "", "arguments": ""}}
                self.calls[key] = current
            if call.get("extra_content"):
                current["extra_content"] = call["extra_content"]
            if function.get("name"):
                current["function"]["name"] += function["name"]
            if function.get("arguments"):
                current["function"]["arguments"] += function["arguments"]

    def feed(self, chunk: JSON) -> list[JSON]:
        self.response_id = chunk.get("id") or self.response_id
        self.model_version = chunk.get("model") or self.model_version
        if chunk.get("usage"):
            self.usage = usage_metadata(chunk["usage"])
        candidates = []
        for choice in chunk.get("choices") or ():
            index = int(choice.get("index") or 0)
            delta = choice.get("delta") or {}
            parts: list[JSON] = []
            if self.include_thoughts and delta.get("reasoning_content"):
                parts.append({"text": delta["reasoning_content"], "thought": True})
            if delta.get("content"):
                parts.append({"text": delta["content"]})
            self._assemble(index, delta.get("tool_calls") or [])
            if choice.get("finish_reason"):
                calls, malformed = self._flush_calls(index)
                parts += calls
                reason = choice["finish_reason"]
                self.finish[index] = MALFORMED if malformed else FINISH_REASONS.get(reason, "STOP")
            if parts:
                candidates.append(_candidate(index, parts, None))
        if not candidates:
            return []
        released, self.held = self.held, self._document(candidates)
        return [released] if released is not None else []

    def finish_documents(self) -> list[JSON]:
        """The last document: the held content, every finish reason, the usage."""
        last = self.held or self._document([])
        self.held = None
        by_index: dict[int, list[JSON]] = {
            c["index"]: c["content"]["parts"] for c in last["candidates"]
        }
        for index in sorted({k[0] for k in self.calls}):  # a choice that never said it ended
            calls, malformed = self._flush_calls(index)
            self.finish.setdefault(index, MALFORMED if malformed else "STOP")
            by_index[index] = by_index.get(index, []) + calls
        for index in self.finish.keys() - by_index.keys():
            by_index[index] = []
        last["candidates"] = [
            # A finished candidate without new content: Google sends an empty text.
            _candidate(index, by_index[index] or [{"text": ""}], self.finish.get(index, "STOP"))
            for index in sorted(by_index or {0: []})
        ]
        if self.usage is not None:
            last["usageMetadata"] = self.usage
        # Google's key order: candidates, usageMetadata, modelVersion, responseId.
        keys = ("candidates", "usageMetadata", "modelVersion", "responseId")
        return [{k: last[k] for k in keys if k in last}]

    def pending(self) -> list[JSON]:
        """What was held back, for a stream that ends in an error."""
        held, self.held = self.held, None
        return [held] if held is not None else []


# --- HTTP ------------------------------------------------------------------------------


class _Framing:
    """SSE events (``alt=sse``) or the elements of one streamed JSON array."""

    def __init__(self, sse: bool) -> None:
        self.sse = sse
        self.first = True

    @property
    def content_type(self) -> str:
        return "text/event-stream" if self.sse else "application/json"

    def encode(self, docs: list[JSON]) -> bytes:
        out = []
        for doc in docs:
            if self.sse:
                out.append(b"data: " + orjson.dumps(doc) + b"\r\n\r\n")
            else:
                out.append((b"[" if self.first else b"\r\n,") + orjson.dumps(doc))
            self.first = False
        return b"".join(out)

    def end(self) -> bytes:
        if self.sse:
            return b""
        return b"[]" if self.first else b"]"


def _target(request: web.Request) -> tuple[str, str]:
    model, sep, method = request.match_info["target"].rpartition(":")
    if not sep or not model or method not in METHODS:
        raise NotFound(
            f"Method not found: {request.method} {request.path} (this server serves "
            "models/{model}:generateContent and :streamGenerateContent).",
            code="method_not_found",
        )
    return model, method


def error_response(exc: ApiError) -> web.Response:
    headers = exc.headers()
    if exc.trajectory_id:
        headers[TRAJECTORY_HEADER] = exc.trajectory_id
    return web.Response(
        status=exc.status, body=render_error(exc), content_type="application/json", headers=headers
    )


async def generate_content(request: web.Request) -> web.StreamResponse:
    # Rendered here, not only by the middleware: under /v1/ the middleware's
    # renderer is OpenAI's (GET /v1/models is the OpenAI API's).
    try:
        return await _generate_content(request)
    except ApiError as exc:
        return error_response(exc)


async def _generate_content(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    received_at = time.time()
    auth = auth_of(request)
    model, method = _target(request)
    stream = method == "streamGenerateContent"
    alt = request.query.get("alt", "json")
    if alt not in ("json", "sse"):
        raise invalid(f"unsupported alt={alt!r} (json or sse).", "alt")
    req = parse_request(await read_body(request, gw.settings.max_body_bytes))
    body = orjson.dumps(to_chat(req, model, stream=stream))
    chat = check_chat_request(body)
    call = await open_call(gw, auth, chat, body, received_at=received_at, ingress=INGRESS)
    headers = {TRAJECTORY_HEADER: call.trajectory_id}
    if not stream:
        completion = orjson.loads(await call.response_json())
        document = response_document(completion, req.include_thoughts)
        return web.Response(
            body=orjson.dumps(document), content_type="application/json", headers=headers
        )
    translator = StreamTranslator(model, req.include_thoughts)
    return await relay_stream(request, call, _Stream(translator, _Framing(alt == "sse")), headers)


class _Stream:
    """Gemini's side of :func:`relay_stream`: SSE or one streamed JSON array."""

    def __init__(self, translator: StreamTranslator, framing: _Framing) -> None:
        self._translator = translator
        self._framing = framing
        self.content_type = framing.content_type

    def chunk(self, payload: bytes) -> bytes:
        docs = self._translator.feed(orjson.loads(payload))
        return self._framing.encode(docs) if docs else b""

    def done(self) -> bytes:
        return self._framing.encode(self._translator.finish_documents()) + self._framing.end()

    def failed(self, exc: ApiError) -> bytes:
        docs = [*self._translator.pending(), error_document(exc)]
        return self._framing.encode(docs) + self._framing.end()


def routes() -> list[web.RouteDef]:
    # v1beta is what gemini-cli and the REST docs use; google-genai 3.x defaults to v1.
    return [web.post("/{version:v1beta|v1}/models/{target:.+}", generate_content)]
