"""``POST /v1/embeddings`` end to end with the official ``openai`` SDK (sync, float
and base64): the mock's deterministic vectors, OpenAI, the OpenAI-compatible
catalogue (vLLM), Azure OpenAI, Gemini and Cohere v2 against a fake speaking each
documented wire format, the recorded ``embedding`` step read back through the API,
and bad input answered 400 naming the parameter."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import pytest

from jetty_cli.testing import StackFactory, TestStack
from services.proxy.providers.embed_wire import MOCK_DIMENSIONS, mock_vector
from tests.fakes.embeddings_upstream import FakeEmbeddings, vector
from tests.helpers import fetch_trajectory
from tests.openapi_document import validate_answer

KEY = "sk-embed-upstream-0123456789"


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeEmbeddings]:
    server = FakeEmbeddings(KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def embed_stack(stack_factory: StackFactory, fake: FakeEmbeddings) -> TestStack:
    return stack_factory(
        env={
            "OPENAI_API_KEY": KEY,
            "OPENAI_BASE_URL": fake.base_url + "/v1",
            "AZURE_OPENAI_API_KEY": KEY,
            "AZURE_OPENAI_ENDPOINT": fake.base_url,
            "GEMINI_API_KEY": KEY,
            "GEMINI_BASE_URL": fake.base_url,
            "COHERE_API_KEY": KEY,
            "COHERE_BASE_URL": fake.base_url,
            "VLLM_API_KEY": KEY,
            "VLLM_BASE_URL": fake.base_url + "/v1",
        }
    )


@pytest.fixture
def client(embed_stack: TestStack, fake: FakeEmbeddings) -> Iterator[openai.OpenAI]:
    fake.requests.clear()
    with openai.OpenAI(
        base_url=embed_stack.base_url + "/v1", api_key=embed_stack.token, max_retries=0
    ) as c:
        yield c


def create(client: openai.OpenAI, **kwargs: Any) -> Any:
    """The sync SDK off the event loop (the fake upstream runs on it)."""
    return asyncio.to_thread(client.embeddings.with_raw_response.create, **kwargs)


async def test_mock_vectors_are_deterministic_in_float_and_base64(
    client: openai.OpenAI, embed_stack: TestStack
) -> None:
    texts = ["the cat sat", "on the mat"]
    raw = await create(client, model="mock/echo", input=texts, encoding_format="float")
    floats = raw.parse()
    # The SDK's default is base64, decoded by the SDK itself.
    packed = (await create(client, model="mock/echo", input=texts)).parse()
    assert [d.index for d in floats.data] == [0, 1]
    for item, text in zip(floats.data, texts, strict=True):
        assert len(item.embedding) == MOCK_DIMENSIONS
        assert item.embedding == pytest.approx(mock_vector(text, MOCK_DIMENSIONS))
        assert math.sqrt(sum(v * v for v in item.embedding)) == pytest.approx(1.0)
    for a, b in zip(floats.data, packed.data, strict=True):
        assert b.embedding == pytest.approx(a.embedding, abs=1e-6)
    assert floats.data[0].embedding != floats.data[1].embedding
    assert floats.usage.prompt_tokens > 0
    assert floats.usage.total_tokens == floats.usage.prompt_tokens

    trajectory_id = raw.headers["x-jetty-trajectory-id"]
    doc = await fetch_trajectory(embed_stack, trajectory_id)
    assert doc["status"] == "completed"
    (step,) = doc["steps"]
    assert step["kind"] == "embedding"
    assert step["ingress"] == "embeddings"
    assert step["request"]["input"] == texts
    assert step["request"]["encoding_format"] == "float"
    assert step["response"]["embeddings"] == {
        "count": 2,
        "dimensions": MOCK_DIMENSIONS,
        "encoding_format": "float",
    }
    assert "embedding" not in str(step["response"]).replace("embeddings", "")
    assert step["usage"]["prompt_tokens"] == floats.usage.prompt_tokens
    assert step["usage"]["completion_tokens"] == 0


async def test_dimensions_and_token_ids_reach_the_mock(client: openai.OpenAI) -> None:
    result = (
        await create(
            client,
            model="mock/echo",
            input=[[1, 2, 3], [4, 5]],
            dimensions=12,
            encoding_format="float",
        )
    ).parse()
    assert [len(d.embedding) for d in result.data] == [12, 12]
    assert result.data[0].embedding == pytest.approx(mock_vector("1 2 3", 12))


@pytest.mark.parametrize(
    ("model", "path", "auth"),
    [
        ("openai/text-embedding-3-small", "/v1/embeddings", ("Authorization", f"Bearer {KEY}")),
        ("vllm/bge-m3", "/v1/embeddings", ("Authorization", f"Bearer {KEY}")),
        ("azure/embed-deploy", "/openai/v1/embeddings", ("api-key", KEY)),
        (
            "gemini/gemini-embedding-001",
            "/v1beta/models/gemini-embedding-001:batchEmbedContents",
            ("x-goog-api-key", KEY),
        ),
        ("cohere/embed-v4.0", "/v2/embed", ("Authorization", f"Bearer {KEY}")),
    ],
)
@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_each_provider_on_its_own_wire(
    client: openai.OpenAI,
    fake: FakeEmbeddings,
    embed_stack: TestStack,
    model: str,
    path: str,
    auth: tuple[str, str],
    encoding: str,
) -> None:
    texts = ["hello", "a longer sentence"]
    raw = await create(client, model=model, input=texts, dimensions=4, encoding_format=encoding)
    result = raw.parse()
    if encoding == "base64":
        # The SDK leaves an explicitly asked-for base64 string alone: decode it here.
        import base64
        import struct

        vectors = [list(struct.unpack("<4f", base64.b64decode(d.embedding))) for d in result.data]
    else:
        vectors = [d.embedding for d in result.data]
    assert vectors == [vector(t, i, 4) for i, t in enumerate(texts)]

    (seen,) = fake.requests
    assert seen.path.split("?")[0] == path
    assert seen.headers.get(auth[0]) == auth[1]
    upstream_model = model.split("/", 1)[1]
    body = seen.body
    if model.startswith("gemini/"):
        assert body == {
            "requests": [
                {
                    "model": f"models/{upstream_model}",
                    "content": {"parts": [{"text": t}]},
                    "outputDimensionality": 4,
                }
                for t in texts
            ]
        }
    elif model.startswith("cohere/"):
        assert body == {
            "model": upstream_model,
            "texts": texts,
            "input_type": "search_document",
            "embedding_types": ["float"],
            "output_dimension": 4,
        }
    else:
        assert body == {
            "model": upstream_model,
            "input": texts,
            "encoding_format": "float",
            "dimensions": 4,
        }

    doc = await fetch_trajectory(embed_stack, raw.headers["x-jetty-trajectory-id"])
    (step,) = doc["steps"]
    assert step["kind"] == "embedding"
    assert step["provider"] == model.split("/", maxsplit=1)[0]
    assert step["response"]["embeddings"]["count"] == 2
    assert step["response"]["embeddings"]["dimensions"] == 4
    tokens = step["usage"]["prompt_tokens"]
    assert tokens > 0
    if not model.startswith("gemini/"):
        # The upstream's own count (Gemini reports none: there it is our estimate).
        assert tokens == sum(max(1, len(t) // 4) for t in texts)
    prices = {"openai": "0.02", "gemini": "0.15", "cohere": "0.12"}
    provider = model.split("/", maxsplit=1)[0]
    if provider in prices:
        expected = Decimal(tokens) * Decimal(prices[provider]) / 1_000_000
        assert Decimal(str(step["cost_usd"])) == pytest.approx(expected)
    else:
        assert step["cost_usd"] is None


async def test_the_input_is_not_kept_when_the_request_says_so(
    embed_stack: TestStack,
) -> None:
    status, body, headers = await _post(
        embed_stack, {"model": "mock/echo", "input": "secret text", "jetty": {"store": False}}
    )
    assert status == 200, body
    validate_answer("post", "/v1/embeddings", 200, body)
    doc = await fetch_trajectory(embed_stack, headers["x-jetty-trajectory-id"])
    request = doc["steps"][0]["request"]
    assert "input" not in request
    assert request["input_count"] == 1
    assert request["store"] == "none"
    assert "secret text" not in str(doc)


async def _post(
    stack: TestStack, body: Any, token: str | None = None
) -> tuple[int, Any, Mapping[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.base_url}/v1/embeddings",
            json=body,
            headers={"Authorization": f"Bearer {token or stack.token}"},
        ) as response,
    ):
        return response.status, await response.json(), response.headers.copy()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "mock/echo"}, "input"),
        ({"model": "mock/echo", "input": ""}, "input"),
        ({"model": "mock/echo", "input": []}, "input"),
        ({"model": "mock/echo", "input": ["a", ""]}, "input[1]"),
        ({"model": "mock/echo", "input": ["a", 1]}, "input"),
        ({"model": "mock/echo", "input": [[1], []]}, "input[1]"),
        ({"model": "mock/echo", "input": 7}, "input"),
        ({"model": "mock/echo", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "mock/echo", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "mock/echo", "input": "x", "dimensions": "big"}, "dimensions"),
        ({"model": "mock/echo", "input": "x", "jetty": {"runbook": True}}, "jetty.runbook"),
        ({"model": "gemini/gemini-embedding-001", "input": [1, 2, 3]}, "input"),
    ],
)
async def test_bad_input_is_an_openai_400_naming_the_parameter(
    embed_stack: TestStack, body: dict[str, Any], param: str
) -> None:
    status, answer, _ = await _post(embed_stack, body)
    assert status == 400, answer
    validate_answer("post", "/v1/embeddings", 400, answer)
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param, answer


async def test_bad_json_and_unknown_models(embed_stack: TestStack) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{embed_stack.base_url}/v1/embeddings",
            data=b"{nope",
            headers={"Authorization": f"Bearer {embed_stack.token}"},
        ) as response,
    ):
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "invalid_json"
    status, answer, _ = await _post(embed_stack, {"model": "nowhere/x", "input": "a"})
    assert status == 404, answer
    status, answer, _ = await _post(embed_stack, {"model": "mock/echo", "input": "a"}, "bad")
    assert status == 401, answer


async def _key(stack: TestStack, **fields: Any) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.base_url}/api/v1/keys",
            json=fields,
            headers={"Authorization": f"Bearer {stack.token}"},
        ) as response,
    ):
        body = await response.json()
        assert response.status == 201, body
        key: str = body["key"]
        return key


async def test_keys_scopes_allowed_models_and_rate_limits_apply(embed_stack: TestStack) -> None:
    mock_only = await _key(embed_stack, allowed_models=["mock/*"])
    status, _, _ = await _post(embed_stack, {"model": "mock/echo", "input": "a"}, mock_only)
    assert status == 200
    status, answer, _ = await _post(
        embed_stack, {"model": "openai/text-embedding-3-small", "input": "a"}, mock_only
    )
    assert status == 403 and answer["error"]["code"] == "model_not_allowed", answer

    reader = await _key(embed_stack, scopes=["read"])
    status, answer, _ = await _post(embed_stack, {"model": "mock/echo", "input": "a"}, reader)
    assert status == 403 and answer["error"]["code"] == "insufficient_scope", answer

    limited = await _key(embed_stack, limits={"requests_per_minute": 1})
    answers = [
        await _post(embed_stack, {"model": "mock/echo", "input": "a"}, limited) for _ in range(3)
    ]
    assert answers[0][0] == 200
    assert answers[0][2]["x-ratelimit-limit-requests"] == "1"
    # Three calls cross at most one minute boundary: one of the later two is refused.
    refused = [a for a in answers[1:] if a[0] == 429]
    assert refused and refused[0][1]["error"]["code"] == "rate_limit_exceeded"


def test_redacted_storage_keeps_the_shape_not_the_words() -> None:
    from shared.openai_embeddings import parse_embedding_request, recorded_request

    req = parse_embedding_request(b'{"model": "m", "input": ["abc", "hello"], "dimensions": 3}')
    assert recorded_request(req, "redacted") == {
        "model": "m",
        "encoding_format": "float",
        "input_count": 2,
        "dimensions": 3,
        "store": "redacted",
        "input": ["[redacted: 3 chars]", "[redacted: 5 chars]"],
    }
    tokens = parse_embedding_request(b'{"model": "m", "input": [5, 6]}')
    assert recorded_request(tokens, "redacted")["input"] == "[redacted: token ids]"
    assert "input" not in recorded_request(tokens, "none")


def test_azure_dated_versions_use_the_deployment_path() -> None:
    from services.proxy.providers.azure import AzureConfig, AzureOpenAIProvider

    provider = AzureOpenAIProvider(
        AzureConfig(endpoint="https://res.openai.azure.com", api_key="k", api_version="2024-10-21")
    )
    assert provider.url_for("emb", "embeddings") == (
        "https://res.openai.azure.com/openai/deployments/emb/embeddings?api-version=2024-10-21"
    )
    v1 = AzureOpenAIProvider(AzureConfig(endpoint="https://res.openai.azure.com", api_key="k"))
    assert v1.url_for("emb", "embeddings") == "https://res.openai.azure.com/openai/v1/embeddings"


async def test_the_console_shows_an_embedding_step(embed_stack: TestStack) -> None:
    status, _, headers = await _post(
        embed_stack, {"model": "mock/echo", "input": ["console input"], "dimensions": 5}
    )
    assert status == 200
    trajectory_id = headers["x-jetty-trajectory-id"]
    base = embed_stack.base_url + "/ui"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(
            base + "/login", data={"token": embed_stack.token, "next": "/ui/tasks"}
        ) as response:
            assert response.status == 200
        async with session.get(f"{base}/trajectories/{trajectory_id}") as response:
            page = await response.text()
            assert response.status == 200, page
        async with session.get(f"{base}/trajectories/{trajectory_id}/steps/0") as response:
            step = await response.text()
            assert response.status == 200, step
    assert "1 vector of 5 dimensions" in page
    # "Copy as curl" repeats the call on its own route.
    assert f"{embed_stack.base_url}/v1/embeddings" in page and "console input" in page
    assert "console input" in step and "1 vector of 5 dimensions (float)" in step
