"""OpenTelemetry traces end to end: a client's W3C ``traceparent`` is continued by
the gateway, carried in the call's NATS headers to the proxy, whose ``chat {model}``
span (GenAI semantic conventions) is the parent the provider receives. Spans are
exported over OTLP/HTTP to a local receiver that decodes the protobuf."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import pytest

from jetty_cli.testing import StackFactory, TestStack
from tests.fakes.openai_upstream import FakeUpstream
from tests.fakes.otlp_receiver import OtlpReceiver, ReceivedSpan

KEY = "sk-tracing-test-000111"
SECRET_PROMPT = "prompt-secret-3e9a71c2"
SERVER, CLIENT = 2, 3  # opentelemetry.proto.trace.v1.Span.SpanKind


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    fake = OtlpReceiver()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream(api_key=KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
def traced_stack(
    stack_factory: StackFactory, receiver: OtlpReceiver, upstream: FakeUpstream
) -> TestStack:
    return stack_factory(
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": upstream.base_url,
        }
    )


async def test_a_call_is_one_trace_from_client_to_provider(
    traced_stack: TestStack, receiver: OtlpReceiver, upstream: FakeUpstream
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = {
        "Authorization": f"Bearer {traced_stack.token}",
        "traceparent": f"00-{trace_id}-{client_span}-01",
    }
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": SECRET_PROMPT}]}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            traced_stack.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status == 200
        trajectory_id = response.headers["X-Jetty-Trajectory-Id"]
        answer = await response.json()

    def both(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return {s.service for s in mine} >= {"jetty-gateway", "jetty-proxy"}

    spans = [s for s in await receiver.wait_for(both) if s.trace_id == trace_id]
    server = next(s for s in spans if s.service == "jetty-gateway")
    chat = next(s for s in spans if s.service == "jetty-proxy")
    assert server.kind == SERVER and server.name == "POST /v1/chat/completions"
    assert server.parent_span_id == client_span
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["jetty.trajectory_id"] == trajectory_id
    assert chat.kind == CLIENT and chat.name == "chat gpt-4o-mini"
    assert chat.parent_span_id == server.span_id
    attrs = chat.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.usage.input_tokens"] == answer["usage"]["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == answer["usage"]["completion_tokens"]
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["jetty.trajectory_id"] == trajectory_id
    assert server.start_ns <= chat.start_ns <= chat.end_ns <= server.end_ns
    # Bodies are not exported unless asked.
    assert "gen_ai.input.messages" not in attrs
    assert not any(SECRET_PROMPT in str(s.attributes) for s in spans)
    # The provider got the chat span as its parent.
    sent = [
        r
        for r in upstream.requests
        if r.body.get("messages", [{}])[0].get("content") == SECRET_PROMPT
    ]
    assert sent[-1].headers["traceparent"] == f"00-{trace_id}-{chat.span_id}-01"


async def test_a_runbook_is_an_invoke_agent_span_with_its_model_calls_as_children(
    traced_stack: TestStack, receiver: OtlpReceiver
) -> None:
    trace_id = secrets.token_hex(16)
    headers = {
        "Authorization": f"Bearer {traced_stack.token}",
        "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
    }
    body = {
        "model": "mock/echo",
        "messages": [{"role": "user", "content": "Say hello"}],
        "jetty": {"runbook": True, "agent": "claude-code", "task": "traced-run"},
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            traced_stack.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as response,
    ):
        answer = await response.json()
        assert response.status == 200, answer
    assert answer["jetty_metadata"]["status"] == "completed", answer

    def agent_and_calls(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        # The gateway's server span ends with the answer and is exported in its
        # own batch: wait for it too rather than assume it came first.
        return (
            any(s.name == "invoke_agent claude-code" for s in mine)
            and any(s.service == "jetty-proxy" for s in mine)
            and any(s.service == "jetty-gateway" and s.kind == SERVER for s in mine)
        )

    spans = [s for s in await receiver.wait_for(agent_and_calls) if s.trace_id == trace_id]
    agent = next(s for s in spans if s.name == "invoke_agent claude-code")
    assert agent.service == "jetty-runner"
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "claude-code"
    assert agent.attributes["jetty.status"] == "completed"
    calls = [s for s in spans if s.service == "jetty-proxy"]
    assert calls and all(s.parent_span_id == agent.span_id for s in calls)
    assert all(s.name == "chat mock/echo" for s in calls)
    assert all(
        s.attributes["jetty.trajectory_id"] == answer["jetty_metadata"]["trajectory_id"]
        for s in calls
    )
    gateway = next(s for s in spans if s.service == "jetty-gateway" and s.kind == SERVER)
    assert agent.parent_span_id == gateway.span_id
