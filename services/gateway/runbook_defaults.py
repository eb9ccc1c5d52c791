"""What a runbook's text decides before it runs: its YAML front matter (defaults
the request can override), its template variables, and the agent when the
request names none.

* Front matter is a YAML mapping between a first line ``---`` and the next
  ``---`` line. Keys: ``agent``, ``model`` (used when the request's ``model`` is
  ``"default"``), ``timeout_s``, ``primary_outputs``, ``evaluation``; any other key
  is a 400, so a typo is not silently ignored. The agent sees the body only.
* ``{{name}}`` in the body is replaced by ``jetty.template_variables[name]``
  (whitespace inside the braces allowed; names are letters, digits, ``_ . -``).
  A name the body uses and the request lacks is a 400 naming every such name.
* The agent, when neither the request nor the front matter names one, follows
  from the model's family: Claude → claude-code, GPT/o-series/codex → codex,
  Gemini → gemini-cli, with any ``provider/`` prefix ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidRequest

AGENT_NAMES = ("claude-code", "codex", "gemini-cli", "opencode")
DEFAULT_MODEL = "default"
_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.S | re.M)
_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str | None = None
    model: str | None = Field(default=None, min_length=1, max_length=256)
    timeout_s: float | None = Field(default=None, gt=0, le=86_400)
    primary_outputs: list[str] = Field(default_factory=list, max_length=100)
    evaluation: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ParsedRunbook:
    body: str
    front: FrontMatter = field(default_factory=FrontMatter)


def parse_front_matter(text: str, param: str) -> ParsedRunbook:
    match = _FRONT.match(text)
    if match is None:
        return ParsedRunbook(text)
    try:
        raw = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise InvalidRequest(
            f"The runbook's front matter is not valid YAML: {exc}",
            param=param,
            code="invalid_front_matter",
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequest(
            "The runbook's front matter must be a YAML mapping.",
            param=param,
            code="invalid_front_matter",
        )
    try:
        front = FrontMatter.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(
            f"The runbook's front matter: '{where}': {first['msg']}.",
            param=param,
            code="invalid_front_matter",
        ) from None
    if front.agent is not None and front.agent not in AGENT_NAMES:
        raise InvalidRequest(
            f"The runbook's front matter names agent {front.agent!r}: "
            f"one of {', '.join(AGENT_NAMES)}.",
            param=param,
            code="invalid_front_matter",
        )
    return ParsedRunbook(text[match.end() :], front)


def render(text: str, variables: dict[str, str], param: str) -> str:
    missing = sorted({m.group(1) for m in _VARIABLE.finditer(text)} - variables.keys())
    if missing:
        raise InvalidRequest(
            f"The runbook uses template variable(s) the request does not set: "
            f"{', '.join(missing)}.",
            param=param,
            code="missing_template_variable",
        )
    return _VARIABLE.sub(lambda m: variables[m.group(1)], text)


def infer_agent(model: str) -> str | None:
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith("claude"):
        return "claude-code"
    if name.startswith("gemini"):
        return "gemini-cli"
    if name.startswith(("gpt", "codex", "chatgpt")) or re.match(r"o\d", name):
        return "codex"
    return None
