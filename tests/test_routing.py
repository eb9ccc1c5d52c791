"""Routing: catalogue providers built from the environment, bare prefixes, aliases
with weights and fallbacks, and what a client can never choose (the upstream URL, its
credentials). Upstreams are fakes (tests/fakes/openai_upstream.py); the security
cases go through the proxy worker on a real NATS server."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from services.proxy.catalogue import load_catalogue, parse_catalogue, resolve_provider
from services.proxy.providers import build_providers, catalogue_provider
from services.proxy.providers.base import UpstreamCall
from services.proxy.providers.openai_compat import OpenAICompatProvider, Timeouts
from services.proxy.router import Router
from services.proxy.routes import RoutesError, parse_routes
from services.proxy.settings import ProxySettings
from services.proxy.worker import Worker
from shared.bus import ClaimStore, EventPublisher, connect, ensure_streams
from shared.chatwire import Frame
from shared.errors import InvalidRequest, NotFound
from shared.openai_chat import parse_chat_request
from tests.fakes.openai_upstream import FakeUpstream
from tests.test_proxy import Bus, chat, error_of, events, make_call, roundtrip

KEY = "sk-routing-test-key-42"
SETTINGS = ProxySettings()


def router(env: dict[str, str], routes: dict[str, Any] | None = None, seed: int = 1) -> Router:
    aliases = parse_routes(routes) if routes else None
    return Router(build_providers(SETTINGS, env), aliases=aliases, rng=random.Random(seed))


def upstream_call(body: dict[str, Any], model: str) -> UpstreamCall:
    raw = orjson.dumps(body)
    return UpstreamCall(model=model, request=parse_chat_request(raw), body=raw)


# --- catalogue providers and the router ---------------------------------------------------


def test_configured_catalogue_providers_route_explicitly_and_by_prefix() -> None:
    r = router({"MISTRAL_API_KEY": "m-key", "GROQ_API_KEY": "g-key"})
    route = r.resolve("groq/llama-3.3-70b-versatile")
    assert (route.provider.name, route.upstream_model) == ("groq", "llama-3.3-70b-versatile")
    route = r.resolve("mistral-large-latest")  # a catalogue model prefix
    assert (route.provider.name, route.upstream_model) == ("mistral", "mistral-large-latest")
    names = {p.name for p in r.providers}
    assert {"mistral", "groq"} <= names and "openrouter" not in names  # only configured ones
    assert r.resolve("mock/echo").provider.name == "mock"


def test_unconfigured_provider_404_names_the_variable() -> None:
    r = router({})
    with pytest.raises(NotFound, match="GROQ_API_KEY"):
        r.resolve("groq/llama-3.3-70b-versatile")
    with pytest.raises(NotFound, match="XAI_API_KEY"):
        r.resolve("grok-4")  # bare catalogue prefix of an unconfigured provider
    with pytest.raises(NotFound, match="OLLAMA_BASE_URL"):
        r.resolve("ollama/llama3")
    with pytest.raises(NotFound, match="ANTHROPIC_API_KEY"):
        r.resolve("claude-sonnet-4-5")  # native patterns still come first


def test_catalogue_provider_url_auth_and_quirks() -> None:
    entry = {
        "name": "acme",
        "display_name": "Acme",
        "base_url": "http://localhost:9/v1",
        "auth": "header",
        "auth_header": "x-acme-key",
        "key_env": "ACME_API_KEY",
        "base_url_env": "ACME_BASE_URL",
        "docs": "https://acme.example/docs",
        "local": True,
        "quirks": {
            "max_tokens_field": "max_tokens",
            "unsupported_params": ["logit_bias"],
            "query_params": {"api-version": "2024-05-01"},
            "single_choice": True,
            "stream_usage": False,
        },
    }
    cat = parse_catalogue({"version": 1, "provider": [entry]})
    config = resolve_provider(cat.providers[0], {"ACME_API_KEY": "acme-secret"})
    provider = catalogue_provider(config, Timeouts(), 4)
    call = upstream_call(chat("x", max_completion_tokens=5, logit_bias={"1": 2}), "m")
    assert (
        provider._url_for(call) == "http://localhost:9/v1/chat/completions?api-version=2024-05-01"
    )
    assert provider._headers["x-acme-key"] == "acme-secret"
    assert "Authorization" not in provider._headers
    sent = orjson.loads(provider._body(call, stream=True))
    assert sent["max_tokens"] == 5 and "max_completion_tokens" not in sent
    assert "logit_bias" not in sent and "stream_options" not in sent
    with pytest.raises(InvalidRequest, match="n=1"):
        provider._body(upstream_call(chat("x", n=2), "m"), stream=False)


def test_models_list_configured_providers_and_aliases() -> None:
    r = router(
        {"GROQ_API_KEY": "g"},
        {"aliases": {"fast": ["groq/llama-3.3-70b-versatile", "mock/echo"]}},
    )
    ids = [card.id for card in r.model_cards()]
    assert "mock/echo" in ids and "fast" in ids
    assert not any(i.startswith("groq/") for i in ids)  # the catalogue has no model lists


# --- aliases --------------------------------------------------------------------------


def test_routes_validated_at_start() -> None:
    with pytest.raises(RoutesError, match="unknown provider 'nosuch'"):
        router({}, {"aliases": {"a": ["nosuch/model"]}})
    with pytest.raises(RoutesError, match="GROQ_API_KEY"):
        router({}, {"aliases": {"a": ["groq/llama"]}})
    with pytest.raises(RoutesError, match="provider>/<model"):
        parse_routes({"aliases": {"a": ["just-a-name"]}})
    with pytest.raises(RoutesError, match="without '/'"):
        parse_routes({"aliases": {"mock/x": ["mock/echo"]}})
    with pytest.raises(RoutesError, match="weighted targets come first"):
        parse_routes({"aliases": {"a": ["mock/a", {"target": "mock/b", "weight": 2}]}})
    with pytest.raises(RoutesError):
        parse_routes({"aliases": {"a": [{"target": "mock/a", "weight": 0}]}})
    with pytest.raises(RoutesError):
        parse_routes({"routes": {}})


def test_weights_balance_the_first_tier_and_fallbacks_follow() -> None:
    routes = {
        "aliases": {
            "balanced": [
                {"target": "mock/heavy", "weight": 3},
                {"target": "mock/light", "weight": 1},
                "mock/spare",
            ]
        }
    }
    r = router({}, routes, seed=12345)
    firsts: Counter[str] = Counter()
    for _ in range(4000):
        plan = [route.upstream_model for route in r.plan("balanced")]
        assert sorted(plan[:2]) == ["heavy", "light"] and plan[2] == "spare"
        firsts[plan[0]] += 1
    share = firsts["heavy"] / 4000
    assert 0.72 < share < 0.78, share  # 3:1, seeded so the figure is reproducible


def test_same_seed_same_choices() -> None:
    routes = {
        "aliases": {"b": [{"target": "mock/x", "weight": 1}, {"target": "mock/y", "weight": 1}]}
    }
    a, b = router({}, routes, seed=9), router({}, routes, seed=9)
    assert [a.plan("b")[0].upstream_model for _ in range(20)] == [
        b.plan("b")[0].upstream_model for _ in range(20)
    ]


# --- security: a client never chooses the upstream or its credentials -------------------


@pytest.fixture(scope="module")
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    nc = await connect(nats_url, name="routing-test-client")
    js = nc.jetstream()
    await ensure_streams(js)
    yield Bus(nc, js)
    await nc.drain()


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[tuple[FakeUpstream, FakeUpstream]]:
    """The configured upstream, and an "attacker" host no request may ever reach."""
    good, attacker = FakeUpstream(api_key=KEY), FakeUpstream(api_key=None)
    await good.start()
    await attacker.start()
    yield good, attacker
    await good.stop()
    await attacker.stop()


@pytest.fixture
async def worker(
    nats_url: str, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> AsyncIterator[Worker]:
    good, attacker = upstreams
    good.reset()
    attacker.reset()
    env = {"VLLM_BASE_URL": good.base_url, "VLLM_API_KEY": KEY}
    r = Router(build_providers(SETTINGS, env))
    nc = await connect(nats_url, name="proxy-under-routing-test")
    js = nc.jetstream()
    publisher = EventPublisher(nc, js, "proxy/test", claim_threshold=256 * 1024)
    w = Worker(nc, publisher, ClaimStore(js), r, keepalive_interval=0.2)
    await w.start()
    yield w
    await w.stop(grace=10)
    await publisher.flush()
    await nc.drain()


def _no_leak(good: FakeUpstream, attacker: FakeUpstream) -> None:
    assert len(attacker.requests) == 0, "a request reached a host the client named"
    for request in good.requests:
        assert request.path == "/v1/chat/completions"
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        assert not {h.lower() for h in request.headers} & {"x-api-key", "api-key", "x-evil"}


@pytest.mark.parametrize(
    "field",
    [
        {"api_base": "ATTACKER"},
        {"base_url": "ATTACKER"},
        {"extra_headers": {"Authorization": "Bearer stolen", "x-evil": "1"}},
        {"headers": {"Authorization": "Bearer stolen", "x-evil": "1"}},
        {"api_key": "sk-client-chosen"},
        {"extra_body": {"api_base": "ATTACKER"}},
    ],
    ids=lambda f: next(iter(f)),
)
async def test_body_fields_cannot_choose_host_or_credentials(
    bus: Bus,
    worker: Worker,
    upstreams: tuple[FakeUpstream, FakeUpstream],
    field: dict[str, Any],
) -> None:
    good, attacker = upstreams
    text = orjson.dumps(field).decode().replace("ATTACKER", attacker.base_url)
    body = chat("vllm/some-model", **orjson.loads(text))
    call, raw = make_call(f"sec-{uuid.uuid4().hex[:8]}", body)
    reply = await roundtrip(bus.nc, call, raw)
    # The configured upstream rejects the unknown argument (as OpenAI does): a 4xx.
    assert 400 <= error_of(reply)["status"] < 500
    _no_leak(good, attacker)


@pytest.mark.parametrize(
    "model",
    [
        "vllm/http://ATTACKER/",
        "vllm/../../admin",
        "vllm/m?api_base=ATTACKER",
        "vllm/m#frag",
        "vllm/user:pass@ATTACKER",
        "vllm/m\r\nX-Evil: 1",
        "http://ATTACKER/v1",
        "ATTACKER/gpt-4o",
        "user@ATTACKER/m",
    ],
)
async def test_model_strings_cannot_steer_the_request(
    bus: Bus, worker: Worker, upstreams: tuple[FakeUpstream, FakeUpstream], model: str
) -> None:
    good, attacker = upstreams
    host = attacker.base_url.removeprefix("http://").removesuffix("/v1")
    model = model.replace("ATTACKER", host)
    call, raw = make_call(f"sec-{uuid.uuid4().hex[:8]}", chat(model))
    reply = await roundtrip(bus.nc, call, raw)
    if model.startswith("vllm/"):
        # The rest is only the upstream's model *name*, in the JSON body, verbatim.
        assert reply[-1][0] is Frame.RESPONSE
        (request,) = good.requests
        assert request.body["model"] == model.removeprefix("vllm/")
    else:
        assert error_of(reply)["status"] == 404
        assert not good.requests
    _no_leak(good, attacker)


async def test_unconfigured_prefix_is_404_and_sends_nothing(
    bus: Bus, worker: Worker, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    good, attacker = upstreams
    collection = f"sec-{uuid.uuid4().hex[:8]}"
    call, raw = make_call(collection, chat("groq/llama-3.3-70b-versatile"))
    error = error_of(await roundtrip(bus.nc, call, raw))
    assert error["status"] == 404 and "GROQ_API_KEY" in error["error"]["message"]
    assert not good.requests
    _no_leak(good, attacker)
    failed = (await events(bus, call))["completion.failed"]
    assert failed.attempts == []


def test_provider_keys_only_from_server_configuration() -> None:
    # Every catalogue provider's adapter takes its URL and key from the environment
    # mapping alone; with an empty one nothing is built.
    assert [p.name for p in build_providers(SETTINGS, {})] == ["mock"]
    assert isinstance(build_providers(SETTINGS, {"GROQ_API_KEY": "k"})[-1], OpenAICompatProvider)
    assert len(load_catalogue()) >= 100
