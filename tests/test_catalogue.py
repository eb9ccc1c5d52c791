"""The OpenAI-compatible provider catalogue: data hygiene, routing, env resolution.

No network: everything here reads the shipped TOML or small in-memory catalogues.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from services.proxy.catalogue import (
    DEFAULT_CATALOGUE_PATH,
    NATIVE_MODEL_PREFIXES,
    NATIVE_PROVIDER_NAMES,
    Catalogue,
    CatalogueError,
    configured_providers,
    env_table_markdown,
    load_catalogue,
    parse_catalogue,
    provider_statuses,
    resolve_provider,
)

ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "providers.md"


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return load_catalogue()


@pytest.fixture(scope="module")
def raw() -> list[dict[str, Any]]:
    with DEFAULT_CATALOGUE_PATH.open("rb") as fh:
        entries: list[dict[str, Any]] = tomllib.load(fh)["provider"]
    return entries


def entry(name: str = "acme", **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "display_name": name.title(),
        "base_url": f"https://api.{name}.example/v1",
        "auth": "bearer",
        "key_env": f"{name.upper().replace('-', '_')}_API_KEY",
        "base_url_env": f"{name.upper().replace('-', '_')}_BASE_URL",
        "docs": f"https://docs.{name}.example/api",
    }
    base.update(overrides)
    return base


def catalogue_of(*entries: dict[str, Any]) -> Catalogue:
    return parse_catalogue({"version": 1, "provider": list(entries)})


# ── the shipped data ─────────────────────────────────────────────────────────


def test_catalogue_is_large_and_mostly_verified(cat: Catalogue) -> None:
    assert len(cat) >= 100
    verified = sum(p.verified for p in cat.providers)
    assert verified / len(cat) >= 0.85, f"only {verified}/{len(cat)} entries verified"


def test_names_are_unique_lowercase_ids(cat: Catalogue, raw: list[dict[str, Any]]) -> None:
    names = [e["name"] for e in raw]
    assert len(names) == len(set(names))
    assert len(cat) == len(raw)
    for name in names:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", name), name
        assert name not in NATIVE_PROVIDER_NAMES


def test_every_entry_cites_https_docs(cat: Catalogue) -> None:
    for p in cat.providers:
        parts = urlsplit(p.docs)
        assert parts.scheme == "https" and parts.netloc, p.name


def test_base_urls_are_https_unless_local(cat: Catalogue) -> None:
    for p in cat.providers:
        scheme = urlsplit(p.base_url).scheme
        if p.local:
            assert scheme in {"http", "https"}, p.name
        else:
            assert scheme == "https", p.name
        assert not p.base_url.endswith("/"), p.name
        assert not p.base_url.endswith("/chat/completions"), p.name


def test_env_names_are_shell_names(cat: Catalogue) -> None:
    for p in cat.providers:
        for var in p.env_vars:
            assert ENV_NAME.fullmatch(var), (p.name, var)
        if not p.local:
            assert p.key_env is not None, p.name


def test_each_key_variable_belongs_to_one_provider(cat: Catalogue) -> None:
    keys = [p.key_env for p in cat.providers if p.key_env]
    assert len(keys) == len(set(keys))
    base_envs = [p.base_url_env for p in cat.providers]
    assert len(base_envs) == len(set(base_envs))


def test_no_prefix_collisions(cat: Catalogue) -> None:
    seen: dict[str, str] = {}
    for p in cat.providers:
        for prefix in p.model_prefixes:
            assert prefix not in seen, f"{prefix!r} in {seen.get(prefix)} and {p.name}"
            seen[prefix] = p.name
            for native in NATIVE_MODEL_PREFIXES:
                assert not prefix.startswith(native) and not native.startswith(prefix)
    assert len(seen) >= 20


def test_templates_list_their_variables(cat: Catalogue) -> None:
    templated = {p.name: p for p in cat.providers if p.url_vars}
    assert "cloudflare" in templated
    for p in templated.values():
        assert sorted(re.findall(r"\{([A-Z0-9_]+)\}", p.base_url)) == sorted(p.url_vars)


def test_requested_providers_are_present(cat: Catalogue) -> None:
    wanted = {
        "mistral", "groq", "deepseek", "xai", "together", "fireworks", "openrouter",
        "perplexity", "cerebras", "deepinfra", "nebius", "sambanova", "hyperbolic",
        "novita", "ollama", "vllm", "lmstudio", "llamacpp", "moonshot", "zhipu",
        "dashscope", "baichuan", "minimax", "stepfun", "yi", "siliconflow", "nvidia",
        "github-models", "cloudflare", "azure-ai", "huggingface", "lepton",
        "featherless", "friendli", "nscale", "lambda", "kluster", "inference-net",
        "parasail", "chutes", "venice", "ai21", "upstage", "reka", "writer", "scaleway",
        "ovhcloud", "ionos", "greennode", "vercel", "helicone", "portkey",
        "litellm-proxy", "localai", "jan", "gpt4all", "koboldcpp", "textgen-webui",
        "tgi", "xinference", "aphrodite", "sglang", "tabbyapi", "llamafile",
    }  # fmt: skip
    assert wanted <= set(cat.names())


def test_quirks_are_parsed(cat: Catalogue) -> None:
    groq = cat.get("groq")
    assert groq is not None
    assert "logit_bias" in groq.quirks.unsupported_params
    assert groq.quirks.single_choice and groq.quirks.no_message_name
    assert groq.quirks.stream_usage  # default
    chutes = cat.get("chutes")
    assert chutes is not None and chutes.quirks.max_tokens_field == "max_tokens"
    azure = cat.get("azure-ai")
    assert azure is not None and azure.quirks.query_params == {"api-version": "2024-05-01-preview"}


def test_load_catalogue_is_cached() -> None:
    assert load_catalogue() is load_catalogue()


def test_models_are_frozen(cat: Catalogue) -> None:
    p = cat.get("mistral")
    assert p is not None
    with pytest.raises(ValueError):
        p.base_url = "https://evil.example/v1"  # type: ignore[misc]


# ── routing ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("mistral-large-latest", "mistral"),
        ("codestral-latest", "mistral"),
        ("open-mistral-nemo", "mistral"),
        ("deepseek-chat", "deepseek"),
        ("deepseek-reasoner", "deepseek"),
        ("grok-4", "xai"),
        ("sonar-pro", "perplexity"),
        ("kimi-k2-0905-preview", "moonshot"),
        ("@cf/meta/llama-3.1-8b-instruct", "cloudflare"),
        ("accounts/fireworks/models/llama-v3p1-8b-instruct", "fireworks"),
        ("jamba-large", "ai21"),
        ("databricks-meta-llama-3-3-70b-instruct", "databricks"),
    ],
)
def test_bare_names_route_by_prefix(cat: Catalogue, model: str, provider: str) -> None:
    found = cat.provider_for_model(model)
    assert found is not None and found.name == provider
    assert cat.route(model) == (found, model)


@pytest.mark.parametrize(
    "model",
    [
        "llama3-70b-8192",  # served by Groq and others: ambiguous
        "llama-3.3-70b-versatile",
        "meta-llama/Llama-3.3-70B-Instruct",
        "glm-4.6",  # zhipu and zai
        "gpt-4o",  # native adapters
        "o3-mini",
        "claude-sonnet-4-5",
        "gemini-2.5-pro",
        "command-r-plus",
    ],
)
def test_ambiguous_or_native_names_have_no_bare_route(cat: Catalogue, model: str) -> None:
    assert cat.provider_for_model(model) is None
    assert cat.route(model) is None


def test_explicit_provider_prefix(cat: Catalogue) -> None:
    groq = cat.get("groq")
    openrouter = cat.get("openrouter")
    assert cat.route("groq/llama3-70b-8192") == (groq, "llama3-70b-8192")
    assert cat.route("openrouter/anthropic/claude-3.5-sonnet") == (
        openrouter,
        "anthropic/claude-3.5-sonnet",
    )
    # The explicit route wins over an org prefix that happens to equal a provider
    # name, so an org-qualified id for that provider repeats the name.
    nvidia = cat.get("nvidia")
    assert cat.route("nvidia/nvidia/llama-3.1-nemotron-70b-instruct") == (
        nvidia,
        "nvidia/llama-3.1-nemotron-70b-instruct",
    )
    # Unknown head: not an explicit route, and no prefix matches.
    assert cat.route("nosuch/model") is None
    # An empty model after the prefix is not a route.
    assert cat.route("groq/") is None


def test_longest_prefix_wins() -> None:
    c = catalogue_of(
        entry("alpha", model_prefixes=["foo-"]),
        entry("beta", model_prefixes=["foo-bar-"]),
    )
    assert c.provider_for_model("foo-bar-1") is c.get("beta")
    assert c.provider_for_model("foo-baz") is c.get("alpha")
    assert c.provider_for_model("fo") is None


# ── load-time validation ─────────────────────────────────────────────────────


def test_identical_prefix_in_two_providers_is_rejected() -> None:
    with pytest.raises(CatalogueError, match=r"ambiguous model prefix 'foo-'.*'alpha'.*'beta'"):
        catalogue_of(
            entry("alpha", model_prefixes=["foo-"]),
            entry("beta", model_prefixes=["foo-"]),
        )


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry("alpha"), entry("alpha", key_env="OTHER_KEY", base_url_env="OTHER_URL")],
         "duplicate provider name"),
        ([entry("alpha"), entry("beta", key_env="ALPHA_API_KEY")], "a key must belong to one"),
        ([entry("alpha"), entry("beta", base_url_env="ALPHA_BASE_URL")], "base_url_env"),
        ([entry("alpha"), entry("beta", model_prefixes=["alpha/x-"])], "explicit route"),
        ([entry("alpha", model_prefixes=["gpt-4-local"])], "native prefix"),
        ([entry("alpha", model_prefixes=["x-", "x-y-"])], "redundant"),
        ([entry("openai")], "reserved"),
        ([entry("Alpha")], "lowercase"),
        ([entry("alpha", base_url="http://api.alpha.example/v1")], "must use https"),
        ([entry("alpha", base_url="https://api.alpha.example/v1/")], "must not end with '/'"),
        ([entry("alpha", base_url="https://api.alpha.example/v1/chat/completions")],
         "end before"),
        ([entry("alpha", base_url="https://u:p@api.alpha.example/v1")], "credentials"),
        ([entry("alpha", base_url="https://api.alpha.example/v1?x=1")], "query"),
        ([entry("alpha", base_url="https://{HOST}.example/v1")], "placeholders"),
        ([entry("alpha", url_vars=["HOST"])], "placeholders"),
        ([entry("alpha", auth="header")], "auth_header"),
        ([entry("alpha", auth_header="x-key")], "only allowed"),
        ([entry("alpha", auth="none", key_env=None)], "needs auth"),
        ([entry("alpha", key_env=None)], "needs key_env"),
        ([entry("alpha", key_env="alpha_key")], "environment variable name"),
        ([entry("alpha", docs="http://docs.alpha.example")], "docs must be an https URL"),
        ([entry("alpha", base_url_typo="x")], "Extra inputs"),
        ([entry("alpha", quirks={"no_such_quirk": True})], "Extra inputs"),
        ([entry("alpha", quirks={"max_tokens_field": "max_len"})], "max_tokens_field"),
    ],
)  # fmt: skip
def test_bad_entries_are_rejected(entries: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(CatalogueError, match=message):
        catalogue_of(*entries)


def test_errors_name_the_provider() -> None:
    with pytest.raises(CatalogueError, match=r"provider 'beta': .*base URL 'ftp://x.example'"):
        catalogue_of(entry("alpha"), entry("beta", base_url="ftp://x.example"))


def test_local_entries_may_use_http_and_omit_key() -> None:
    c = catalogue_of(
        entry("box", base_url="http://localhost:9000/v1", local=True, auth="none", key_env=None)
    )
    box = c.get("box")
    assert box is not None and box.local and not box.key_required


def test_top_level_shape_is_checked() -> None:
    with pytest.raises(CatalogueError):
        parse_catalogue({"version": 2, "provider": [entry("alpha")]})
    with pytest.raises(CatalogueError):
        parse_catalogue({"version": 1, "providers": [entry("alpha")]})


# ── environment resolution ───────────────────────────────────────────────────


def _resolve(cat: Catalogue, name: str, env: dict[str, str]) -> Any:
    provider = cat.get(name)
    assert provider is not None
    return resolve_provider(provider, env)


def test_hosted_provider_needs_its_key(cat: Catalogue) -> None:
    status = _resolve(cat, "groq", {})
    assert not status.configured
    assert status.base_url is None
    assert "GROQ_API_KEY" in status.reason
    # Blank values count as unset.
    assert not _resolve(cat, "groq", {"GROQ_API_KEY": "  "}).configured


def test_key_present_uses_the_default_url(cat: Catalogue) -> None:
    status = _resolve(cat, "groq", {"GROQ_API_KEY": "gsk_test"})
    assert status.configured and status.reason == ""
    assert status.base_url == "https://api.groq.com/openai/v1"
    assert status.base_url_source == "default"
    assert status.auth_headers() == {"Authorization": "Bearer gsk_test"}
    assert status.endpoint() == "https://api.groq.com/openai/v1/chat/completions"
    assert "gsk_test" not in repr(status)


def test_env_override_beats_default(cat: Catalogue) -> None:
    env = {"MISTRAL_API_KEY": "k", "MISTRAL_BASE_URL": "https://eu.proxy.example/mistral/v1/"}
    status = _resolve(cat, "mistral", env)
    assert status.configured
    assert status.base_url == "https://eu.proxy.example/mistral/v1"
    assert status.base_url_source == "env"


def test_invalid_override_is_reported_not_used(cat: Catalogue) -> None:
    env = {"MISTRAL_API_KEY": "k", "MISTRAL_BASE_URL": "http://plain.example/v1"}
    status = _resolve(cat, "mistral", env)
    assert not status.configured
    assert "MISTRAL_BASE_URL is invalid" in status.reason
    env["MISTRAL_BASE_URL"] = "https://user:pw@host.example/v1"
    assert "credentials" in _resolve(cat, "mistral", env).reason


def test_template_is_filled_from_url_vars(cat: Catalogue) -> None:
    env = {"CLOUDFLARE_API_TOKEN": "cf", "CLOUDFLARE_ACCOUNT_ID": "0123abcd"}
    status = _resolve(cat, "cloudflare", env)
    assert status.configured
    assert status.base_url == "https://api.cloudflare.com/client/v4/accounts/0123abcd/ai/v1"
    assert status.base_url_source == "template"


def test_missing_url_var_is_not_configured_with_a_clear_reason(cat: Catalogue) -> None:
    status = _resolve(cat, "cloudflare", {"CLOUDFLARE_API_TOKEN": "cf"})
    assert not status.configured
    assert "missing CLOUDFLARE_ACCOUNT_ID" in status.reason
    assert "CLOUDFLARE_WORKERS_AI_BASE_URL" in status.reason
    with pytest.raises(ValueError, match="not configured"):
        status.endpoint()


def test_override_beats_template(cat: Catalogue) -> None:
    env = {
        "CLOUDFLARE_API_TOKEN": "cf",
        "CLOUDFLARE_WORKERS_AI_BASE_URL": "https://gw.example/cf/v1",
    }
    status = _resolve(cat, "cloudflare", env)
    assert status.configured and status.base_url == "https://gw.example/cf/v1"
    assert status.base_url_source == "env"


@pytest.mark.parametrize(
    "value",
    ["evil.example/steal", "a@evil.example", "acct?x=1", "acct#frag", "acct:443", "", "../x"],
)
def test_url_vars_cannot_inject_hosts_or_paths(cat: Catalogue, value: str) -> None:
    env = {"CLOUDFLARE_API_TOKEN": "cf", "CLOUDFLARE_ACCOUNT_ID": value}
    status = _resolve(cat, "cloudflare", env)
    assert not status.configured
    assert status.base_url is None


def test_host_url_var_accepts_a_pasted_https_url(cat: Catalogue) -> None:
    env = {"DATABRICKS_TOKEN": "dapi", "DATABRICKS_HOST": "https://adb-123.4.azuredatabricks.net/"}
    status = _resolve(cat, "databricks", env)
    assert status.base_url == "https://adb-123.4.azuredatabricks.net/serving-endpoints"


def test_header_auth_and_fixed_query(cat: Catalogue) -> None:
    portkey = _resolve(cat, "portkey", {"PORTKEY_API_KEY": "pk"})
    assert portkey.auth_headers() == {"x-portkey-api-key": "pk"}
    azure = _resolve(
        cat, "azure-ai", {"AZURE_INFERENCE_CREDENTIAL": "az", "AZURE_AI_RESOURCE": "myres"}
    )
    assert azure.auth_headers() == {"api-key": "az"}
    assert azure.endpoint() == (
        "https://myres.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview"
    )


def test_local_servers_are_off_until_enabled(cat: Catalogue) -> None:
    off = _resolve(cat, "ollama", {})
    assert not off.configured and "OLLAMA_BASE_URL" in off.reason
    on = _resolve(cat, "ollama", {"OLLAMA_BASE_URL": "http://gpu-box.internal:11434/v1"})
    assert on.configured and on.base_url == "http://gpu-box.internal:11434/v1"
    assert on.auth_headers() == {}
    # A local server with an optional key is enabled by the key alone, at its default URL.
    vllm = _resolve(cat, "vllm", {"VLLM_API_KEY": "token"})
    assert vllm.configured and vllm.base_url == "http://localhost:8000/v1"
    assert vllm.auth_headers() == {"Authorization": "Bearer token"}
    # ...and by the URL alone, then sending no key.
    vllm_open = _resolve(cat, "vllm", {"VLLM_BASE_URL": "http://10.0.0.5:8000/v1"})
    assert vllm_open.configured and vllm_open.auth_headers() == {}


def test_configured_providers_lists_only_usable_ones(cat: Catalogue) -> None:
    env = {
        "GROQ_API_KEY": "g",
        "OPENROUTER_API_KEY": "o",
        "CLOUDFLARE_API_TOKEN": "cf",  # no account id: not usable
        "OLLAMA_BASE_URL": "http://localhost:11434/v1",
        "UNRELATED": "x",
    }
    names = [s.name for s in configured_providers(env, cat)]
    assert names == [p.name for p in cat.providers if p.name in {"groq", "openrouter", "ollama"}]
    statuses = provider_statuses(env, cat)
    assert len(statuses) == len(cat)
    assert not any(s.configured for s in statuses if s.name not in set(names))
    assert configured_providers({}, cat) == ()


def test_hosted_urls_never_resolve_to_plain_http(cat: Catalogue) -> None:
    for p in cat.providers:
        if p.local:
            continue
        env = {var: "value1" for var in p.env_vars if var != p.base_url_env}
        status = resolve_provider(p, env)
        assert status.configured, (p.name, status.reason)
        assert status.base_url is not None and status.base_url.startswith("https://"), p.name
        env[p.base_url_env] = "http://downgrade.example/v1"
        assert not resolve_provider(p, env).configured, p.name


# ── docs ─────────────────────────────────────────────────────────────────────


def test_docs_table_matches_the_data(cat: Catalogue) -> None:
    text = DOCS_PATH.read_text(encoding="utf-8")
    assert env_table_markdown(cat) in text, (
        "docs/providers.md is out of date: regenerate the table with "
        "`.venv/bin/python -m services.proxy.catalogue`"
    )
