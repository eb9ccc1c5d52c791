"""Which provider serves a ``model`` string, and under which upstream name.

Rules, in order (all data, no per-provider code):

0. An alias from the routing file (:mod:`services.proxy.routes`) → its targets,
   weighted tier first, then fallbacks (:meth:`Router.plan`; one per call).
1. ``<provider>/<model>`` where ``<provider>`` is configured (native adapter or
   catalogue entry) → that provider, upstream name ``<model>`` (which may itself
   contain slashes: ``openai/meta-llama/Llama-3-8B``, ``openrouter/anthropic/x``).
2. A bare name matching one of a native provider's well-known patterns
   (:data:`DEFAULT_BARE_RULES`, e.g. ``gpt-*`` → ``openai``), else a catalogue
   ``model_prefixes`` entry (longest wins) → that provider, if configured, with
   the name unchanged.
3. Anything else → 404 ``model_not_found``; when the name points at a provider we
   know but that has no configuration, the message says which variable to set.

The model string only ever *selects* a configured provider: it never becomes part
of a URL or a header here (CVE-2024-6587 came from letting a request do that).

``GET /v1/models`` lists every model of every configured provider under an id
that rule 1 or 2 routes back to the same place, then the aliases.
"""

from __future__ import annotations

import fnmatch
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from services.proxy.catalogue import Catalogue, load_catalogue
from services.proxy.catalogue import Provider as CatalogueEntry
from services.proxy.providers import NATIVE_ADAPTERS
from services.proxy.providers.base import ModelCard, Provider
from services.proxy.routes import Alias, RoutesError
from shared.errors import NotFound


@dataclass(frozen=True, slots=True)
class BareRule:
    """Bare model names (``fnmatch`` globs) that belong to one provider family."""

    provider: str
    patterns: tuple[str, ...]


OPENAI_BARE_RULES: Final = (
    BareRule(
        "openai",
        (
            "gpt-*",
            "chatgpt-*",
            "o1",
            "o1-*",
            "o3",
            "o3-*",
            "o4-*",
            "codex-*",
            "computer-use-*",
            "text-embedding-*",
            "omni-moderation-*",
            "ft:gpt-*",
            "ft:o*",
        ),
    ),
)

DEFAULT_BARE_RULES: Final = OPENAI_BARE_RULES + tuple(
    BareRule(adapter.NAME, adapter.BARE_PATTERNS)
    for adapter in NATIVE_ADAPTERS
    if adapter.BARE_PATTERNS
)

# How to enable a provider we know of but that is not configured (for 404 messages).
SETUP_HINTS: Final[Mapping[str, str]] = {
    "openai": "set OPENAI_API_KEY (and OPENAI_BASE_URL for a non-OpenAI endpoint)",
    **{adapter.NAME: adapter.SETUP_HINT for adapter in NATIVE_ADAPTERS},
}

_CACHE_LIMIT = 4096


def catalogue_hint(entry: CatalogueEntry) -> str:
    """What to set to enable a catalogue provider (static: names, never values)."""
    if entry.local:
        return f"set {entry.base_url_env} to the server's /v1 URL"
    names = [entry.key_env or ""]
    if entry.url_vars:
        names.append(" and ".join(entry.url_vars) + f" (or {entry.base_url_env})")
    return "set " + " and ".join(names)


@dataclass(frozen=True, slots=True)
class Route:
    provider: Provider
    upstream_model: str


def model_not_found(model: str, message: str) -> NotFound:
    return NotFound(
        message,
        param="model",
        code="model_not_found",
        error_type="invalid_request_error",
    )


class Router:
    def __init__(
        self,
        providers: Iterable[Provider],
        rules: Sequence[BareRule] = DEFAULT_BARE_RULES,
        hints: Mapping[str, str] = SETUP_HINTS,
        *,
        catalogue: Catalogue | None = None,
        aliases: Mapping[str, Alias] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._providers = {p.name: p for p in providers}
        self._rules = [
            (rule.provider, re.compile("|".join(fnmatch.translate(p) for p in rule.patterns)))
            for rule in rules
        ]
        self._catalogue = catalogue if catalogue is not None else load_catalogue()
        self._hints = {
            **{entry.name: catalogue_hint(entry) for entry in self._catalogue.providers},
            **hints,
        }
        self._aliases = dict(aliases or {})
        self._rng = rng if rng is not None else random.Random()
        self._check_aliases()
        self._created = int(time.time())
        # Model strings repeat endlessly; resolving each once keeps routing O(1).
        self._cache: dict[str, Route] = {}
        self._models_json = self._build_models_json()

    @property
    def providers(self) -> Sequence[Provider]:
        return tuple(self._providers.values())

    def resolve(self, model: str) -> Route:
        route = self._cache.get(model)
        if route is None:
            route = self._resolve(model)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[model] = route
        return route

    def plan(self, model: str) -> tuple[Route, ...]:
        """Every target to try for one call, in order: an alias's tier shuffled by
        weight then its fallbacks, or the single route of any other name."""
        alias = self._aliases.get(model)
        if alias is None:
            return (self.resolve(model),)
        return tuple(Route(self._providers[t.provider], t.model) for t in alias.order(self._rng))

    def _check_aliases(self) -> None:
        """Every alias target must name a configured provider: a typo or a missing key
        fails the start, not a request hours later."""
        problems: list[str] = []
        for alias in self._aliases.values():
            for target in alias.tier + alias.fallbacks:
                name = target.provider
                if name in self._providers:
                    continue
                if name in self._hints:
                    problems.append(
                        f"alias {alias.name!r}: provider {name!r} of {target.target!r} is "
                        f"not configured ({self._hints[name]})"
                    )
                else:
                    problems.append(
                        f"alias {alias.name!r}: unknown provider {name!r} in {target.target!r}"
                    )
        if problems:
            raise RoutesError("invalid routes:\n  " + "\n  ".join(problems))

    def _bare_family(self, model: str) -> str | None:
        for name, pattern in self._rules:
            if pattern.match(model):
                return name
        entry = self._catalogue.provider_for_model(model)
        return entry.name if entry is not None else None

    def _resolve(self, model: str) -> Route:
        prefix, slash, rest = model.partition("/")
        if slash:
            provider = self._providers.get(prefix)
            if provider is not None and rest:
                return Route(provider, rest)
            if provider is None and prefix in self._hints:
                raise self._unconfigured(model, prefix)
        family = self._bare_family(model)
        if family is not None:
            provider = self._providers.get(family)
            if provider is not None:
                return Route(provider, model)
            if family in self._hints:
                raise self._unconfigured(model, family)
        configured = ", ".join(f"'{name}/…'" for name in self._providers) or "none"
        raise model_not_found(
            model,
            f"The model '{model}' does not exist or cannot be routed by this server. "
            f"Use 'mock/<name>' for the built-in mock model, or '<provider>/<model>' "
            f"for a configured provider (configured: {configured}). "
            "GET /v1/models lists the models available.",
        )

    def _unconfigured(self, model: str, provider: str) -> NotFound:
        return model_not_found(
            model,
            f"The model '{model}' belongs to provider '{provider}', which is not "
            f"configured on this server ({self._hints[provider]}).",
        )

    def _card_id(self, provider: Provider, model: str) -> str:
        if self._bare_family(model) == provider.name:
            return model
        return f"{provider.name}/{model}"

    def model_cards(self) -> list[ModelCard]:
        cards = [
            ModelCard(id=self._card_id(p, m), created=self._created, owned_by=p.name)
            for p in self._providers.values()
            for m in p.models()
        ]
        cards += [
            ModelCard(id=name, created=self._created, owned_by="jetty-alias")
            for name in self._aliases
        ]
        return cards

    def _build_models_json(self) -> bytes:
        data = [card.model_dump(mode="json") for card in self.model_cards()]
        return orjson.dumps({"object": "list", "data": data})

    def models_json(self) -> bytes:
        """The OpenAI ``GET /v1/models`` document (built once: configuration is static)."""
        return self._models_json
