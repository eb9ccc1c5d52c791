"""API keys: what a key may do (scopes, models, limits, budget) and what it has
used, as the gateway, the proxy, the recorder and ``jetty tokens`` share them.

A key is the :class:`~shared.tokens.TokenRecord` stored under the SHA-256 of its
secret in the KV bucket ``jetty_tokens``; the fields here are the policy part of
it. What a key has *used* (spend, tokens this minute, last use) lives beside it in
the KV bucket ``jetty_key_usage`` (one entry per key id, :class:`KeyUsage`), added
by the proxy from the exact cost of each call it records, and mirrored in memory by
every gateway. Every change of a key is also an event (``key.created``,
``key.updated``, ``key.rotated``, ``key.revoked``) carrying the whole public view of
the key, projected into the ``api_keys`` table.
"""

from __future__ import annotations

import fnmatch
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Scope = Literal["api", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("api", "read", "admin")
BudgetPeriod = Literal["total", "month"]

# A run-scoped key (a runbook's agent) and every key created before scopes existed
# reach the model and trajectory endpoints: the "api" scope.
DEFAULT_SCOPES: tuple[Scope, ...] = ("api",)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KeyLimits(_Frozen):
    """Per-minute rate limits; ``None``: unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class KeyBudget(_Frozen):
    """A spend limit in US dollars, over the key's life or per calendar month (UTC)."""

    usd: Decimal = Field(gt=0, max_digits=20, decimal_places=10)
    period: BudgetPeriod = "total"


class KeyPolicy(BaseModel):
    """What a key may do; shared by the stored record and the public view."""

    scopes: tuple[Scope, ...] = DEFAULT_SCOPES
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] | None = None
    limits: KeyLimits = KeyLimits()
    budget: KeyBudget | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: bumped by every change; the projection keeps the highest
    version: int = 1

    def policy(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in KeyPolicy.model_fields}


class KeyInfo(KeyPolicy):
    """The public view of a key (never its secret or hash): the admin API's key
    object and the payload of every ``key.*`` event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    collection: str
    name: str = ""
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(_Frozen):
    key: KeyInfo


class KeyUpdated(_Frozen):
    key: KeyInfo


class KeyRotated(_Frozen):
    key: KeyInfo
    #: until when the secret it replaced keeps working
    previous_valid_until: datetime


class KeyRevoked(_Frozen):
    key: KeyInfo


KeyEvent = KeyCreated | KeyUpdated | KeyRotated | KeyRevoked


class RunKey(_Frozen):
    """The key that started a runbook, as the run's token needs it: its id (the
    agent's inner calls add their cost and tokens to this key's usage) and the
    limits those calls count toward, as they were when the run was accepted. The
    key's request rate is not among them: the runbook request was that request."""

    id: str
    budget: KeyBudget | None = None
    tokens_per_minute: int | None = Field(default=None, ge=1)

    @classmethod
    def of(cls, record: KeyPolicy, key_id: str) -> RunKey:
        return cls(
            id=key_id, budget=record.budget, tokens_per_minute=record.limits.tokens_per_minute
        )


class KeyUsage(BaseModel):
    """What one key has used; a compare-and-set entry in ``jetty_key_usage``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    spent_usd: Decimal = Decimal(0)
    #: the calendar month (``YYYY-MM``, UTC) ``month_usd`` counts
    month: str = ""
    month_usd: Decimal = Decimal(0)
    #: the minute (epoch seconds // 60) ``minute_tokens`` counts
    minute: int = 0
    minute_tokens: int = 0
    total_tokens: int = 0
    calls: int = 0
    #: calls whose price was unknown (they add no spend)
    unpriced_calls: int = 0
    last_used_at: datetime | None = None

    def spent_in(self, period: BudgetPeriod, now: datetime) -> Decimal:
        if period == "total":
            return self.spent_usd
        return self.month_usd if self.month == month_of(now) else Decimal(0)

    def tokens_in_minute(self, minute: int) -> int:
        return self.minute_tokens if self.minute == minute else 0

    def add(self, *, tokens: int, cost_usd: str | None, at: datetime, minute: int) -> KeyUsage:
        cost = Decimal(cost_usd) if cost_usd is not None else Decimal(0)
        month = month_of(at)
        return KeyUsage(
            spent_usd=self.spent_usd + cost,
            month=month,
            month_usd=(self.month_usd if self.month == month else Decimal(0)) + cost,
            minute=minute,
            minute_tokens=(self.minute_tokens if self.minute == minute else 0) + tokens,
            total_tokens=self.total_tokens + tokens,
            calls=self.calls + 1,
            unpriced_calls=self.unpriced_calls + (1 if cost_usd is None else 0),
            last_used_at=at,
        )


def month_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def new_key_id() -> str:
    return "key_" + secrets.token_hex(10)


def legacy_key_id(token_hash: str) -> str:
    """The id of a key stored before keys had ids: derived from its hash, stable."""
    return "key_" + token_hash[:20]


def model_allowed(patterns: tuple[str, ...] | None, model: str) -> bool:
    """Whether ``model`` matches one of the glob patterns (``None``: every model)."""
    if patterns is None:
        return True
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns)
