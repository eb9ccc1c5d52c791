"""A local Azure OpenAI chat-completions server (aiohttp), built on the OpenAI fake.

Azure's URLs and differences, on top of :class:`tests.fakes.openai_upstream.FakeUpstream`
(whose :class:`Script`, presets and answer builders it reuses by composition):

* ``POST /openai/deployments/{deployment}/chat/completions?api-version=…`` and the v1
  surface ``POST /openai/v1/chat/completions`` (deployment in ``model``; optional
  ``api-version=preview``). A missing or unknown ``api-version`` on the deployment route
  is a 404 ``Resource not found``, as Azure answers it;
* ``api-key`` header auth (401 ``Access denied due to invalid subscription key…``);
* dated versions check arguments against that version's schema: 2024-10-21 knows no
  ``store``/``reasoning_effort``/``developer`` role…, versions before
  2024-09-01-preview reject ``stream_options`` (400 ``Unrecognized request argument
  supplied: …``);
* Azure's content-filter annotations: ``prompt_filter_results`` on the response (and as
  a leading ``choices: []`` chunk with empty ``id``/``model`` in streams),
  ``content_filter_results`` on every choice, and after the finish chunk a trailing
  chunk with ``content_filter_offsets`` (the asynchronous filter's last verdict);
* a Script with ``status=400, error_code="content_filter"`` answers Azure's prompt-filter
  error (``param: prompt``, ``innererror.code: ResponsibleAIPolicyViolation``);
  ``finish_reason="content_filter"`` ends an answer as a filtered completion does;
* deployments not in :attr:`FakeAzure.deployments` (when set) are 404
  ``DeploymentNotFound``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_upstream import KNOWN_ARGUMENTS, FakeUpstream, RecordedRequest, Script

# The model Azure reports in answers (the deployment's model, not the deployment name).
AZURE_MODEL = "gpt-4o-2024-08-06"
FINGERPRINT = "fp_azure0001"
# createChatCompletionRequest in the 2024-10-21 inference spec (plus the tolerated model).
ARGUMENTS_2024_10_21 = frozenset(
    [
        "model",
        "messages",
        "data_sources",
        "temperature",
        "top_p",
        "stream",
        "stream_options",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "logprobs",
        "top_logprobs",
        "n",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "tools",
        "tool_choice",
        "function_call",
        "functions",
    ]
)
DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})(-preview)?$")
SAFE = {"filtered": False, "severity": "safe"}
CHOICE_FILTER = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT_FILTER = {
    **CHOICE_FILTER,
    "jailbreak": {"filtered": False, "detected": False},
}
ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)
FILTERED_PROMPT = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content "
    "management policy. Please modify your prompt and retry."
)


def _azure_error(
    http_status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = orjson.dumps({"error": {"code": code, "message": message, **extra}})
    return web.Response(
        status=http_status, body=body, content_type="application/json", headers=headers
    )


def _openai_error(message: str, param: str | None = None) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return web.Response(
        status=400, body=orjson.dumps({"error": error}), content_type="application/json"
    )


def _tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0


class FakeAzure:
    def __init__(
        self,
        api_key: str = "azure-fake-key",
        deployments: set[str] | None = None,
        versions: frozenset[str] = frozenset({"2024-02-01", "2024-06-01", "2024-10-21"}),
    ) -> None:
        self.api_key = api_key
        self.deployments = deployments
        self.versions = versions
        # The OpenAI fake supplies scripts, presets and the answer shapes.
        self.openai = FakeUpstream(api_key=None)
        self.requests: deque[RecordedRequest] = deque(maxlen=1000)
        self.disconnects: list[tuple[str, float]] = []
        self.disconnected = asyncio.Event()
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post(
            "/openai/deployments/{deployment}/chat/completions", self._deployment_chat
        )
        self.app.router.add_post("/openai/v1/chat/completions", self._v1_chat)
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    def script(self, deployment: str, script: Script) -> None:
        self.openai.script(deployment, script)

    def reset(self) -> None:
        self.openai.reset()
        self.requests.clear()
        self.disconnects.clear()
        self.disconnected.clear()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.endpoint = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.endpoint

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the two surfaces ---------------------------------------------------------------

    async def _deployment_chat(self, request: web.Request) -> web.StreamResponse:
        version = request.query.get("api-version", "")
        dated = DATED.match(version)
        if dated is None or (version not in self.versions and not version.endswith("-preview")):
            return _azure_error(404, "404", "Resource not found")
        return await self._chat(request, request.match_info["deployment"], dated.group(1))

    async def _v1_chat(self, request: web.Request) -> web.StreamResponse:
        version = request.query.get("api-version")
        if version not in {None, "preview", "latest"}:
            return _azure_error(400, "BadRequest", f"API version not supported: {version}")
        return await self._chat(request, None, None)

    async def _chat(
        self, request: web.Request, deployment: str | None, date: str | None
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _openai_error("We could not parse the JSON body of your request.")
        if isinstance(body, dict):
            headers = {str(k): v for k, v in request.headers.items()}
            self.requests.append(RecordedRequest(request.path_qs, headers, body, time.time()))
        if request.headers.get("api-key") != self.api_key:
            return _azure_error(401, "401", ACCESS_DENIED)
        if not isinstance(body, dict):
            return _openai_error("Invalid body.")
        invalid = self._validate(body, deployment, date)
        if invalid is not None:
            return invalid
        name = deployment or str(body["model"])
        if self.deployments is not None and name not in self.deployments:
            return _azure_error(
                404,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        script = self.openai._script_for(name)
        if script.first_byte_delay:
            await asyncio.sleep(script.first_byte_delay)
        if script.status >= 400:
            return self._scripted_error(script)
        prompt_tokens = _tokens(orjson.dumps(body["messages"]).decode())
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage")) and script.usage
            return await self._stream(request, name, script, prompt_tokens, include_usage)
        doc = orjson.loads(self.openai._completion(AZURE_MODEL, script, 1, prompt_tokens))
        doc["system_fingerprint"] = FINGERPRINT
        doc["prompt_filter_results"] = [
            {"prompt_index": 0, "content_filter_results": PROMPT_FILTER}
        ]
        for choice in doc["choices"]:
            choice["content_filter_results"] = self._choice_filter(script)
            choice["message"].pop("annotations", None)
        return web.Response(body=orjson.dumps(doc), content_type="application/json")

    def _validate(
        self, body: dict[str, Any], deployment: str | None, date: str | None
    ) -> web.Response | None:
        known = (
            ARGUMENTS_2024_10_21
            if date is not None and date < "2024-12-01"
            else (KNOWN_ARGUMENTS | {"data_sources"})
        )
        for name in body:
            if name not in known or (
                name == "stream_options" and date is not None and date < "2024-09-01"
            ):
                return _openai_error(f"Unrecognized request argument supplied: {name}")
        if deployment is None and not body.get("model"):
            return _openai_error("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _openai_error("Missing required parameter: 'messages'.", "messages")
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            allowed = {"system", "user", "assistant", "tool", "function"}
            if date is None or date >= "2024-12-01":
                allowed.add("developer")
            if role not in allowed:
                return _openai_error(
                    f"Invalid value: '{role}'. Supported values are: "
                    + ", ".join(f"'{r}'" for r in sorted(allowed))
                    + ".",
                    f"messages[{i}].role",
                )
        if body.get("stream_options") is not None and not body.get("stream"):
            return _openai_error(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        return None

    def _scripted_error(self, script: Script) -> web.Response:
        retry: dict[str, str] | None = None
        if script.retry_after:
            retry = {"Retry-After": script.retry_after}
        if script.error_code == "content_filter":
            return _azure_error(
                400,
                "content_filter",
                FILTERED_PROMPT,
                param="prompt",
                status=400,
                innererror={
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        **PROMPT_FILTER,
                        "violence": {"filtered": True, "severity": "high"},
                    },
                },
            )
        code = script.error_code or str(script.status)
        return _azure_error(script.status, code, script.error_message, retry)

    def _choice_filter(self, script: Script) -> dict[str, Any]:
        if script.finish_reason == "content_filter":
            return {**CHOICE_FILTER, "violence": {"filtered": True, "severity": "medium"}}
        return CHOICE_FILTER

    async def _stream(
        self,
        request: web.Request,
        name: str,
        script: Script,
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
        ident = f"chatcmpl-{uuid.uuid4().hex[:29]}"
        created = int(time.time())

        def event(doc: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(doc) + b"\n\n"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return event(
                {
                    "choices": choices,
                    "created": created,
                    "id": ident,
                    "model": AZURE_MODEL,
                    "object": "chat.completion.chunk",
                    "system_fingerprint": FINGERPRINT,
                    **({"usage": None} if include_usage else {}),
                    **extra,
                }
            )

        # Azure's first event: the prompt's filter verdict, before any model output.
        preamble = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": PROMPT_FILTER}],
        }
        deltas = self.openai._deltas(script)
        first = {"content": "", "refusal": None, "role": "assistant"}
        if script.tool_calls:
            deltas[0] = {**first, "content": None, **deltas[0]}
        else:
            deltas.insert(0, first)
        try:
            await response.write(event(preamble))
            for sent, delta in enumerate(deltas):
                if script.cut_after is not None and sent >= script.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if script.error_after is not None and sent >= script.error_after:
                    error = {"code": "server_error", "message": script.error_message}
                    await response.write(event({"error": error}))
                    return response
                filters: dict[str, Any] = {} if sent == 0 else CHOICE_FILTER
                choice = {
                    "content_filter_results": filters,
                    "delta": delta,
                    "finish_reason": None,
                    "index": 0,
                    "logprobs": None,
                }
                await response.write(chunk([choice]))
                if script.chunk_delay:
                    await asyncio.sleep(script.chunk_delay)
            finish = {
                "content_filter_results": {},
                "delta": {},
                "finish_reason": self.openai._finish_reason(script),
                "index": 0,
                "logprobs": None,
            }
            await response.write(chunk([finish]))
            offsets = {"check_offset": 0, "start_offset": 0, "end_offset": len(script.text)}
            trailing = {
                "content_filter_offsets": offsets,
                "content_filter_results": self._choice_filter(script),
                "finish_reason": None,
                "index": 0,
            }
            await response.write(chunk([trailing]))
            if include_usage:
                usage = self.openai._usage(script, 1, prompt_tokens)
                await response.write(chunk([], usage=usage))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.disconnects.append((name, time.time()))
            self.disconnected.set()
            raise
        return response
