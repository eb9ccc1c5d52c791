"""The passthrough endpoint end to end: the official OpenAI SDK (sync and async,
streaming and not) and curl against a running stack (gateway, proxy, recorder
as processes on real NATS and PostgreSQL), answers validated against the
OpenAPI schemas, and each call found as a trajectory right after its response."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import nats
import openai
import pytest

from jetty_cli.testing import TestStack, call
from shared.tokens import TokenStore
from tests.openapi import validate

pytestmark = pytest.mark.usefixtures("stack")


@pytest.fixture
def client(stack: TestStack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.base_url + "/v1", api_key=stack.token, max_retries=0) as c:
        yield c


def _trajectory(stack: TestStack, trajectory_id: str) -> dict[str, Any]:
    status, _, body = call(f"{stack.base_url}/api/v1/trajectories/{trajectory_id}", stack.token)
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def test_sdk_sync_non_streaming(stack: TestStack, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="mock/echo",
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello from the SDK"},
        ],
        temperature=0.3,
        max_tokens=50,
        extra_body={"jetty": {"task": "sdk-sync"}},
    )
    completion = raw.parse()
    document = json.loads(raw.text)
    validate("CreateChatCompletionResponse", document)
    assert completion.choices[0].message.content == "You said: Hello from the SDK"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    meta = document["jetty_metadata"]
    assert meta["mode"] == "passthrough"
    assert meta["collection"] == stack.collection
    assert raw.headers["x-jetty-trajectory-id"] == meta["trajectory_id"]

    # Fetched at once: the recorder may still be applying it, never a 404.
    trajectory = _trajectory(stack, meta["trajectory_id"])
    assert trajectory["status"] == "completed"
    assert trajectory["task"] == "sdk-sync"
    assert trajectory["mode"] == "passthrough"
    assert trajectory["model"] == "mock/echo"
    assert trajectory["usage"] == {
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "total_tokens": completion.usage.total_tokens,
    }
    assert trajectory["latency_ms"] > 0
    (step,) = trajectory["steps"]
    assert step["index"] == 0
    assert step["ingress"] == "chat.completions"
    assert step["request"]["messages"][1]["content"] == "Hello from the SDK"
    assert step["request"]["params"]["temperature"] == 0.3
    assert step["request"]["params"]["max_tokens"] == 50
    assert "jetty" not in step["request"]["params"]
    assert step["response"]["content"] == "You said: Hello from the SDK"
    assert step["response"]["finish_reason"] == "stop"
    assert step["response"]["upstream_id"] == completion.id


def test_sdk_sync_streaming_with_usage(stack: TestStack, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="mock/echo",
        messages=[{"role": "user", "content": "stream these words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    assert len(chunks) >= 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream these words please"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    meta = (chunks[0].model_extra or {})["jetty_metadata"]
    trajectory = _trajectory(stack, meta["trajectory_id"])
    assert trajectory["status"] == "completed"
    assert trajectory["usage"]["total_tokens"] == last.usage.total_tokens
    assert trajectory["ttft_ms"] is not None and trajectory["ttft_ms"] > 0
    assert trajectory["steps"][0]["response"]["content"] == text


def test_streaming_without_include_usage_sends_no_usage_chunk(
    stack: TestStack, client: openai.OpenAI
) -> None:
    chunks = list(
        client.chat.completions.create(
            model="mock/echo", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    meta = (chunks[0].model_extra or {})["jetty_metadata"]
    # ...but the trajectory still has the usage.
    assert _trajectory(stack, meta["trajectory_id"])["usage"]["total_tokens"] > 0


async def test_sdk_async_both_modes(stack: TestStack) -> None:
    client = openai.AsyncOpenAI(base_url=stack.base_url + "/v1", api_key=stack.token)
    async with client:
        completion = await client.chat.completions.create(
            model="mock/async", messages=[{"role": "user", "content": "async hello"}]
        )
        assert completion.choices[0].message.content == "You said: async hello"
        pieces = []
        stream = await client.chat.completions.create(
            model="mock/async",
            messages=[{"role": "user", "content": "async stream"}],
            stream=True,
        )
        async for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
        assert "".join(pieces) == "You said: async stream"


def test_tool_call_recorded(stack: TestStack, client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = client.chat.completions.create(
        model="mock/echo",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="required",
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    tool_call = choice.message.tool_calls[0]
    meta = (completion.model_extra or {})["jetty_metadata"]
    step = _trajectory(stack, meta["trajectory_id"])["steps"][0]
    recorded = step["response"]["tool_calls"][0]
    assert recorded["id"] == tool_call.id
    assert step["response"]["finish_reason"] == "tool_calls"
    assert step["request"]["params"]["tools"] == tools


def test_models_list(stack: TestStack, client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "mock/echo" in ids


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_seed_curl_example(stack: TestStack) -> None:
    """The README's / seed's curl example, verbatim apart from the base URL."""
    result = subprocess.run(
        [
            "curl", "-sS", "-X", "POST", f"{stack.base_url}/v1/chat/completions",
            "-H", f"Authorization: Bearer {stack.token}",
            "-H", "Content-Type: application/json",
            "-d", '{"model": "mock/claude-sonnet-4-6", '
            '"messages": [{"role": "user", "content": "Hello"}]}',
        ],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    document = json.loads(result.stdout)
    validate("CreateChatCompletionResponse", document)
    assert document["choices"][0]["message"]["content"] == "You said: Hello"
    assert document["jetty_metadata"]["mode"] == "passthrough"


def test_large_base64_is_redacted_in_the_trajectory(
    stack: TestStack, client: openai.OpenAI
) -> None:
    image = "iVBORw0KGgo" + "A" * 6000
    completion = client.chat.completions.create(
        model="mock/echo",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                ],
            }
        ],
    )
    meta = (completion.model_extra or {})["jetty_metadata"]
    step = _trajectory(stack, meta["trajectory_id"])["steps"][0]
    url = step["request"]["messages"][0]["content"][1]["image_url"]["url"]
    assert url.startswith("[redacted base64: media_type=image/png; bytes=")
    assert "sha256=" in url and len(url) < 200


def test_claim_checked_large_body(stack: TestStack, client: openai.OpenAI) -> None:
    """A body over the NATS payload limit travels by reference and still works."""
    big = "word " * 300_000  # ~1.5 MB of text, not base64
    completion = client.chat.completions.create(
        model="mock/echo", messages=[{"role": "user", "content": big}], max_tokens=5
    )
    assert completion.choices[0].finish_reason == "length"
    meta = (completion.model_extra or {})["jetty_metadata"]
    step = _trajectory(stack, meta["trajectory_id"])["steps"][0]
    assert len(step["request"]["messages"][0]["content"]) == len(big)


def test_list_trajectories_filters_and_pages(stack: TestStack, client: openai.OpenAI) -> None:
    ids = []
    for i in range(5):
        completion = client.chat.completions.create(
            model="mock/lister",
            messages=[{"role": "user", "content": f"n{i}"}],
            extra_body={"jetty": {"task": "listing"}},
        )
        ids.append((completion.model_extra or {})["jetty_metadata"]["trajectory_id"])
    _trajectory(stack, ids[-1])  # wait for the projection
    url = f"{stack.base_url}/api/v1/trajectories?task=listing&limit=2"
    seen: list[str] = []
    while url:
        status, _, page = call(url, stack.token)
        assert status == 200, page
        seen += [t["trajectory_id"] for t in page["data"]]
        assert len(page["data"]) <= 2
        cursor = page["next_cursor"]
        url = (
            f"{stack.base_url}/api/v1/trajectories?task=listing&limit=2&cursor={cursor}"
            if cursor
            else ""
        )
    assert seen == list(reversed(ids))  # newest first, each once
    status, _, page = call(
        f"{stack.base_url}/api/v1/trajectories?model=mock/lister&status=completed", stack.token
    )
    assert status == 200 and {t["trajectory_id"] for t in page["data"]} == set(ids)
    status, _, page = call(f"{stack.base_url}/api/v1/trajectories?status=failed", stack.token)
    assert status == 200 and not set(ids) & {t["trajectory_id"] for t in page["data"]}


async def test_other_collection_sees_404(stack: TestStack, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="mock/echo", messages=[{"role": "user", "content": "private"}]
    )
    trajectory_id = (completion.model_extra or {})["jetty_metadata"]["trajectory_id"]
    _trajectory(stack, trajectory_id)
    other = await stack.create_token("someone-else")
    status, _, body = call(f"{stack.base_url}/api/v1/trajectories/{trajectory_id}", other)
    unknown_status, _, unknown = call(
        f"{stack.base_url}/api/v1/trajectories/tr_000000000000000000000", other
    )
    assert status == unknown_status == 404
    assert body["error"]["type"] == unknown["error"]["type"] == "not_found_error"
    status, _, page = call(f"{stack.base_url}/api/v1/trajectories", other)
    assert status == 200 and trajectory_id not in {t["trajectory_id"] for t in page["data"]}


# --- bad input -----------------------------------------------------------------------------


def _post_raw(
    stack: TestStack, body: bytes, token: str | None = "default"
) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {stack.token if token == 'default' else token}"
    request = urllib.request.Request(
        stack.base_url + "/v1/chat/completions", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


GOOD_MESSAGES = [{"role": "user", "content": "hi"}]


def _doc(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


RUNBOOK = {
    "runbook": True,
    "collection": "default",
    "agent": "codex",
    "file_paths": ["uploads/never-uploaded.csv"],
}


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        (b"{not json", 400, None, "invalid_json"),
        (b"[1, 2]", 400, None, "invalid_json"),
        (_doc(messages=GOOD_MESSAGES), 400, "model", "missing_required_parameter"),
        (_doc(model="mock/x"), 400, "messages", "missing_required_parameter"),
        (_doc(model="mock/x", messages=[]), 400, "messages", "empty_array"),
        (_doc(model=7, messages=GOOD_MESSAGES), 400, "model", "invalid_value"),
        (_doc(model="mock/x", messages="hi"), 400, "messages", "invalid_value"),
        (_doc(model="mock/x", messages=[{"role": "robot", "content": "x"}]),
         400, "messages[0].role", "invalid_value"),
        (_doc(model="mock/x", messages=GOOD_MESSAGES, temperature=5),
         400, "temperature", "invalid_value"),
        (_doc(model="mock/x", messages=GOOD_MESSAGES, stream="yes"),
         400, "stream", "invalid_value"),
        (_doc(model="mock/x", messages=GOOD_MESSAGES, n=0), 400, "n", "invalid_value"),
        (_doc(model="mock/x", messages=GOOD_MESSAGES, jetty={"task": 3}),
         400, "jetty.task", "invalid_value"),
        (_doc(model="no-such-model", messages=GOOD_MESSAGES), 404, "model", "model_not_found"),
        (_doc(model="mock/x", messages=GOOD_MESSAGES, jetty=RUNBOOK),
         400, "jetty.file_paths[0]", "file_not_found"),
        (_doc(model="mock/x", messages=GOOD_MESSAGES, jetty={**RUNBOOK, "agent": None}),
         400, "jetty.agent", "missing_required_parameter"),
    ],
)  # fmt: skip
def test_bad_input_is_an_openai_error(
    stack: TestStack, body: bytes, status: int, param: str | None, code: str
) -> None:
    got, document = _post_raw(stack, body)
    assert got == status, document
    error = document["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


def test_body_over_limit_is_413(stack: TestStack) -> None:
    body = json.dumps(
        {"model": "mock/x", "messages": [{"role": "user", "content": "x" * (33 << 20)}]}
    )
    status, document = _post_raw(stack, body.encode())
    assert status == 413
    assert document["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("token", [None, "jt_not-a-real-token"])
def test_missing_or_wrong_token_is_401(stack: TestStack, token: str | None) -> None:
    status, document = _post_raw(
        stack, json.dumps({"model": "mock/x", "messages": GOOD_MESSAGES}).encode(), token
    )
    assert status == 401
    assert document["error"]["type"] == "authentication_error"
    with (
        openai.OpenAI(base_url=stack.base_url + "/v1", api_key=token or "x", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError),
    ):
        c.models.list()


def test_unknown_route_and_bad_ids(stack: TestStack) -> None:
    status, _, body = call(f"{stack.base_url}/v1/nope", stack.token)
    assert status == 404 and body["error"]["type"] == "not_found_error"
    status, _, body = call(f"{stack.base_url}/api/v1/trajectories/../../etc", stack.token)
    assert status == 404
    for query, param in [("limit=0", "limit"), ("limit=abc", "limit"), ("status=done", "status"),
                         ("since=yesterday", "since"), ("cursor=!!!", "cursor")]:  # fmt: skip
        status, _, body = call(f"{stack.base_url}/api/v1/trajectories?{query}", stack.token)
        assert status == 400, (query, body)
        assert body["error"]["param"] == param


async def test_a_token_works_the_moment_it_is_stored(stack: TestStack) -> None:
    """No waiting for the gateway's watch: a miss reads the token bucket once."""
    nc = await nats.connect(stack.nats_url)
    try:
        token = await TokenStore(nc.jetstream()).create("fresh-collection")
        status, _, body = call(f"{stack.base_url}/v1/models", token)
        assert status == 200, body
        status, _, body = call(f"{stack.base_url}/api/v1/trajectories", token)
        assert status == 200 and body["data"] == []
    finally:
        await nc.close()


async def test_trajectory_readable_while_its_stream_is_open(stack: TestStack) -> None:
    """The id from the response headers answers at once, even mid-stream and even
    though a quick call's only event is published when it ends."""
    body = {"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            stack.base_url + "/v1/chat/completions", json=body, headers=headers
        ) as response:
            trajectory_id = response.headers["X-Jetty-Trajectory-Id"]
            async with session.get(
                f"{stack.base_url}/api/v1/trajectories/{trajectory_id}", headers=headers
            ) as fetched:
                assert fetched.status == 200, await fetched.text()
                assert (await fetched.json())["status"] in {"running", "completed"}
            await response.read()
        unknown = "tr_000000000000000000000"
        async with session.get(
            f"{stack.base_url}/api/v1/trajectories/{unknown}", headers=headers
        ) as fetched:
            assert fetched.status == 404
