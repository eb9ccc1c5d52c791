"""One embeddings call (``ChatCall.kind == "embedding"``): the same lifecycle as a
chat call (:class:`~services.proxy.call.CallRun`: routing, retries and fallbacks,
exactly one end event before the last frame, key and run spend, cancellation), with
an embeddings body and one ``r`` frame holding OpenAI's ``list`` of embeddings.

The end event is a ``completion.*`` event with ``kind: "embedding"``; it always
carries the request side itself (no ``completion.requested``: there is no partial
output to watch). Its response records how many vectors of what dimension came back,
never the vectors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from services.proxy import estimate, run_budget
from services.proxy.call import CallRun, with_metadata
from services.proxy.providers.base import CompletionUsage, EmbedCall, Embeddings
from services.proxy.providers.embed_wire import pack_base64
from services.proxy.router import Route
from shared.chatwire import Frame
from shared.errors import ApiError, UpstreamError, UpstreamTimeout
from shared.events.completion import EmbeddingsRecord, ResponseRecord
from shared.openai_embeddings import EmbeddingRequest, parse_embedding_request, recorded_request


def response_document(req: EmbeddingRequest, result: Embeddings, usage: CompletionUsage) -> bytes:
    """OpenAI's ``list`` of ``embedding`` objects, floats or base64 as asked."""
    as_base64 = req.encoding_format == "base64"
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": pack_base64(vector).decode() if as_base64 else vector,
        }
        for index, vector in enumerate(result.vectors)
    ]
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": req.model,
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
        }
    )


class EmbedRun(CallRun):
    _embed_request: EmbeddingRequest | None = None
    _result: Embeddings | None = None

    async def _run(self) -> None:
        body = await self._load_body()
        req = parse_embedding_request(body)
        self._embed_request = req
        self._model = req.model
        if self._span is not None:
            self._span.update_name(f"embeddings {req.model}")
        self._recorded = recorded_request(req, self.call.store)
        plan = self.deps.router.plan(req.model)
        if self.call.mode == "runbook":
            plan = await run_budget.priced_plan(
                self.deps.runs, self.call.trajectory_id, req.model, plan
            )
        self._use(plan[0])
        deadline = asyncio.timeout(self.deps.total_timeout)
        try:
            async with deadline:
                self._reached_upstream = True
                self._result = await self._embed_targets(plan, req, deadline)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise UpstreamTimeout(
                f"The call exceeded the proxy's limit of {self.deps.total_timeout:g}s.",
                code="upstream_timeout",
            ) from None
        payload = with_metadata(
            response_document(req, self._result, self._usage()[0]), self._metadata
        )
        if len(payload) + 1 > self.deps.nc.max_payload:
            self._result = None
            raise UpstreamError(
                f"The embeddings ({len(payload)} bytes) are larger than the message bus "
                f"allows ({self.deps.nc.max_payload} bytes); send fewer inputs per request "
                "or use encoding_format 'base64'.",
                code="response_too_large",
            )
        await self._finished()
        await self._final(Frame.RESPONSE, payload)

    async def _embed_targets(
        self, plan: tuple[Route, ...], req: EmbeddingRequest, deadline: asyncio.Timeout
    ) -> Embeddings:
        """The first target's answer, each retried per the policy (as chat calls)."""
        policy = self.deps.retry
        loop = asyncio.get_running_loop()
        error: ApiError | None = None
        for route in plan:
            self._use(route)
            retries = 0
            while True:
                started = time.monotonic()
                try:
                    result = await route.provider.embed(EmbedCall(route.upstream_model, req))
                except ApiError as exc:
                    self._attempt(route, started, exc.status, exc.code or exc.error_type, exc)
                    if not policy.falls_back(exc):
                        raise
                    error = exc
                    wait = policy.delay(retries, exc)
                    when = deadline.when()
                    if wait is None or (when is not None and loop.time() + wait >= when):
                        break
                    await policy.sleep(wait)
                    retries += 1
                    continue
                except asyncio.CancelledError:
                    self._attempt(route, started, None, "cancelled", None)
                    raise
                self._attempt(route, started, 200, None, None)
                return result
        assert error is not None
        raise error

    def _usage(self) -> tuple[CompletionUsage, bool]:
        result, req = self._result, self._embed_request
        if result is not None and result.prompt_tokens is not None:
            tokens, estimated = result.prompt_tokens, False
        else:
            texts = req.texts() if req is not None else None
            if texts is not None:
                tokens = sum(estimate.text_tokens(t) for t in texts)
            elif req is not None and not isinstance(req.input, str):
                tokens = sum(len(i) if isinstance(i, list) else 1 for i in req.input)
            else:
                tokens = 0
            estimated = True
        return CompletionUsage(prompt_tokens=tokens, total_tokens=tokens), estimated

    def _ended_fields(self, *, finished: bool) -> dict[str, Any]:
        fields = super()._ended_fields(finished=finished)
        result, req = self._result, self._embed_request
        summary = None
        if result is not None and req is not None:
            summary = EmbeddingsRecord(
                count=len(result.vectors),
                dimensions=len(result.vectors[0]) if result.vectors else 0,
                encoding_format=req.encoding_format,
            )
        fields["response"] = ResponseRecord(
            upstream_model=result.model if result is not None else None, embeddings=summary
        )
        fields["kind"] = "embedding"
        fields["ttft_ms"] = None
        return fields
