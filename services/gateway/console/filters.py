"""The trajectory list's filters: parsed from the URL (where they live, so a view
can be shared) into the read layer's keyword arguments, and back into a URL."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode

from multidict import MultiMapping

from shared.db.trajectories import STATUSES
from shared.ids import is_trajectory_id

MODES = ("passthrough", "runbook")
AGENTS = ("claude-code", "codex", "gemini-cli", "opencode")
PERIODS = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7),
           "30d": timedelta(days=30)}  # fmt: skip


class BadFilter(ValueError):
    pass


@dataclass(frozen=True)
class ListFilters:
    task: str = ""
    status: str = ""
    mode: str = ""
    model: str = ""
    agent: str = ""
    since: str = ""
    until: str = ""
    min_cost: str = ""
    label: str = ""
    q: str = ""

    @classmethod
    def parse(cls, query: MultiMapping[str]) -> ListFilters:
        values = {f.name: str(query.get(f.name, "")).strip()[:200] for f in fields(cls)}
        return cls(**values)

    def any(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def url(self, **override: str) -> str:
        pairs = {f.name: getattr(self, f.name) for f in fields(self)} | override
        encoded = urlencode({k: v for k, v in pairs.items() if v})
        return "/ui/trajectories" + (f"?{encoded}" if encoded else "")

    def exact_id(self) -> str | None:
        return self.q if is_trajectory_id(self.q) else None

    def query_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``shared.db.trajectories.list_trajectories``;
        :class:`BadFilter` names the first value that does not parse."""
        out: dict[str, Any] = {}
        for name in ("task", "model"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.status:
            if self.status not in STATUSES:
                raise BadFilter(f"status must be one of {', '.join(STATUSES)}")
            out["status"] = self.status
        if self.mode:
            if self.mode not in MODES:
                raise BadFilter(f"mode must be one of {', '.join(MODES)}")
            out["mode"] = self.mode
        if self.agent:
            out["agent"] = self.agent
        if self.since:
            out["since"] = _moment(self.since, "since")
        if self.until:
            out["until"] = _moment(self.until, "until")
        if self.min_cost:
            try:
                cost = Decimal(self.min_cost.lstrip("$"))
            except InvalidOperation:
                raise BadFilter("minimum cost must be a number of dollars") from None
            if not cost.is_finite() or cost < 0:
                raise BadFilter("minimum cost must be a number of dollars")
            out["min_cost"] = cost
        if self.label:
            key, sep, value = self.label.partition(":")
            if not sep or not key:
                raise BadFilter("label must be key:value")
            out["labels"] = [(key.strip(), value.strip())]
        if self.q:
            if self.exact_id():
                out["ids"] = [self.q]
            else:
                out["id_prefix"] = self.q
        return out


def _moment(raw: str, name: str) -> datetime:
    """An ISO time (a ``datetime-local`` input's value is one, read as UTC), or a
    period back from now (``1h``, ``24h``, ``7d``, ``30d``)."""
    if raw in PERIODS:
        return datetime.now(UTC) - PERIODS[raw]
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(f"{name} must be a time like 2026-01-31T12:00 (UTC)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
