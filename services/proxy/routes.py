"""Aliases from the routing file (``JETTY_ROUTES_FILE``, TOML; format in docs/routing.md).

An alias is a model name a client may use that stands for an ordered list of
targets, each an explicit ``provider/model``::

    [aliases]
    fast = ["groq/llama-3.3-70b-versatile", "openai/gpt-4o-mini"]
    balanced = [
      { target = "openai/gpt-4o", weight = 3 },
      { target = "azure/gpt-4o", weight = 1 },
      "anthropic/claude-sonnet-4-5",
    ]

The leading targets that carry a ``weight`` form the first tier: each call tries
them in a weighted random order (load balancing); the targets after them are
fallbacks, tried in the order written. Without weights the list is a plain
fallback chain.

What must stay true: every target names a provider explicitly and is checked
against the configured providers when the proxy starts (:class:`RoutesError`),
never at request time; an alias name has no ``/``, so ``provider/model`` always
means exactly that provider.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["Alias", "AliasTarget", "RoutesError", "load_routes", "parse_routes"]


class RoutesError(ValueError):
    """The routing file is malformed, or names a provider that is not configured."""


class AliasTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``provider/model``
    target: str
    weight: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None

    @field_validator("target")
    @classmethod
    def _explicit(cls, value: str) -> str:
        provider, slash, model = value.partition("/")
        if not slash or not provider or not model:
            raise ValueError(f"target {value!r} must be '<provider>/<model>'")
        return value

    @property
    def provider(self) -> str:
        return self.target.partition("/")[0]

    @property
    def model(self) -> str:
        return self.target.partition("/")[2]


class _RoutesFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    aliases: dict[str, list[AliasTarget | str]] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Alias:
    name: str
    #: the weighted first tier (may be a single unweighted target)
    tier: tuple[AliasTarget, ...]
    #: tried in order after every target of the tier
    fallbacks: tuple[AliasTarget, ...]

    @classmethod
    def of(cls, name: str, targets: Sequence[AliasTarget]) -> Alias:
        weighted = 0
        while weighted < len(targets) and targets[weighted].weight is not None:
            weighted += 1
        first = max(1, weighted)
        for late in targets[first:]:
            if late.weight is not None:
                raise RoutesError(
                    f"alias {name!r}: target {late.target!r} has a weight but follows an "
                    "unweighted fallback; weighted targets come first"
                )
        return cls(name, tuple(targets[:first]), tuple(targets[first:]))

    def order(self, rng: random.Random) -> tuple[AliasTarget, ...]:
        """This call's order: the tier shuffled by weight, then the fallbacks."""
        if len(self.tier) == 1:
            return self.tier + self.fallbacks
        # Weighted sampling without replacement (Efraimidis-Spirakis): sort by
        # u ** (1 / w); the first element is then drawn with probability w / sum(w).
        keyed = sorted(
            self.tier,
            key=lambda t: math.log(1.0 - rng.random()) / (t.weight or 1.0),
            reverse=True,
        )
        return tuple(keyed) + self.fallbacks


def parse_routes(data: Mapping[str, object], source: str = "routes") -> dict[str, Alias]:
    try:
        parsed = _RoutesFile.model_validate(data)
    except ValidationError as exc:
        raise RoutesError(f"{source}: {exc}") from None
    aliases: dict[str, Alias] = {}
    for name, raw in parsed.aliases.items():
        if not name or "/" in name or name != name.strip():
            raise RoutesError(
                f"{source}: alias {name!r} must be non-empty, without '/' or surrounding "
                "spaces ('provider/model' always means that provider)"
            )
        if not raw:
            raise RoutesError(f"{source}: alias {name!r} has no targets")
        try:
            targets = [AliasTarget(target=t) if isinstance(t, str) else t for t in raw]
        except ValidationError as exc:
            raise RoutesError(f"{source}: alias {name!r}: {exc}") from None
        aliases[name] = Alias.of(name, targets)
    return aliases


def load_routes(path: Path) -> dict[str, Alias]:
    """Read and validate a routing file (providers are checked by the router)."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RoutesError(f"{path}: {exc}") from None
    return parse_routes(data, str(path))
