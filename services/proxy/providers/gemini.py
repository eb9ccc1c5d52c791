"""Google Gemini API (``generativelanguage.googleapis.com``) behind the OpenAI shape.

``POST {base}/v1beta/models/{model}:generateContent`` for complete calls and
``:streamGenerateContent?alt=sse`` for streams, authenticated with the
``x-goog-api-key`` header (never the ``?key=`` query, which ends up in logs). The
request side is :mod:`services.proxy.providers.gemini_translate`; this module
sends it, and maps responses, stream documents and errors back.

Configuration (:func:`from_env`; the names google-genai and gemini-cli read):

==========================  ========================================================
``GEMINI_API_KEY``          the key; enables the provider
``GOOGLE_API_KEY``          accepted when ``GEMINI_API_KEY`` is unset (google-genai
                            prefers it when both are set; we prefer the Gemini-only
                            name, since ``GOOGLE_API_KEY`` is often some other
                            Google API's key)
``GEMINI_BASE_URL``         default ``https://generativelanguage.googleapis.com``;
                            ``GOOGLE_GEMINI_BASE_URL`` (google-genai's name) too. A
                            base URL alone enables a keyless provider (a local
                            Gemini-compatible server). ``/v1beta`` is appended
                            unless the URL already ends in an API version.
``JETTY_GEMINI_MODELS``     comma-separated names for ``GET /v1/models``
                            (default :data:`DEFAULT_MODELS`)
==========================  ========================================================

Routing: ``gemini/<model>`` and bare ``gemini-*``. The model name lands in the URL
path, so it must look like a model id (``[A-Za-z0-9][A-Za-z0-9._-]*``, optionally
``models/`` or ``tunedModels/``); anything else is a 400, never a path on our host.

Translation, and where it is lossy:

* **System messages.** Gemini has one ``systemInstruction``. Every ``system`` and
  ``developer`` message goes there, one text part each, in order — including one in
  the middle of the conversation, which thereby loses its position (it is not
  re-sent as user text, which would give a system instruction a user's authority).
  Non-text parts in a system message are a 400, as at OpenAI.
* **Turns.** user → ``user``, assistant → ``model``; consecutive turns of one role
  are merged into one ``Content`` (tool results of one step must travel together).
  Empty text parts are dropped (Gemini rejects them).
* **Images.** ``data:`` URLs → ``inlineData``; ``http(s)://`` and ``gs://`` URLs →
  ``fileData {fileUri}`` with a MIME type guessed from the file suffix (omitted when
  unknown). Gemini fetches the URL itself — we never download what a client names —
  so the upstream's limits apply (public or signed URLs and Files API URIs, up to
  100 MB; some 2.0-family models take only Files API URIs). ``detail`` is dropped.
  ``input_audio`` (wav/mp3) and ``file`` parts with a base64 ``file_data`` map to
  ``inlineData``; OpenAI ``file_id``s cannot be resolved (400).
* **Tool calls.** Assistant ``tool_calls`` → ``functionCall {name, args}`` parts
  (arguments must be a JSON object); ``tool`` messages → ``functionResponse {name,
  response}`` in a ``user`` turn, the name looked up from the earlier call with that
  ``tool_call_id``. A tool result that is a JSON object is sent as the response
  object, anything else as ``{"output": <text>}``. Gemini call ids are not sent back
  (pairing is by order). Answers: a ``functionCall`` without an ``id`` (all but the
  newest models) gets ``call_<token>_<n>``, stable within the response and unique
  across responses; the arguments arrive whole, so a stream sends each call in one
  delta.
* **Thought signatures.** A ``functionCall``'s ``thoughtSignature`` is returned on
  the tool call as ``extra_content.google.thought_signature`` (the convention of
  Google's own OpenAI-compatible endpoint) and sent back from there. When a step's
  first call has none (history from another model, or a client that dropped the
  field), Google's documented ``skip_thought_signature_validator`` is sent, so
  Gemini 3 accepts the history. Signatures on text parts are not carried.
* **Tools.** ``tools`` → one ``functionDeclarations`` tool; ``parameters`` converted
  from JSON Schema to Gemini's OpenAPI subset (see
  :func:`~services.proxy.providers.gemini_translate.to_gemini_schema`: ``$ref``
  inlined, ``additionalProperties``/``$schema``/``not``/numeric ``enum``/unsupported
  ``format``… dropped, free-form objects untyped, a parameterless function gets no
  ``parameters``). ``tool_choice`` none/auto/required → ``NONE``/``AUTO``/``ANY``; a
  named function → ``ANY`` + ``allowedFunctionNames``; ``allowed_tools`` "auto"
  offers only the allowed declarations. ``parallel_tool_calls`` has no equivalent
  (dropped); non-function tools are a 400.
* **Parameters.** temperature, top_p, max_completion_tokens/max_tokens →
  ``maxOutputTokens``, stop → ``stopSequences``, n → ``candidateCount``, seed,
  presence/frequency_penalty, ``response_format`` json_object → ``responseMimeType``
  ``application/json`` (json_schema adds ``responseSchema``), ``reasoning_effort`` →
  ``thinkingConfig`` (``thinkingBudget`` 0/1024/8192/24576 on 2.5, ``thinkingLevel``
  on 3+, nothing before 2.5). Everything else OpenAI-only (logprobs, logit_bias,
  user, metadata, store, service_tier…) is not sent. Gemini's safety settings stay
  at their defaults.
* **Finish reasons.** STOP → ``stop`` (``tool_calls`` when the candidate called a
  function), MAX_TOKENS → ``length``; SAFETY, RECITATION, BLOCKLIST,
  PROHIBITED_CONTENT, SPII and the IMAGE_* ones → ``content_filter``; anything else
  (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL…) → ``stop``.
* **Blocked prompts.** ``promptFeedback.blockReason`` without candidates is a 400
  ``content_filter`` error naming the reason (as Azure OpenAI answers a filtered
  prompt), in streams too (it is the first document); its usage is not recorded.
* **Usage.** ``promptTokenCount`` (+ ``toolUsePromptTokenCount``) → prompt_tokens;
  ``candidatesTokenCount`` + ``thoughtsTokenCount`` → completion_tokens (thinking is
  billed as output, as OpenAI counts reasoning); ``cachedContentTokenCount`` →
  ``prompt_tokens_details.cached_tokens``; ``thoughtsTokenCount`` →
  ``completion_tokens_details.reasoning_tokens``. Gemini has no cache-write count.
  Streams repeat cumulative usage on every document; the last one is sent once,
  after the finish chunks. ``thought`` parts (only sent when asked for) become
  ``reasoning_content``; code execution and image output parts are not mapped.
* **Errors.** ``{"error": {"code", "message", "status", "details"}}`` (also wrapped in
  a list): 429 RESOURCE_EXHAUSTED → 429 with ``Retry-After`` or else the
  ``RetryInfo.retryDelay``; 401/403 and 400 ``API_KEY_INVALID`` (how Gemini rejects a
  bad key) → 502 ``upstream_auth_failed`` without the upstream's message; 504
  DEADLINE_EXCEEDED and 408 → 504; other 4xx → same status with Gemini's message
  (404 → ``model_not_found``); 5xx (503 UNAVAILABLE "overloaded") → 502. An
  ``{"error"}`` document inside a stream → 502 after the chunks already sent; a
  stream that ends before every candidate's finish reason (Gemini sends no
  ``[DONE]``) → 502 ``upstream_stream_interrupted``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp

from services.proxy.providers import embed_wire
from services.proxy.providers.base import (
    ChatChunk,
    ChatResponse,
    EmbedCall,
    Embeddings,
    Provider,
    UpstreamCall,
    texts_only,
)
from services.proxy.providers.gemini_decode import (
    StreamTranslator,
    decode_response,
    error_from_status,
)
from services.proxy.providers.gemini_translate import encode_request
from services.proxy.providers.http import UpstreamHttp, UpstreamStream, interrupted
from services.proxy.providers.openai_compat import Timeouts
from shared.errors import (
    ApiError,
    InvalidRequest,
)

NAME = "gemini"
SETUP_HINT = "set GEMINI_API_KEY (and GEMINI_BASE_URL for another endpoint)"
BARE_PATTERNS: tuple[str, ...] = ("gemini-*",)
DEFAULT_MODELS: tuple[str, ...] = (
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-3-pro-preview",
    "gemini-3-flash-preview",
)
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"


_MODEL_ID = re.compile(r"(?:tunedModels/)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class GeminiConfig:
    name: str = NAME
    base_url: str = DEFAULT_BASE_URL
    # repr=False: the key must never reach a log line through a repr.
    api_key: str | None = field(default=None, repr=False)
    models: tuple[str, ...] = DEFAULT_MODELS
    timeouts: Timeouts = field(default_factory=Timeouts)
    pool_size: int = 1024


def from_env(env: Mapping[str, str], timeouts: Timeouts, pool_size: int) -> GeminiProvider | None:
    """The provider when a key or a base URL is configured (see the module docstring)."""
    key = (env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY") or "").strip() or None
    base = (env.get("GEMINI_BASE_URL") or env.get("GOOGLE_GEMINI_BASE_URL") or "").strip()
    if key is None and not base:
        return None
    listed = tuple(m.strip() for m in env.get("JETTY_GEMINI_MODELS", "").split(",") if m.strip())
    return GeminiProvider(
        GeminiConfig(
            base_url=base or DEFAULT_BASE_URL,
            api_key=key,
            models=listed or DEFAULT_MODELS,
            timeouts=timeouts,
            pool_size=pool_size,
        )
    )


def api_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root if re.search(r"/v1(?:alpha|beta)?$", root) else f"{root}/{API_VERSION}"


def model_path(model: str) -> str:
    """``models/<id>`` (or ``tunedModels/<id>``) for the URL; the client chose the
    name, so anything that could change the path is refused."""
    name = model.removeprefix("models/")
    if not _MODEL_ID.fullmatch(name):
        raise InvalidRequest(
            f"'{model}' is not a valid Gemini model name.", param="model", code="invalid_value"
        )
    return name if name.startswith("tunedModels/") else f"models/{name}"


# --- the provider ----------------------------------------------------------------------


class GeminiProvider(Provider):
    def __init__(self, config: GeminiConfig) -> None:
        self.name = config.name
        self._config = config
        self._root = api_root(config.base_url)
        self._http = UpstreamHttp(config.name, self._root, config.timeouts, config.pool_size)
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["x-goog-api-key"] = config.api_key
        self._headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "text/event-stream"}

    def models(self) -> Sequence[str]:
        return self._config.models

    async def start(self) -> None:
        await self._http.start()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, model: str, stream: bool) -> str:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return f"{self._root}/{model_path(model)}:{method}"

    def _scrub(self, error: ApiError) -> ApiError:
        # Belt and braces: no upstream text we pass on may quote our key.
        key = self._config.api_key
        if key and key in error.message:
            error.message = error.message.replace(key, "***")
            error.args = (error.message,)
        return error

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
        return self._scrub(error_from_status(self.name, status, body, headers))

    async def _send(self, url: str, body: bytes, stream: bool) -> aiohttp.ClientResponse:
        headers = self._stream_headers if stream else self._headers
        return await self._http.post(url, body, headers, self._error)

    async def embed(self, call: EmbedCall) -> Embeddings:
        """``models/{m}:batchEmbedContents``, one request per input."""
        texts = texts_only(self.name, call)
        path = model_path(call.model)
        try:
            data = await embed_wire.post_read(
                self.name,
                self._http,
                f"{self._root}/{path}:batchEmbedContents",
                embed_wire.gemini_body(path, texts, call.request.dimensions),
                self._headers,
                self._error,
            )
            return embed_wire.gemini_decode(self.name, data, len(texts))
        except ApiError as error:
            raise self._scrub(error) from None

    async def complete(self, call: UpstreamCall) -> ChatResponse:
        url = self._url(call.model, stream=False)
        body = encode_request(call.request, call.model)
        response = await self._send(url, body, stream=False)
        try:
            data = await response.read()
        except aiohttp.ClientError as exc:
            response.close()
            raise interrupted(self.name, exc) from None
        finally:
            response.release()
        try:
            return decode_response(data, call.model, self.name)
        except ApiError as error:
            raise self._scrub(error) from None

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[ChatChunk, None]:
        timeouts = self._config.timeouts
        url = self._url(call.model, stream=True)
        translator = StreamTranslator(call.model, self.name)
        response = await self._send(url, encode_request(call.request, call.model), stream=True)
        upstream = UpstreamStream(self.name, response, timeouts)
        try:
            async for event in upstream.events():
                try:
                    chunks = translator.feed(event.data)
                except ApiError as error:
                    raise self._scrub(error) from None
                for chunk in chunks:
                    yield chunk
            # No [DONE] in Gemini streams: complete means every candidate finished.
            if not translator.finished or upstream.pending:
                raise interrupted(self.name)
            for chunk in translator.finish():
                yield chunk
            upstream.complete()
        finally:
            upstream.close()
