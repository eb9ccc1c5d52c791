"""A local Gemini API server (aiohttp): ``generateContent`` and ``streamGenerateContent``.

Speaks the wire format where it matters:

* ``POST /v1beta/models/{model}:generateContent`` answers pretty-printed JSON (two
  spaces, as Google's front end does); ``:streamGenerateContent?alt=sse`` answers
  ``text/event-stream`` with one ``data: <GenerateContentResponse>`` event per piece,
  events ended by ``\\r\\n\\r\\n`` (``Script.crlf=False``: ``\\n\\n``), each JSON
  in Google's streaming style (``": "`` after keys, no space after commas, ``<>&``
  escaped as ``\\u003c``…), usage repeated cumulatively on every event, the finish
  reason on the last, and no ``[DONE]``: the stream ends when the body does.
  Without ``alt=sse`` the stream is one JSON array, as the real API sends it.
* Auth: ``x-goog-api-key`` (or ``?key=``). None → 403 PERMISSION_DENIED; a wrong key
  → 400 INVALID_ARGUMENT with ``ErrorInfo.reason`` ``API_KEY_INVALID`` (that is how
  Gemini rejects keys, and why an adapter cannot rely on 401).
* Validation the real API performs: its proto-JSON parser rejects unknown fields at
  any depth (``Invalid JSON payload received. Unknown name …``, camelCase or
  snake_case names accepted), non-object ``args``/``response``, bad base64; then
  ``contents`` required, roles ``user``/``model`` only, non-empty parts with exactly
  one data field, a function call turn only right after a user or function
  response turn, as many function responses as the calls they answer, Gemini 3's
  thought signatures on the current turn's function calls (a signature must be
  one this server issued or ``skip_thought_signature_validator``), function names,
  ``allowedFunctionNames`` only in ANY mode, ``responseSchema`` only with a JSON
  ``responseMimeType``, and the Schema subset (OBJECT needs properties, properties
  only on OBJECT, ARRAY needs items, string-only enums, few formats).
* Errors: ``{"error": {"code", "message", "status", "details"}}``; 429 carries a
  ``RetryInfo`` detail (and ``Retry-After`` only when scripted).

Behaviour per model: a :class:`Script` from :meth:`FakeGemini.script`, else a preset
from :data:`PRESETS` (``gemini-fake-429``, ``-500``, ``-503``, ``-tools``, ``-cut``,
``-stream-error``, ``-blocked``…), else a plain text reply. Requests are kept in
:attr:`FakeGemini.requests`; client disconnects in :attr:`FakeGemini.disconnects`.

Standalone::

    python -m tests.fakes.gemini_upstream --port 9001 [--api-key fake-gemini-key]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import RECORD_LIMIT, FakeServer

DEFAULT_TEXT = "Hello! How can I help you today?"
SKIP_SIGNATURE = "skip_thought_signature_validator"

# The request messages the proto-JSON parser knows: field → message type of its
# value ("X[]" a list of X, "X{}" a map to X, None a scalar or free-form value).
MESSAGES: dict[str, dict[str, str | None]] = {
    "GenerateContentRequest": {
        "model": None,
        "contents": "Content[]",
        "tools": "Tool[]",
        "toolConfig": "ToolConfig",
        "safetySettings": "SafetySetting[]",
        "systemInstruction": "Content",
        "generationConfig": "GenerationConfig",
        "cachedContent": None,
    },
    "Content": {"role": None, "parts": "Part[]"},
    "Part": {
        "text": None,
        "inlineData": "Blob",
        "functionCall": "FunctionCall",
        "functionResponse": "FunctionResponse",
        "fileData": "FileData",
        "executableCode": None,
        "codeExecutionResult": None,
        "thought": None,
        "thoughtSignature": None,
        "videoMetadata": None,
        "partMetadata": None,
        "mediaResolution": None,
    },
    "Blob": {"mimeType": None, "data": None},
    "FileData": {"mimeType": None, "fileUri": None},
    "FunctionCall": {"id": None, "name": None, "args": None},
    "FunctionResponse": {
        "id": None,
        "name": None,
        "response": None,
        "parts": None,
        "willContinue": None,
        "scheduling": None,
    },
    "Tool": {
        "functionDeclarations": "FunctionDeclaration[]",
        "googleSearchRetrieval": None,
        "codeExecution": None,
        "googleSearch": None,
        "computerUse": None,
        "urlContext": None,
        "fileSearch": None,
        "googleMaps": None,
    },
    "FunctionDeclaration": {
        "name": None,
        "description": None,
        "behavior": None,
        "parameters": "Schema",
        "parametersJsonSchema": None,
        "response": "Schema",
        "responseJsonSchema": None,
    },
    "Schema": {
        "type": None,
        "format": None,
        "title": None,
        "description": None,
        "nullable": None,
        "enum": None,
        "maxItems": None,
        "minItems": None,
        "properties": "Schema{}",
        "required": None,
        "minProperties": None,
        "maxProperties": None,
        "minLength": None,
        "maxLength": None,
        "pattern": None,
        "example": None,
        "anyOf": "Schema[]",
        "propertyOrdering": None,
        "default": None,
        "items": "Schema",
        "minimum": None,
        "maximum": None,
    },
    "ToolConfig": {"functionCallingConfig": "FunctionCallingConfig", "retrievalConfig": None},
    "FunctionCallingConfig": {"mode": None, "allowedFunctionNames": None},
    "SafetySetting": {"category": None, "threshold": None},
    "GenerationConfig": {
        "stopSequences": None,
        "responseMimeType": None,
        "responseSchema": "Schema",
        "responseJsonSchema": None,
        "responseModalities": None,
        "candidateCount": None,
        "maxOutputTokens": None,
        "temperature": None,
        "topP": None,
        "topK": None,
        "seed": None,
        "presencePenalty": None,
        "frequencyPenalty": None,
        "responseLogprobs": None,
        "logprobs": None,
        "enableEnhancedCivicAnswers": None,
        "speechConfig": None,
        "thinkingConfig": "ThinkingConfig",
        "imageConfig": None,
        "mediaResolution": None,
    },
    "ThinkingConfig": {"includeThoughts": None, "thinkingBudget": None, "thinkingLevel": None},
}
PART_DATA = ("text", "inlineData", "functionCall", "functionResponse", "fileData")
SCHEMA_TYPES = {"TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"}
FORMATS = {
    "STRING": {"enum", "date-time"},
    "NUMBER": {"float", "double"},
    "INTEGER": {"int32", "int64"},
}
MODES = {"MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"}
FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")


@dataclass
class Script:
    """How the fake answers one model. Delays are seconds."""

    text: str = DEFAULT_TEXT
    # (function name, args object) per call; when set, the answer is these calls,
    # after ``preamble`` text if any.
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    preamble: str = ""
    call_ids: bool = False  # newer models put an ``id`` on each functionCall
    thought_signature: bool = True  # on the first functionCall part (Gemini 2.5 / 3)
    thought_summary: str | None = None  # a ``thought: true`` part before the answer
    finish_reason: str | None = None
    block_reason: str | None = None  # promptFeedback block: no candidates at all
    status: int = 200
    error_status: str = "INTERNAL"
    error_message: str = (
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    )
    error_details: list[dict[str, Any]] = field(default_factory=list)
    retry_after: str | None = None  # an HTTP Retry-After header (Gemini sends none)
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    words_per_chunk: int = 1
    cut_after: int | None = None  # streams: drop the connection after this many events
    error_after: int | None = None  # streams: send an {"error"} event after this many
    usage: bool = True
    thoughts_tokens: int = 0
    cached_tokens: int = 0
    crlf: bool = True


RETRY_INFO: list[dict[str, Any]] = [
    {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": (
                    "generativelanguage.googleapis.com/generate_content_free_tier_requests"
                ),
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            }
        ],
    },
    {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
            {
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }
        ],
    },
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"},
]

PRESETS: dict[str, Script] = {
    "gemini-fake-tools": Script(tool_calls=[("get_weather", {"city": "Paris", "unit": "celsius"})]),
    "gemini-fake-429": Script(
        status=429,
        error_status="RESOURCE_EXHAUSTED",
        error_message=(
            "You exceeded your current quota, please check your plan and billing details."
        ),
        error_details=RETRY_INFO,
    ),
    "gemini-fake-500": Script(status=500),
    "gemini-fake-503": Script(
        status=503,
        error_status="UNAVAILABLE",
        error_message="The model is overloaded. Please try again later.",
    ),
    "gemini-fake-504": Script(
        status=504, error_status="DEADLINE_EXCEEDED", error_message="Deadline expired."
    ),
    "gemini-fake-slow": Script(first_byte_delay=2.0, chunk_delay=0.2),
    "gemini-fake-cut": Script(text="one two three four five six", cut_after=3),
    "gemini-fake-stream-error": Script(text="one two three four", error_after=2),
    "gemini-fake-no-usage": Script(usage=False),
    "gemini-fake-blocked": Script(block_reason="PROHIBITED_CONTENT"),
}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class RequestRejected(Exception):
    def __init__(self, status: int, state: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status, self.state, self.message, self.details = status, state, message, details


def google_json(doc: Any) -> bytes:
    """JSON as Google's streaming front end writes it."""
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ": "))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def pretty_json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, indent=2).encode() + b"\n"


def error_body(status: int, state: str, message: str, details: Any = None) -> bytes:
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if details:
        error["details"] = details
    return pretty_json({"error": error})


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=body,
        headers={
            "Content-Type": "application/json; charset=UTF-8",
            "Vary": "Origin, X-Origin, Referer",
            "Server": "scaffolding on HTTPServer2",
            **(headers or {}),
        },
    )


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


class Validator:
    """The real API's request checks, in its own words."""

    def __init__(self, model: str, issued_signatures: set[str]) -> None:
        self.model = model
        self.signatures = issued_signatures

    def bad(self, message: str, details: Any = None) -> RequestRejected:
        return RequestRejected(400, "INVALID_ARGUMENT", message, details)

    def fields(self, value: Any, message_type: str, path: str) -> Any:
        """Parse like proto JSON: unknown names fail, names normalised to camelCase."""
        if not isinstance(value, dict):
            raise self.bad(
                f"Invalid value at '{path or 'request'}' "
                f"(type.googleapis.com/google.ai.generativelanguage.v1beta.{message_type}), "
                f"{json.dumps(value)}"
            )
        known = MESSAGES[message_type]
        out: dict[str, Any] = {}
        for raw_name, child in value.items():
            name = _camel(raw_name)
            if name not in known:
                where = f" at '{path}'" if path else ""
                description = (
                    f'Invalid JSON payload received. Unknown name "{raw_name}"{where}: '
                    "Cannot find field."
                )
                violation = {"field": path, "description": description}
                raise self.bad(
                    description,
                    [
                        {
                            "@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [violation],
                        }
                    ],
                )
            kind = known[name]
            sub = f"{path}.{_snake(name)}" if path else _snake(name)
            if kind is None:
                out[name] = child
            elif kind.endswith("[]"):
                items = child if isinstance(child, list) else [child]
                out[name] = [self.fields(c, kind[:-2], f"{sub}[{i}]") for i, c in enumerate(items)]
            elif kind.endswith("{}"):
                if not isinstance(child, dict):
                    raise self.bad(f"Invalid value at '{sub}', {json.dumps(child)}")
                out[name] = {
                    k: self.fields(c, kind[:-2], f'{sub}["{k}"]') for k, c in child.items()
                }
            else:
                out[name] = self.fields(child, kind, sub)
        return out

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = self.fields(body, "GenerateContentRequest", "")
        contents = doc.get("contents") or []
        if not contents:
            raise self.bad("* GenerateContentRequest.contents: contents is not specified\n")
        for i, content in enumerate(contents):
            self.content(content, f"contents[{i}]")
        if "systemInstruction" in doc:
            self.content({**doc["systemInstruction"], "role": "user"}, "system_instruction")
        self.turns(contents)
        for t, tool in enumerate(doc.get("tools") or []):
            for d, decl in enumerate(tool.get("functionDeclarations") or []):
                path = f"tools[{t}].function_declarations[{d}]"
                if not FUNCTION_NAME.fullmatch(str(decl.get("name", ""))):
                    raise self.bad(
                        f"* GenerateContentRequest.{path}.name: Invalid function name. Must "
                        "start with a letter or an underscore. Must be alphameric (a-z, A-Z, "
                        "0-9), underscores (_), dots (.), colons (:), or dashes (-), with a "
                        "maximum length of 64.\n"
                    )
                if "parameters" in decl:
                    self.schema(decl["parameters"], f"{path}.parameters")
        calling = (doc.get("toolConfig") or {}).get("functionCallingConfig") or {}
        mode = calling.get("mode", "MODE_UNSPECIFIED")
        if mode not in MODES:
            raise self.bad(
                "Invalid value at 'tool_config.function_calling_config.mode' "
                "(type.googleapis.com/google.ai.generativelanguage.v1beta."
                f'FunctionCallingConfig.Mode), "{mode}"'
            )
        if calling.get("allowedFunctionNames") and mode not in ("ANY", "VALIDATED"):
            raise self.bad(
                "* GenerateContentRequest.tool_config.function_calling_config."
                "allowed_function_names: only allowed when mode is ANY or VALIDATED.\n"
            )
        config = doc.get("generationConfig") or {}
        if "responseSchema" in config:
            if config.get("responseMimeType") != "application/json":
                raise self.bad(
                    "* GenerateContentRequest.generation_config.response_mime_type: "
                    "response_schema is only supported with response_mime_type "
                    "application/json.\n"
                )
            self.schema(config["responseSchema"], "generation_config.response_schema")
        thinking = config.get("thinkingConfig") or {}
        if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
            raise self.bad("You can only set only one of thinking budget and thinking level.")
        return doc

    def content(self, content: dict[str, Any], path: str) -> None:
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise self.bad("Please use a valid role: user, model.")
        parts = content.get("parts") or []
        if not parts:
            raise self.bad(
                f"* GenerateContentRequest.{path}.parts: contents.parts must not be empty.\n"
            )
        for j, part in enumerate(parts):
            where = f"{path}.parts[{j}]"
            present = [k for k in PART_DATA if k in part and part[k] not in ("", None)]
            if len(present) != 1:
                raise self.bad(
                    f"* GenerateContentRequest.{where}.data: required oneof field 'data' must "
                    "have one initialized field\n"
                )
            blob = part.get("inlineData")
            if blob is not None:
                try:
                    base64.b64decode(str(blob.get("data", "")), validate=True)
                except (binascii.Error, ValueError):
                    raise self.bad(
                        f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 "
                        f'decoding failed for "{str(blob.get("data"))[:40]}"'
                    ) from None
            call = part.get("functionCall")
            if call is not None and not isinstance(call.get("args", {}), dict):
                raise self.bad(
                    f"Invalid value at '{where}.function_call.args' "
                    f"(type.googleapis.com/google.protobuf.Struct), {json.dumps(call['args'])}"
                )
            response = part.get("functionResponse")
            if response is not None and not isinstance(response.get("response"), dict):
                raise self.bad(
                    f"Invalid value at '{where}.function_response.response' "
                    "(type.googleapis.com/google.protobuf.Struct), "
                    f"{json.dumps(response.get('response'))}"
                )

    def turns(self, contents: list[dict[str, Any]]) -> None:
        def calls(content: dict[str, Any]) -> list[dict[str, Any]]:
            return [p for p in content["parts"] if "functionCall" in p]

        def responses(content: dict[str, Any]) -> list[dict[str, Any]]:
            return [p for p in content["parts"] if "functionResponse" in p]

        for i, content in enumerate(contents):
            previous = contents[i - 1] if i else None
            if (
                content.get("role") == "model"
                and calls(content)
                and (previous is None or previous.get("role", "user") != "user")
            ):
                raise self.bad(
                    "Please ensure that function call turn comes immediately after a user "
                    "turn or after a function response turn."
                )
            if responses(content):
                if previous is None or not calls(previous):
                    raise self.bad(
                        "Please ensure that function response turn comes immediately after a "
                        "function call turn."
                    )
                if len(responses(content)) != len(calls(previous)):
                    raise self.bad(
                        "Please ensure that the number of function response parts is equal to "
                        "the number of function call parts of the function call turn."
                    )
        # Gemini 3 validates signatures on the current turn: everything after the last
        # user content that is more than function responses.
        start = 0
        for i, content in enumerate(contents):
            if content.get("role", "user") == "user" and not all(
                "functionResponse" in p for p in content["parts"]
            ):
                start = i
        for i, content in enumerate(contents):
            for position, part in enumerate(calls(content)):
                signature = part.get("thoughtSignature")
                if (
                    signature is not None
                    and signature != SKIP_SIGNATURE
                    and signature not in self.signatures
                ):
                    raise self.bad(f"Corrupted thought signature at contents[{i}].")
                if (
                    self.model.startswith("gemini-3")
                    and i > start
                    and position == 0
                    and not signature
                ):
                    name = part["functionCall"].get("name")
                    raise self.bad(
                        "Function call is missing a thought_signature in functionCall parts. "
                        "This is required for tools to work correctly, and missing "
                        "thought_signature may lead to degraded model performance. Additional "
                        f"data, function call `default_api:{name}` , position {i + 1}. Please "
                        "refer to https://ai.google.dev/gemini-api/docs/thought-signatures for "
                        "more details."
                    )

    def schema(self, schema: dict[str, Any], path: str) -> None:
        where = f"* GenerateContentRequest.{path}"
        kind = str(schema.get("type", "TYPE_UNSPECIFIED")).upper()
        if kind not in SCHEMA_TYPES:
            raise self.bad(
                f"Invalid value at '{path}.type' "
                "(type.googleapis.com/google.ai.generativelanguage.v1beta.Type), "
                f'"{schema["type"]}"'
            )
        if kind == "OBJECT" and not schema.get("properties"):
            raise self.bad(f"{where}.properties: should be non-empty for OBJECT type\n")
        for key in ("properties", "required"):
            if key in schema and kind != "OBJECT":
                raise self.bad(f"{where}.{key}: only allowed for OBJECT type\n")
        if kind == "ARRAY" and "items" not in schema:
            raise self.bad(f"{where}.items: missing field.\n")
        if "enum" in schema and kind != "STRING":
            raise self.bad(f"{where}.enum: only allowed for STRING type\n")
        if "format" in schema and schema["format"] not in FORMATS.get(kind, ()):
            raise self.bad(
                f"{where}.format: format '{schema['format']}' is not supported for {kind} type\n"
            )
        for name in schema.get("required") or []:
            if name not in (schema.get("properties") or {}):
                raise self.bad(f"{where}.required[{name}]: property is not defined\n")
        for name, sub in (schema.get("properties") or {}).items():
            self.schema(sub, f'{path}.properties["{name}"]')
        if "items" in schema:
            self.schema(schema["items"], f"{path}.items")
        for k, sub in enumerate(schema.get("anyOf") or []):
            self.schema(sub, f"{path}.any_of[{k}]")


class FakeGemini(FakeServer[Script]):
    def __init__(
        self, api_key: str | None = "fake-gemini-key", record_limit: int = RECORD_LIMIT
    ) -> None:
        super().__init__(
            api_key,
            presets=PRESETS,
            default=Script,
            record_limit=record_limit,
            client_max_size=100 * 1024 * 1024,
        )
        self.signatures: set[str] = set()
        self.app.router.add_post(
            r"/{version:v1beta|v1}/{kind:models|tunedModels}/{rest}", self._call
        )

    # --- the API ----------------------------------------------------------------------

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        given = request.headers.get("x-goog-api-key") or request.query.get("key")
        if given == self.api_key:
            return None
        if not given:
            message = (
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."
            )
            return _json_response(403, error_body(403, "PERMISSION_DENIED", message))
        message = "API key not valid. Please pass a valid API key."
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ]
        return _json_response(400, error_body(400, "INVALID_ARGUMENT", message, details))

    async def _call(self, request: web.Request) -> web.StreamResponse:
        name, _, method = request.match_info["rest"].rpartition(":")
        if method not in ("generateContent", "streamGenerateContent") or not name:
            return _json_response(404, error_body(404, "NOT_FOUND", "Method not found."))
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(
            RecordedRequest(
                request.path,
                dict(request.query),
                {str(k): v for k, v in request.headers.items()},
                body if isinstance(body, dict) else {},
                time.time(),
            )
        )
        denied = self._auth_error(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict):
            message = f"Invalid JSON payload received. Unexpected token.\n{raw[:40]!r}"
            return _json_response(400, error_body(400, "INVALID_ARGUMENT", message))
        script = self._script_for(name, body)
        try:
            doc = Validator(name, self.signatures).request(body)
        except RequestRejected as rejected:
            return _json_response(
                rejected.status,
                error_body(rejected.status, rejected.state, rejected.message, rejected.details),
            )
        if script.first_byte_delay:
            await asyncio.sleep(script.first_byte_delay)
        if script.status >= 400:
            headers = {"Retry-After": script.retry_after} if script.retry_after else None
            body_out = error_body(
                script.status, script.error_status, script.error_message, script.error_details
            )
            return _json_response(script.status, body_out, headers)
        events = self._events(name, script, doc)
        if method == "generateContent":
            return _json_response(200, pretty_json(self._merge(events)))
        if request.query.get("alt") != "sse":
            array = b"[" + b"\n,\r\n".join(pretty_json(e).rstrip() for e in events) + b"]"
            return _json_response(200, array)
        return await self._stream(request, name, script, events)

    def _events(self, model: str, script: Script, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """The stream documents of one answer (a non-stream answer merges them)."""
        config = doc.get("generationConfig") or {}
        n = int(config.get("candidateCount") or 1)
        prompt = _tokens(json.dumps(doc.get("contents")) + json.dumps(doc.get("systemInstruction")))
        head = {
            "modelVersion": model,
            "responseId": base64.urlsafe_b64encode(os.urandom(16)).decode()[:22],
        }
        if script.block_reason:
            event: dict[str, Any] = {"promptFeedback": {"blockReason": script.block_reason}}
            if script.usage:
                event["usageMetadata"] = {"promptTokenCount": prompt, "totalTokenCount": prompt}
            return [{**event, **head}]
        pieces: list[list[dict[str, Any]]] = []
        if script.thought_summary:
            pieces.append([{"text": script.thought_summary, "thought": True}])
        text = script.preamble if script.tool_calls else script.text
        words = text.split(" ") if text else []
        per = max(1, script.words_per_chunk)
        for i in range(0, len(words), per):
            pieces.append([{"text": ("" if i == 0 else " ") + " ".join(words[i : i + per])}])
        if script.tool_calls:
            calls: list[dict[str, Any]] = []
            for k, (name, args) in enumerate(script.tool_calls):
                call: dict[str, Any] = {"name": name, "args": args}
                if script.call_ids:
                    call["id"] = base64.b32encode(os.urandom(5)).decode().lower()
                part: dict[str, Any] = {"functionCall": call}
                if k == 0 and script.thought_signature:
                    signature = base64.b64encode(os.urandom(48)).decode()
                    self.signatures.add(signature)
                    part["thoughtSignature"] = signature
                calls.append(part)
            pieces.append(calls)
        if not pieces:
            pieces.append([{"text": ""}])
        finish = script.finish_reason or "STOP"
        events: list[dict[str, Any]] = []
        generated = 0
        for number, parts in enumerate(pieces):
            generated += sum(
                _tokens(p["text"]) if "text" in p else _tokens(json.dumps(p["functionCall"]))
                for p in parts
                if not p.get("thought")
            )
            last = number == len(pieces) - 1
            candidates = []
            for index in range(n):
                candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
                if last:
                    candidate["finishReason"] = finish
                    if script.tool_calls:
                        candidate["finishMessage"] = "Model generated function call(s)."
                candidate["index"] = index
                candidates.append(candidate)
            event = {"candidates": candidates}
            if script.usage:
                event["usageMetadata"] = self._usage(script, prompt, generated * n)
            events.append({**event, **head})
        return events

    def _usage(self, script: Script, prompt: int, generated: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": generated}
        total = prompt + generated + script.thoughts_tokens
        usage["totalTokenCount"] = total
        if script.cached_tokens:
            usage["cachedContentTokenCount"] = script.cached_tokens
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if script.cached_tokens:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": script.cached_tokens}]
        if script.thoughts_tokens:
            usage["thoughtsTokenCount"] = script.thoughts_tokens
        return usage

    def _merge(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """The non-stream response: every event's parts, the last event's metadata."""
        last = events[-1]
        if "candidates" not in last:
            return last
        merged: dict[str, Any] = json.loads(json.dumps(last))
        for candidate in merged["candidates"]:
            parts: list[dict[str, Any]] = []
            for event in events:
                for part in event["candidates"][candidate["index"]]["content"]["parts"]:
                    mergeable = "text" in part and not part.get("thought")
                    if mergeable and parts and "text" in parts[-1] and not parts[-1].get("thought"):
                        parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                    else:
                        parts.append(part)
            candidate["content"]["parts"] = parts
        return merged

    async def _stream(
        self, request: web.Request, model: str, script: Script, events: list[dict[str, Any]]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Content-Disposition": "attachment",
                "Vary": "Origin, X-Origin, Referer",
                "Server": "scaffolding on HTTPServer2",
            }
        )
        await response.prepare(request)
        end = b"\r\n\r\n" if script.crlf else b"\n\n"
        try:
            for sent, event in enumerate(events):
                if script.cut_after is not None and sent >= script.cut_after:
                    # Drop the connection mid-stream: no finish reason ever comes.
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if script.error_after is not None and sent >= script.error_after:
                    error = {
                        "code": 500,
                        "message": script.error_message,
                        "status": script.error_status,
                    }
                    await response.write(b"data: " + google_json({"error": error}) + end)
                    return response
                await response.write(b"data: " + google_json(event) + end)
                if script.chunk_delay:
                    await asyncio.sleep(script.chunk_delay)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self._hung_up(model)
            raise
        return response


async def _serve(host: str, port: int, api_key: str | None) -> None:
    fake = FakeGemini(api_key=api_key)
    url = await fake.start(host, port)
    print(f"fake Gemini upstream on {url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--api-key", default="fake-gemini-key", help="expected x-goog-api-key")
    parser.add_argument("--no-auth", action="store_true", help="accept any or no key")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, None if args.no_auth else args.api_key))


if __name__ == "__main__":
    main()
