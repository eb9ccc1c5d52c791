"""The pricing table and the cost of a call, in exact decimal US dollars.

Prices live in ``data/pricing.toml`` (USD per 1,000,000 tokens, one
``[[model]]`` table per model, each with its ``source`` and
``effective_date``). This module loads and validates that file, finds the price
of a ``(provider, model)`` pair, and turns a call's token counts into a cost.

Rules (see ``docs/pricing.md``):

* An unknown price is ``None`` (null), never 0: an unknown model, a prompt
  size the table has no price for, or tokens of a kind whose price is absent
  (say cached tokens on a model without a cached-input price) all give ``None``.
* Token counts follow OpenAI semantics: ``prompt_tokens`` includes cached and
  cache-write tokens, ``completion_tokens`` includes reasoning tokens. Each
  part is billed once, at its own price.
* Arithmetic is exact (:class:`~decimal.Decimal`); a call's cost is rounded
  once, half-to-even, to :data:`COST_QUANTUM` (1e-10 USD).
* A trajectory's cost is the sum of its steps' costs, and is ``None`` when any
  step's cost is ``None`` (:func:`sum_costs`).

The shipped table is loaded and checked when this module is imported, so a
broken data file stops the proxy at start-up rather than mispricing calls.
Nothing here does network I/O.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "COST_QUANTUM",
    "DEFAULT_PRICING_PATH",
    "TOKENS_PER_PRICE_UNIT",
    "ModelPrice",
    "PriceTier",
    "PricingError",
    "PricingTable",
    "UsageCounts",
    "cost_for",
    "cost_text",
    "cost_usd",
    "load_pricing",
    "parse_pricing",
    "price_for",
    "sum_costs",
    "sum_known_costs",
    "usage_counts",
]

DEFAULT_PRICING_PATH = Path(__file__).resolve().parent / "data" / "pricing.toml"

#: Prices in the table are per this many tokens.
TOKENS_PER_PRICE_UNIT = 1_000_000

#: A call's cost is rounded (half-to-even) to this many dollars: 1e-10 USD.
#: The smallest price in the table is $0.005/1M tokens = 5e-9 USD per token,
#: so one token is always visible; sub-1e-10 remainders are rounded away once
#: per call and never accumulate across steps.
COST_QUANTUM = Decimal("1E-10")

# Enough digits that no product or sum below is ever rounded before the final
# quantize: prices have at most ~12 significant digits, token counts < 1e12.
_EXACT_PRECISION = 60

_PROVIDER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_MODEL_ID_RE = re.compile(r"^\S+$")


class PricingError(ValueError):
    """The pricing table is malformed or inconsistent."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _https_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{what} must be an https URL, got {value!r}")
    return value


class _Rates(_Frozen):
    """One set of prices, USD per 1M tokens. ``None`` means unknown."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    reasoning: Decimal | None = None

    @field_validator(
        "input", "output", "cached_input", "cache_write", "cache_write_1h", "reasoning"
    )
    @classmethod
    def _check_price(cls, v: Decimal | None) -> Decimal | None:
        if v is not None and (not v.is_finite() or v < 0):
            raise ValueError(f"a price must be a finite, non-negative number, got {v}")
        return v


class PriceTier(_Rates):
    """Prices that replace the base prices for the whole call when the prompt
    (all prompt tokens, cached ones included) is larger than ``above_prompt_tokens``."""

    above_prompt_tokens: int = Field(gt=0)


class ModelPrice(_Rates):
    """The price of one model at one provider, as listed in the table."""

    id: str
    provider: str
    aliases: tuple[str, ...] = ()
    #: Prices are known only for prompts up to this many tokens.
    max_prompt_tokens: int | None = Field(default=None, gt=0)
    tiers: tuple[PriceTier, ...] = ()
    effective_date: date
    source: str
    see_also: tuple[str, ...] = ()
    notes: str = ""

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not _MODEL_ID_RE.fullmatch(v):
            raise ValueError(f"model id {v!r} must be non-empty and without whitespace")
        return v

    @field_validator("aliases")
    @classmethod
    def _check_aliases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for alias in v:
            if not _MODEL_ID_RE.fullmatch(alias):
                raise ValueError(f"alias {alias!r} must be non-empty and without whitespace")
        if len(set(v)) != len(v):
            raise ValueError("aliases must be unique")
        return v

    @field_validator("provider")
    @classmethod
    def _check_provider(cls, v: str) -> str:
        if not _PROVIDER_RE.fullmatch(v):
            raise ValueError(f"provider {v!r} must be lowercase letters, digits and '-'")
        return v

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: str) -> str:
        return _https_url(v, "source")

    @field_validator("see_also")
    @classmethod
    def _check_see_also(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_https_url(url, "see_also") for url in v)

    @model_validator(mode="after")
    def _check_consistency(self) -> ModelPrice:
        if self.id in self.aliases:
            raise ValueError(f"{self.id!r} lists itself as an alias")
        thresholds = [tier.above_prompt_tokens for tier in self.tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError("tiers must have strictly increasing above_prompt_tokens")
        if self.max_prompt_tokens is not None and any(
            t >= self.max_prompt_tokens for t in thresholds
        ):
            raise ValueError("every tier must start below max_prompt_tokens")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """The id followed by its aliases."""
        return (self.id, *self.aliases)

    def rates_for(self, prompt_tokens: int) -> _Rates | None:
        """The prices that apply to a call with this many prompt tokens, or
        ``None`` when the table does not know them (above ``max_prompt_tokens``)."""
        if self.max_prompt_tokens is not None and prompt_tokens > self.max_prompt_tokens:
            return None
        rates: _Rates = self
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                rates = tier
        return rates


class PricingTable(_Frozen):
    """The whole table, indexed by ``(provider, id-or-alias)``."""

    schema_version: Literal[1]
    table_date: date
    currency: Literal["USD"]
    unit: Literal["per_1m_tokens"]
    provider_aliases: dict[str, str] = Field(default_factory=dict)
    models: tuple[ModelPrice, ...] = Field(alias="model")

    _index: dict[tuple[str, str], ModelPrice] = PrivateAttr(default_factory=dict)

    @field_validator("provider_aliases")
    @classmethod
    def _check_provider_aliases(cls, v: dict[str, str]) -> dict[str, str]:
        for alias, target in v.items():
            for name in (alias, target):
                if not _PROVIDER_RE.fullmatch(name):
                    raise ValueError(f"provider name {name!r} is not valid")
            if alias == target or target in v:
                raise ValueError(f"provider alias {alias!r} -> {target!r} must point at a provider")
        return v

    @model_validator(mode="after")
    def _build_index(self) -> PricingTable:
        index: dict[tuple[str, str], ModelPrice] = {}
        for entry in self.models:
            if entry.provider in self.provider_aliases:
                raise ValueError(
                    f"{entry.id!r}: provider {entry.provider!r} is an alias; "
                    f"use {self.provider_aliases[entry.provider]!r}"
                )
            for name in entry.names:
                key = (entry.provider, name)
                other = index.get(key)
                if other is not None:
                    raise ValueError(
                        f"{entry.provider}/{name} is listed twice "
                        f"(entries {other.id!r} and {entry.id!r})"
                    )
                index[key] = entry
        self._index = index
        return self

    def canonical_provider(self, provider: str) -> str:
        name = provider.strip().lower()
        return self.provider_aliases.get(name, name)

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """The price for ``model`` at ``provider``, or ``None``.

        ``model`` matches an entry's id or one of its aliases exactly, or the
        same in routing form ``provider/model``. With an empty ``provider`` the
        routing form names the provider. A model is never priced at another
        provider's rates: resellers and clouds bill differently.
        """
        prov = self.canonical_provider(provider)
        head, sep, rest = model.partition("/")
        if not prov:
            if not sep:
                return None
            prov, model = self.canonical_provider(head), rest
        hit = self._index.get((prov, model))
        if hit is None and sep and rest and self.canonical_provider(head) == prov:
            hit = self._index.get((prov, rest))
        return hit

    def as_mapping(self) -> Mapping[tuple[str, str], ModelPrice]:
        """Every ``(provider, id-or-alias)`` the table prices."""
        return dict(self._index)


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """A call's token counts, OpenAI semantics.

    ``prompt_tokens`` includes ``cached_tokens`` and ``cache_write_tokens``;
    ``completion_tokens`` includes ``reasoning_tokens``; ``cache_write_1h_tokens``
    is the part of ``cache_write_tokens`` written with a 1-hour TTL (Anthropic).
    Inconsistent counts raise :class:`ValueError`.
    """

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0

    def __post_init__(self) -> None:
        for name in (
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cache_write_1h_tokens",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if self.cached_tokens + self.cache_write_tokens > self.prompt_tokens:
            raise ValueError("cached_tokens + cache_write_tokens exceed prompt_tokens")
        if self.reasoning_tokens > self.completion_tokens:
            raise ValueError("reasoning_tokens exceed completion_tokens")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError("cache_write_1h_tokens exceed cache_write_tokens")


def cost_usd(price: ModelPrice | None, usage: UsageCounts) -> Decimal | None:
    """The cost of one call in USD, rounded to :data:`COST_QUANTUM`, or ``None``
    when the price (or the price of any kind of token the call used) is unknown.

    uncached input = prompt - cached - cache_write, each part at its own price;
    reasoning at the ``reasoning`` price if set, else at the output price; the
    tier is chosen by ``prompt_tokens``.
    """
    if price is None:
        return None
    rates = price.rates_for(usage.prompt_tokens)
    if rates is None:
        return None
    reasoning_rate = rates.reasoning if rates.reasoning is not None else rates.output
    parts: tuple[tuple[int, Decimal | None], ...] = (
        (usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, rates.input),
        (usage.cached_tokens, rates.cached_input),
        (usage.cache_write_tokens - usage.cache_write_1h_tokens, rates.cache_write),
        (usage.cache_write_1h_tokens, rates.cache_write_1h),
        (usage.completion_tokens - usage.reasoning_tokens, rates.output),
        (usage.reasoning_tokens, reasoning_rate),
    )
    with localcontext() as ctx:
        ctx.prec = _EXACT_PRECISION
        total = Decimal(0)
        for tokens, rate in parts:
            if tokens == 0:
                continue
            if rate is None:
                return None
            total += rate * tokens
        return (total / TOKENS_PER_PRICE_UNIT).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def sum_costs(costs: Iterable[Decimal | None]) -> Decimal | None:
    """A trajectory's cost: the exact sum of its steps' costs, or ``None`` if
    any step's cost is unknown (a partial sum would silently under-report).
    No steps cost exactly 0."""
    with localcontext() as ctx:
        ctx.prec = _EXACT_PRECISION
        total = Decimal(0)
        for cost in costs:
            if cost is None:
                return None
            total += cost
        return total


def sum_known_costs(costs: Iterable[Decimal | None]) -> tuple[Decimal, int]:
    """The sum of the known costs and how many were unknown, for displays such
    as "at least $X, N steps unpriced". Not a trajectory's cost: see :func:`sum_costs`."""
    with localcontext() as ctx:
        ctx.prec = _EXACT_PRECISION
        total = Decimal(0)
        unknown = 0
        for cost in costs:
            if cost is None:
                unknown += 1
            else:
                total += cost
        return total, unknown


# Keys of a completion event's ``usage.details`` (``prompt.<key>`` from the
# upstream's ``prompt_tokens_details``, ``completion.<key>`` from
# ``completion_tokens_details``) that the provider adapters fill for pricing.
DETAIL_CACHED = "prompt.cached_tokens"
DETAIL_CACHE_WRITE = "prompt.cache_creation_tokens"
DETAIL_CACHE_WRITE_1H = "prompt.cache_creation_1h_tokens"
DETAIL_REASONING = "completion.reasoning_tokens"
DETAIL_BILLED_PROMPT = "prompt.billed_tokens"
DETAIL_BILLED_COMPLETION = "completion.billed_tokens"


def usage_counts(
    prompt_tokens: int, completion_tokens: int, details: Mapping[str, int]
) -> UsageCounts:
    """:class:`UsageCounts` from a recorded usage (OpenAI totals plus the flattened
    ``details`` of :class:`shared.events.completion.Usage`).

    Where the upstream reports billed units (Cohere's ``billed_units``, kept as
    ``*.billed_tokens``) those are what it charges, and no breakdown applies to
    them. Raises :class:`ValueError` on inconsistent counts.
    """
    billed_prompt = details.get(DETAIL_BILLED_PROMPT)
    billed_completion = details.get(DETAIL_BILLED_COMPLETION)
    if billed_prompt is not None or billed_completion is not None:
        return UsageCounts(
            prompt_tokens=prompt_tokens if billed_prompt is None else billed_prompt,
            completion_tokens=completion_tokens if billed_completion is None else billed_completion,
        )
    return UsageCounts(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=details.get(DETAIL_CACHED, 0),
        cache_write_tokens=details.get(DETAIL_CACHE_WRITE, 0),
        reasoning_tokens=details.get(DETAIL_REASONING, 0),
        cache_write_1h_tokens=details.get(DETAIL_CACHE_WRITE_1H, 0),
    )


def cost_text(cost: Decimal | None) -> str | None:
    """A cost as the events carry it: plain decimal notation, never exponent
    notation (``str(Decimal("1.5E-9"))`` would give ``"1.5E-9"``)."""
    return None if cost is None else format(cost, "f")


def parse_pricing(text: str, *, origin: str = "<string>") -> PricingTable:
    """Parse and validate pricing TOML. Numbers are read as exact decimals."""
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        return PricingTable.model_validate(raw)
    except ValidationError as exc:
        raise PricingError(f"{origin}: invalid pricing table:\n{exc}") from exc


@lru_cache(maxsize=8)
def _load_cached(path: Path) -> PricingTable:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(f"cannot read pricing table {path}: {exc}") from exc
    return parse_pricing(text, origin=str(path))


def load_pricing(path: Path | str | None = None) -> PricingTable:
    """Load (once per path, then cached) and validate a pricing table; the
    shipped ``data/pricing.toml`` by default."""
    return _load_cached(Path(path).resolve() if path is not None else DEFAULT_PRICING_PATH)


@lru_cache(maxsize=1024)
def price_for(provider: str, model: str) -> ModelPrice | None:
    """The shipped table's price for ``model`` at ``provider`` (exact id, alias,
    or ``provider/model``), or ``None`` when the table does not list it. Cached:
    the table never changes in a running process and every call asks."""
    return load_pricing().lookup(provider, model)


def cost_for(provider: str, model: str, usage: UsageCounts) -> Decimal | None:
    """``cost_usd(price_for(provider, model), usage)``."""
    return cost_usd(price_for(provider, model), usage)


# Check the shipped table on import: a broken data file must stop start-up.
load_pricing()
