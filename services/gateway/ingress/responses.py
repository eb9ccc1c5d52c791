"""``POST /v1/responses`` (and ``/responses``): the OpenAI Responses API in and out,
streamed as codex uses it, over the same call path as chat completions.

The request becomes an OpenAI chat request
(:mod:`services.gateway.ingress.responses_translate`); the answer comes back as a
Response object, or as the Responses event stream built by :class:`StreamTranslator`
— ``response.created`` → ``response.in_progress`` → per output item
``output_item.added`` (→ ``content_part.added`` → ``output_text.delta``… →
``output_text.done`` → ``content_part.done``, or ``function_call_arguments.delta``…
→ ``.done``) → ``output_item.done`` → ``response.completed`` with usage. Every
event is ``event: <type>`` + ``data: <json>`` and carries ``type`` and a
``sequence_number`` counting from 0. Errors are OpenAI-shaped (the middleware's
default); an error after the stream started is a ``response.failed`` event.

Mapping decisions (lossy where the two APIs differ):

* **State.** Nothing is stored: ``store`` is accepted and echoed as ``false``;
  ``previous_response_id``, ``conversation``, ``item_reference`` items, stored
  ``prompt`` templates and ``background`` are a 400 naming the field. Response ids
  are ``resp_`` + the trajectory id's suffix, so a response maps to its recording.
* **Input.** ``instructions`` → a leading ``system`` message; ``developer`` and
  ``system`` messages → ``system`` messages in place; ``input_text``/``output_text``
  → text; ``input_image`` (URL or data URL) → ``image_url``; ``input_file`` with
  ``file_data`` → a ``file`` part; file ids and file URLs are a 400 (nothing to
  resolve them with). ``function_call`` items join the preceding assistant turn as
  ``tool_calls``; ``function_call_output`` → a ``tool`` message (its text parts
  joined; images or files in it follow the run of tool messages as one user
  message, since chat tool results are text). An output whose ``call_id`` has no
  earlier ``function_call`` is a 400. Items only OpenAI's hosted tools produce
  (``web_search_call``, ``custom_tool_call``, ``local_shell_call``, …) are dropped.
* **Reasoning.** Answers with ``reasoning_content`` (Anthropic, Gemini, DeepSeek…)
  get a ``reasoning`` output item with a ``reasoning_text`` part, streamed as
  ``response.reasoning_text.delta``. Anthropic's signed ``thinking_blocks`` ride in
  its ``encrypted_content`` (only when ``include`` asks for
  ``reasoning.encrypted_content``, as codex does), and a ``reasoning`` input item
  carrying them hands them back to the next assistant turn, so thinking with tool
  use keeps working through codex. Other reasoning input (OpenAI-encrypted content,
  summaries, reasoning text) is dropped: providers behind us cannot read it.
* **Tools.** Flat function tools → chat function tools; every other tool type
  (``web_search``, ``file_search``, ``custom``, codex's ``namespace``…) is dropped,
  so the model never sees it. ``tool_choice`` none/auto/required and a named
  function or ``allowed_tools`` map directly; hosted-tool choices are a 400.
  ``parallel_tool_calls`` and ``tool_choice`` are sent only with tools.
* **Parameters.** ``max_output_tokens`` → ``max_completion_tokens``; temperature,
  top_p, prompt_cache_key, safety_identifier, user, service_tier as is;
  ``text.format`` json_schema/json_object → ``response_format``;
  ``text.verbosity`` → ``verbosity``; ``reasoning.effort`` → ``reasoning_effort``
  (``reasoning.summary`` dropped); ``include``, ``metadata`` (echoed), ``truncation``
  and unknown fields are not sent on.
* **Answer.** Only the first choice; ``refusal`` → a refusal part; a finish reason
  ``length`` → status ``incomplete`` (``max_output_tokens``), ``content_filter`` →
  ``incomplete`` (``content_filter``), others ``completed``. Usage: input/output/
  total tokens, ``cached_tokens``, ``cache_write_tokens`` (Anthropic cache writes)
  and ``reasoning_tokens``. ``jetty_metadata`` is added to the Response object.
* **Disconnects.** codex closes the connection as soon as ``response.completed``
  arrives. The call has ended by then (the proxy sent its last frame before that
  event is written), so a failing final write is logged at debug level and the
  trajectory stays ``completed``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from aiohttp import web

from services.gateway.calls import open_call, read_body
from services.gateway.ingress.responses_objects import (
    ResponseShell,
    error_object,
    function_call_item,
    new_id,
    output_text_part,
    response_object,
    usage_object,
)
from services.gateway.ingress.responses_translate import (
    JSON,
    encode_thinking,
    parse_request,
    to_chat,
)
from services.gateway.middleware import TRAJECTORY_HEADER
from services.gateway.sse import SSE, relay_stream
from services.gateway.state import GATEWAY, auth_of
from shared.errors import ApiError
from shared.openai_chat import check_chat_request

log = logging.getLogger(__name__)

INGRESS = "responses"


class StreamTranslator:
    """``chat.completion.chunk`` JSONs in, Responses stream events out (pure).

    Output items open in the order their content first appears. A message or
    reasoning item closes when any other item starts; function calls stay open until
    the end, so a provider that interleaves the arguments of parallel calls still
    yields well-formed items."""

    def __init__(self, shell: ResponseShell) -> None:
        self.shell = shell
        self.sequence = 0
        self.output: list[JSON] = []  # by output_index; final once its item is done
        self.done: set[int] = set()
        # The open message or reasoning item: (output_index, open part kind or None).
        self.current: tuple[int, str | None] | None = None
        self.thinking: dict[int, list[Any]] = {}
        self.calls: dict[int, int] = {}  # chat tool-call index → output_index
        self.finish_reason: str | None = None
        self.usage: JSON | None = None
        self.extra: JSON = {}
        self.started = False

    def _event(self, kind: str, **fields: Any) -> bytes:
        doc = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"

    def _lifecycle(self, kind: str, status: str, **fields: Any) -> bytes:
        response = self.shell.document(status, self._finished_output(), extra=self.extra, **fields)
        return self._event(kind, response=response)

    def _finished_output(self) -> list[JSON]:
        return [item for index, item in enumerate(self.output) if index in self.done]

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``, once (:meth:`feed` calls
        it first, after reading what the first chunk says about the answer)."""
        if self.started:
            return []
        self.started = True
        return [
            self._lifecycle("response.created", "in_progress"),
            self._lifecycle("response.in_progress", "in_progress"),
        ]

    # --- items ---------------------------------------------------------------------------

    def _add(self, item: JSON) -> tuple[int, bytes]:
        index = len(self.output)
        self.output.append(item)
        return index, self._event("response.output_item.added", output_index=index, item=item)

    def _close_current(self) -> list[bytes]:
        if self.current is None:
            return []
        index, part = self.current
        self.current = None
        events = self._close_part(index, part)
        item = {**self.output[index], "status": "completed"}
        blocks = self.thinking.pop(index, [])
        if blocks and self.shell.include_thinking:
            item["encrypted_content"] = encode_thinking(blocks)
        return events + self._finish_item(index, item)

    def _finish_item(self, index: int, item: JSON) -> list[bytes]:
        self.output[index] = item
        self.done.add(index)
        return [self._event("response.output_item.done", output_index=index, item=item)]

    def _close_part(self, index: int, part: str | None) -> list[bytes]:
        if part is None:
            return []
        item = self.output[index]
        content_index = len(item["content"]) - 1
        final = item["content"][content_index]
        where = {"item_id": item["id"], "output_index": index, "content_index": content_index}
        if part == "output_text":
            done = self._event(
                "response.output_text.done", **where, text=final["text"], logprobs=[]
            )
        elif part == "refusal":
            done = self._event("response.refusal.done", **where, refusal=final["refusal"])
        else:
            done = self._event("response.reasoning_text.done", **where, text=final["text"])
        return [done, self._event("response.content_part.done", **where, part=final)]

    def _open(self, kind: str, part: str | None) -> list[bytes]:
        """Make sure a ``kind`` item (message or reasoning) is current, with ``part``
        open in it unless None; returns the events that took."""
        events: list[bytes] = []
        if self.current is not None and self.output[self.current[0]]["type"] != kind:
            events += self._close_current()
        if self.current is None:
            if kind == "message":
                item: JSON = {
                    "id": new_id("msg"),
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
            else:
                item = {
                    "id": new_id("rs"),
                    "type": "reasoning",
                    "status": "in_progress",
                    "summary": [],
                    "content": [],
                }
            index, added = self._add(item)
            events.append(added)
            self.current = (index, None)
        index, open_part = self.current
        if part is None or open_part == part:
            return events
        events += self._close_part(index, open_part)
        item = self.output[index]
        new: JSON = {"type": part, part if part == "refusal" else "text": ""}
        if part == "output_text":
            new = output_text_part("")
        events.append(
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=len(item["content"]),
                part=dict(new),
            )
        )
        item["content"].append(new)
        self.current = (index, part)
        return events

    def _delta(self, kind: str, part: str, delta: str) -> list[bytes]:
        events = self._open(kind, part)
        index, _ = self.current or (0, None)
        item = self.output[index]
        content_index = len(item["content"]) - 1
        key = "refusal" if part == "refusal" else "text"
        item["content"][content_index][key] += delta
        event = {
            "output_text": "response.output_text.delta",
            "refusal": "response.refusal.delta",
            "reasoning_text": "response.reasoning_text.delta",
        }[part]
        fields: JSON = {"logprobs": []} if part == "output_text" else {}
        events.append(
            self._event(
                event,
                item_id=item["id"],
                output_index=index,
                content_index=content_index,
                delta=delta,
                **fields,
            )
        )
        return events

    def _tool_call(self, call: JSON) -> list[bytes]:
        events: list[bytes] = []
        position = call.get("index", 0)
        function = call.get("function") or {}
        index = self.calls.get(position)
        if index is None:
            events += self._close_current()
            item = function_call_item(
                {"id": call.get("id"), "function": {"name": function.get("name")}},
                status="in_progress",
            )
            index, added = self._add(item)
            self.calls[position] = index
            events.append(added)
        item = self.output[index]
        delta = function.get("arguments") or ""
        if delta:
            item["arguments"] += delta
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=delta,
                )
            )
        return events

    # --- chunks --------------------------------------------------------------------------

    def feed(self, chunk: JSON) -> list[bytes]:
        if "jetty_metadata" in chunk:
            self.extra["jetty_metadata"] = chunk["jetty_metadata"]
        if chunk.get("model"):
            self.shell.model = chunk["model"]
        if chunk.get("usage"):
            self.usage = usage_object(chunk["usage"])
        events = self.start()
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # one answer per response (n is never asked for)
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                events += self._delta("reasoning", "reasoning_text", delta["reasoning_content"])
            if delta.get("thinking_blocks"):
                events += self._open_reasoning_for_blocks()
                assert self.current is not None
                self.thinking.setdefault(self.current[0], []).extend(delta["thinking_blocks"])
            if delta.get("content"):
                events += self._delta("message", "output_text", delta["content"])
            if delta.get("refusal"):
                events += self._delta("message", "refusal", delta["refusal"])
            for call in delta.get("tool_calls") or ():
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _open_reasoning_for_blocks(self) -> list[bytes]:
        # A signed block arrives whole after its text; a redacted one may come alone.
        if self.current is not None and self.output[self.current[0]]["type"] == "reasoning":
            return []
        return self._open("reasoning", None)

    def _close_all(self) -> list[bytes]:
        events = self._close_current()
        for index in sorted(self.calls.values()):
            item = self.output[index]
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            events += self._finish_item(index, {**item, "status": "completed"})
        self.calls.clear()
        return events

    def finish(self) -> list[bytes]:
        events = self._close_all()
        status, incomplete = self.shell.status_of(self.finish_reason)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        events.append(self._lifecycle(kind, status, usage=self.usage, incomplete=incomplete))
        return events

    def fail(self, exc: ApiError) -> list[bytes]:
        """``response.failed`` after an error mid-stream; items already under way are
        closed first, so the client's snapshot stays well-formed."""
        events = self._close_all()
        events.append(
            self._lifecycle("response.failed", "failed", usage=self.usage, error=error_object(exc))
        )
        return events


# --- HTTP ------------------------------------------------------------------------------


async def create_response(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    received_at = time.time()
    auth = auth_of(request)
    req = parse_request(await read_body(request, gw.settings.max_body_bytes))
    body = orjson.dumps(to_chat(req))
    chat = check_chat_request(body)
    call = await open_call(gw, auth, chat, body, received_at=received_at, ingress=INGRESS)
    shell = ResponseShell.of(req, "resp_" + call.trajectory_id.removeprefix("tr_"))
    headers = {TRAJECTORY_HEADER: call.trajectory_id}
    if not req.stream:
        completion = orjson.loads(await call.response_json())
        return web.Response(
            body=orjson.dumps(response_object(shell, completion)),
            content_type="application/json",
            headers=headers,
        )
    return await relay_stream(request, call, _Stream(StreamTranslator(shell)), headers)


class _Stream:
    """The Responses API's side of :func:`relay_stream`."""

    content_type = SSE

    def __init__(self, translator: StreamTranslator) -> None:
        self._translator = translator
        self._started = False

    def chunk(self, payload: bytes) -> bytes:
        self._started = True
        return b"".join(self._translator.feed(orjson.loads(payload)))

    def done(self) -> bytes:
        if not self._started:
            raise ApiError("The proxy ended the stream without any data.", status=502)
        return b"".join(self._translator.finish())

    def failed(self, exc: ApiError) -> bytes:
        return b"".join(self._translator.fail(exc))


def routes() -> list[web.RouteDef]:
    return [
        web.post("/v1/responses", create_response),
        web.post("/responses", create_response),
    ]
