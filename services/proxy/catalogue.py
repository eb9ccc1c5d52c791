"""Data-driven catalogue of OpenAI-compatible upstream providers.

The catalogue lives in ``data/providers.toml``: one ``[[provider]]`` table per
provider that speaks the OpenAI chat-completions wire format. Adding a provider
is a data change only; this module loads and validates the file, answers
"which provider serves this model name?", and works out, from the server's
environment, which providers are usable and at which base URL.

Security rules this module enforces (see ``docs/providers.md``):

* A base URL comes only from the catalogue and the server's environment
  (``*_BASE_URL`` override, URL-template variables). Nothing here accepts a
  value taken from a client request; callers must not pass one in.
* Each API-key variable belongs to exactly one provider, so a key can never be
  sent to another provider's host.
* URL-template variables (account ids, regions, hosts) must be plain host or
  path tokens, so a variable cannot smuggle in another host, a path, a
  userinfo part or a query.
* Hosted (non-local) providers only ever resolve to ``https`` URLs.

Nothing in this module does network I/O.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "DEFAULT_CATALOGUE_PATH",
    "NATIVE_MODEL_PREFIXES",
    "NATIVE_PROVIDER_NAMES",
    "Catalogue",
    "CatalogueError",
    "Provider",
    "ProviderConfig",
    "Quirks",
    "configured_providers",
    "env_table_markdown",
    "load_catalogue",
    "load_catalogue_file",
    "parse_catalogue",
    "provider_statuses",
    "resolve_provider",
]

DEFAULT_CATALOGUE_PATH = Path(__file__).resolve().parent / "data" / "providers.toml"

#: Provider names served by native (translating) adapters, not by this catalogue.
NATIVE_PROVIDER_NAMES: frozenset[str] = frozenset(
    {
        "openai",
        "azure",
        "azure-openai",
        "anthropic",
        "gemini",
        "google",
        "vertex",
        "vertex-ai",
        "cohere",
        "bedrock",
    }
)

#: Bare model-name prefixes owned by the native adapters. A catalogue prefix may
#: not overlap any of these (neither may start with the other).
NATIVE_MODEL_PREFIXES: tuple[str, ...] = (
    "gpt-",
    "chatgpt-",
    "o1",
    "o3",
    "o4",
    "claude-",
    "gemini-",
    "command-",
)

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_ENV_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
# A URL variable is a host label, a dotted host or an id: no '/', ':', '@', '?', '#'.
_URL_VAR_VALUE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_CHAT_SUFFIX = "/chat/completions"


class CatalogueError(ValueError):
    """The catalogue file is malformed or inconsistent."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Quirks(_Frozen):
    """Known, documented differences from the OpenAI chat-completions API."""

    #: Accepts ``stream_options.include_usage`` (usage in the final stream chunk).
    stream_usage: bool = True
    #: The field the provider expects for the output-token limit, when it only
    #: accepts one of ``max_tokens`` / ``max_completion_tokens``.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    #: Does not accept ``tools`` / ``tool_choice``.
    no_tools: bool = False
    #: ``n`` must be 1 when given.
    single_choice: bool = False
    #: Rejects ``messages[].name``.
    no_message_name: bool = False
    #: Message ``content`` must be a plain string, not a list of parts.
    content_as_string: bool = False
    #: Request fields the provider rejects; drop them before sending.
    unsupported_params: tuple[str, ...] = ()
    #: Fixed query parameters every request needs (e.g. ``api-version``).
    query_params: dict[str, str] = Field(default_factory=dict)

    @field_validator("unsupported_params")
    @classmethod
    def _params_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v) or any(not p for p in v):
            raise ValueError("unsupported_params must be non-empty and unique")
        return v


class Provider(_Frozen):
    """One OpenAI-compatible provider, as described in the catalogue file."""

    name: str
    display_name: str
    base_url: str
    url_vars: tuple[str, ...] = ()
    auth: Literal["bearer", "header", "none"]
    auth_header: str | None = None
    key_env: str | None = None
    base_url_env: str
    model_prefixes: tuple[str, ...] = ()
    docs: str
    local: bool = False
    verified: bool = True
    notes: str = ""
    quirks: Quirks = Field(default_factory=Quirks)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME_RE.fullmatch(v):
            raise ValueError(f"name {v!r} must be lowercase letters, digits and '-'")
        if v in NATIVE_PROVIDER_NAMES:
            raise ValueError(f"name {v!r} is reserved for a native adapter")
        return v

    @field_validator("display_name")
    @classmethod
    def _check_display_name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("display_name must not be empty")
        return v

    @field_validator("key_env", "base_url_env")
    @classmethod
    def _check_env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_RE.fullmatch(v):
            raise ValueError(f"environment variable name {v!r} must match {_ENV_RE.pattern}")
        return v

    @field_validator("url_vars")
    @classmethod
    def _check_url_vars(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for var in v:
            if not _ENV_RE.fullmatch(var):
                raise ValueError(f"url var {var!r} must match {_ENV_RE.pattern}")
        if len(set(v)) != len(v):
            raise ValueError("url_vars must be unique")
        return v

    @field_validator("auth_header")
    @classmethod
    def _check_auth_header(cls, v: str | None) -> str | None:
        if v is not None and not _HEADER_RE.fullmatch(v):
            raise ValueError(f"auth_header {v!r} is not a valid header name")
        return v

    @field_validator("docs")
    @classmethod
    def _check_docs(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError(f"docs must be an https URL, got {v!r}")
        return v

    @field_validator("model_prefixes")
    @classmethod
    def _check_prefixes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, p in enumerate(v):
            if not p or p != p.strip():
                raise ValueError(f"model prefix {p!r} must be non-empty without spaces")
            for native in NATIVE_MODEL_PREFIXES:
                if p.startswith(native) or native.startswith(p):
                    raise ValueError(f"model prefix {p!r} overlaps native prefix {native!r}")
            for other in v[:i]:
                if p.startswith(other) or other.startswith(p):
                    raise ValueError(f"model prefixes {other!r} and {p!r} are redundant")
        return v

    @model_validator(mode="after")
    def _check_consistency(self) -> Provider:
        placeholders = _PLACEHOLDER_RE.findall(self.base_url)
        if sorted(placeholders) != sorted(self.url_vars):
            raise ValueError(
                f"base_url placeholders {placeholders} must match url_vars {list(self.url_vars)}"
            )
        _check_base_url(
            _fill_template(self.base_url, dict.fromkeys(self.url_vars, "x")), self.local
        )
        if self.auth == "header" and self.auth_header is None:
            raise ValueError("auth = 'header' needs auth_header")
        if self.auth != "header" and self.auth_header is not None:
            raise ValueError("auth_header is only allowed with auth = 'header'")
        if self.auth == "none" and self.key_env is not None:
            raise ValueError("auth = 'none' takes no key_env")
        if not self.local:
            if self.auth == "none":
                raise ValueError("a hosted (non-local) provider needs auth")
            if self.key_env is None:
                raise ValueError("a hosted (non-local) provider needs key_env")
        return self

    @property
    def key_required(self) -> bool:
        """Whether requests must carry a key (hosted providers)."""
        return not self.local and self.auth != "none"

    @property
    def env_vars(self) -> tuple[str, ...]:
        """Every environment variable this provider reads."""
        names = [self.key_env] if self.key_env else []
        return (*names, self.base_url_env, *self.url_vars)


class _CatalogueFile(_Frozen):
    version: Literal[1]
    provider: tuple[Provider, ...]


def _fill_template(template: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def _check_base_url(url: str, local: bool) -> None:
    """Raise ValueError unless ``url`` is a usable OpenAI-compatible base URL."""
    parts = urlsplit(url)
    allowed = {"http", "https"} if local else {"https"}
    if parts.scheme not in allowed:
        raise ValueError(f"base URL {url!r} must use {' or '.join(sorted(allowed))}")
    if not parts.hostname:
        raise ValueError(f"base URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"base URL {url!r} must not carry credentials")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"base URL {url!r} must not have a query or fragment")
    if url.endswith("/"):
        raise ValueError(f"base URL {url!r} must not end with '/'")
    if url.endswith(_CHAT_SUFFIX):
        raise ValueError(f"base URL {url!r} must end before {_CHAT_SUFFIX}")
    if any(c.isspace() for c in url):
        raise ValueError(f"base URL {url!r} must not contain whitespace")


class Catalogue:
    """The validated set of providers, with lookups by name and model prefix."""

    __slots__ = ("_by_name", "_prefix_index", "providers")

    def __init__(self, providers: Sequence[Provider]) -> None:
        self.providers: tuple[Provider, ...] = tuple(providers)
        by_name: dict[str, Provider] = {}
        key_owner: dict[str, str] = {}
        base_env_owner: dict[str, str] = {}
        prefix_owner: dict[str, str] = {}
        for p in self.providers:
            if p.name in by_name:
                raise CatalogueError(f"duplicate provider name {p.name!r}")
            by_name[p.name] = p
            if p.key_env is not None:
                if p.key_env in key_owner:
                    raise CatalogueError(
                        f"key_env {p.key_env} is used by both {key_owner[p.key_env]!r} and "
                        f"{p.name!r}: a key must belong to one provider only"
                    )
                key_owner[p.key_env] = p.name
            if p.base_url_env in base_env_owner:
                raise CatalogueError(
                    f"base_url_env {p.base_url_env} is used by both "
                    f"{base_env_owner[p.base_url_env]!r} and {p.name!r}"
                )
            base_env_owner[p.base_url_env] = p.name
            for prefix in p.model_prefixes:
                if prefix in prefix_owner:
                    raise CatalogueError(
                        f"ambiguous model prefix {prefix!r}: claimed by both "
                        f"{prefix_owner[prefix]!r} and {p.name!r}"
                    )
                prefix_owner[prefix] = p.name
        for env_name, owner in base_env_owner.items():
            if env_name in key_owner:
                raise CatalogueError(
                    f"{env_name} is the base_url_env of {owner!r} and the key_env of "
                    f"{key_owner[env_name]!r}"
                )
        for prefix, owner in prefix_owner.items():
            head, sep, _ = prefix.partition("/")
            if sep and head in by_name:
                raise CatalogueError(
                    f"model prefix {prefix!r} of {owner!r} would be read as the explicit "
                    f"route '{head}/…'"
                )
        self._by_name = by_name
        # Longest prefix first, so the first match is the most specific one.
        self._prefix_index: tuple[tuple[str, Provider], ...] = tuple(
            sorted(
                ((prefix, by_name[owner]) for prefix, owner in prefix_owner.items()),
                key=lambda item: (-len(item[0]), item[0]),
            )
        )

    def __len__(self) -> int:
        return len(self.providers)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def get(self, name: str) -> Provider | None:
        """The provider called ``name`` (the ``name/`` routing prefix), if any."""
        return self._by_name.get(name)

    def provider_for_model(self, model: str) -> Provider | None:
        """The provider a bare model name routes to by prefix; longest prefix wins.

        ``None`` when no catalogue prefix matches: the name is ambiguous (served
        by many hosts) or belongs to a native adapter.
        """
        for prefix, provider in self._prefix_index:
            if model.startswith(prefix):
                return provider
        return None

    def route(self, model: str) -> tuple[Provider, str] | None:
        """Resolve a request's ``model`` field to (provider, upstream model name).

        ``name/model`` routes explicitly to catalogue provider ``name`` and strips
        the prefix; anything else is tried as a bare name by prefix and sent on
        unchanged. ``None`` when neither applies.
        """
        head, sep, rest = model.partition("/")
        if sep and rest:
            provider = self._by_name.get(head)
            if provider is not None:
                return provider, rest
        provider = self.provider_for_model(model)
        if provider is not None:
            return provider, model
        return None


def parse_catalogue(data: Mapping[str, Any]) -> Catalogue:
    """Validate an already-parsed catalogue document (the TOML as a dict)."""
    try:
        parsed = _CatalogueFile.model_validate(data)
    except ValidationError as exc:
        raise CatalogueError(_describe(exc, data)) from exc
    return Catalogue(parsed.provider)


def _describe(exc: ValidationError, data: Mapping[str, Any]) -> str:
    providers = data.get("provider")
    lines = ["invalid provider catalogue:"]
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(part) for part in loc)
        index = loc[1] if len(loc) >= 2 and loc[0] == "provider" else None
        if isinstance(index, int) and isinstance(providers, list) and index < len(providers):
            entry = providers[index]
            if isinstance(entry, Mapping) and "name" in entry:
                rest = ".".join(str(x) for x in loc[2:])
                where = f"provider {entry['name']!r}" + (f": {rest}" if rest else "")
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_catalogue_file(path: Path) -> Catalogue:
    """Read and validate a catalogue file (uncached)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: {exc}") from exc
    return parse_catalogue(data)


@lru_cache(maxsize=1)
def load_catalogue() -> Catalogue:
    """The catalogue shipped with the proxy, loaded once per process."""
    return load_catalogue_file(DEFAULT_CATALOGUE_PATH)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A provider as configured by one environment.

    ``api_key`` is kept out of ``repr`` so the object can be logged.
    """

    provider: Provider
    configured: bool
    base_url: str | None
    base_url_source: Literal["env", "template", "default"] | None
    reason: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.provider.name

    def auth_headers(self) -> dict[str, str]:
        """Headers that carry this provider's key (empty when there is none)."""
        if self.api_key is None or self.provider.auth == "none":
            return {}
        if self.provider.auth == "header":
            assert self.provider.auth_header is not None  # checked at load time
            return {self.provider.auth_header: self.api_key}
        return {"Authorization": f"Bearer {self.api_key}"}

    def endpoint(self, path: str = _CHAT_SUFFIX) -> str:
        """Full upstream URL for ``path`` (with the provider's fixed query)."""
        if self.base_url is None:
            raise ValueError(f"provider {self.provider.name!r} is not configured: {self.reason}")
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        url = self.base_url + path
        query = self.provider.quirks.query_params
        return f"{url}?{urlencode(query)}" if query else url


def _env_value(env: Mapping[str, str], name: str | None) -> str | None:
    if name is None:
        return None
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _url_var_value(raw: str) -> str:
    """Normalise a URL variable: allow a pasted ``https://host/`` for host variables."""
    value = raw.strip()
    if value.lower().startswith("https://"):
        value = value[len("https://") :]
    return value.rstrip("/")


def resolve_provider(provider: Provider, env: Mapping[str, str]) -> ProviderConfig:
    """Work out whether ``provider`` is usable under ``env`` and at which base URL.

    ``env`` is the server's environment (or config mapped to the same names),
    never data from a request. A provider is configured when its key is set,
    or, for a local server, when its base URL variable is set. The base URL is
    the ``base_url_env`` override if set, else the catalogue template filled
    from ``url_vars``, else the catalogue default.
    """
    key = _env_value(env, provider.key_env)
    override = _env_value(env, provider.base_url_env)

    def not_configured(reason: str) -> ProviderConfig:
        return ProviderConfig(provider, False, None, None, reason, None)

    if provider.local:
        if key is None and override is None:
            wanted = provider.base_url_env
            if provider.key_env:
                wanted += f" (or {provider.key_env})"
            return not_configured(f"local server not enabled: set {wanted}")
    elif key is None:
        return not_configured(f"{provider.key_env} is not set")

    source: Literal["env", "template", "default"]
    if override is not None:
        url = override.rstrip("/")
        try:
            _check_base_url(url, provider.local)
        except ValueError as exc:
            return not_configured(f"{provider.base_url_env} is invalid: {exc}")
        source = "env"
    elif provider.url_vars:
        values: dict[str, str] = {}
        missing: list[str] = []
        for var in provider.url_vars:
            raw = _env_value(env, var)
            if raw is None:
                missing.append(var)
                continue
            value = _url_var_value(raw)
            if not _URL_VAR_VALUE_RE.fullmatch(value):
                return not_configured(
                    f"{var} is invalid: expected a host name or id (letters, digits, '.', "
                    f"'-', '_'), got {raw!r}"
                )
            values[var] = value
        if missing:
            return not_configured(
                f"missing {', '.join(missing)} to build the base URL {provider.base_url} "
                f"(or set {provider.base_url_env})"
            )
        url = _fill_template(provider.base_url, values)
        try:
            _check_base_url(url, provider.local)
        except ValueError as exc:  # pragma: no cover - values are constrained above
            return not_configured(str(exc))
        source = "template"
    else:
        url = provider.base_url
        source = "default"

    return ProviderConfig(provider, True, url, source, "", key)


def provider_statuses(
    env: Mapping[str, str], catalogue: Catalogue | None = None
) -> tuple[ProviderConfig, ...]:
    """The resolution of every catalogue provider under ``env``, in catalogue order."""
    cat = catalogue if catalogue is not None else load_catalogue()
    return tuple(resolve_provider(p, env) for p in cat.providers)


def configured_providers(
    env: Mapping[str, str], catalogue: Catalogue | None = None
) -> tuple[ProviderConfig, ...]:
    """Only the providers that are usable under ``env``."""
    return tuple(s for s in provider_statuses(env, catalogue) if s.configured)


def env_table_markdown(catalogue: Catalogue | None = None) -> str:
    """The provider / environment-variable table for ``docs/providers.md``."""
    cat = catalogue if catalogue is not None else load_catalogue()

    def code(value: str) -> str:
        return f"`{value}`"

    rows = [
        "| name | provider | key variable | base URL variable | URL variables | "
        "default base URL | bare-name prefixes | auth | verified |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for p in cat.providers:
        auth = f"header `{p.auth_header}`" if p.auth == "header" else p.auth
        if p.local:
            auth += ", local"
        key = code(p.key_env) if p.key_env else "—"
        if p.key_env and p.local:
            key += " (optional)"
        cells = [
            code(p.name),
            f"[{p.display_name}]({p.docs})",
            key,
            code(p.base_url_env),
            ", ".join(code(v) for v in p.url_vars) or "—",
            code(p.base_url),
            ", ".join(code(x) for x in p.model_prefixes) or "—",
            auth,
            "yes" if p.verified else "**no**",
        ]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(env_table_markdown(), end="")
