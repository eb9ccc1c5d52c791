"""Events that annotate a trajectory after the fact: labels and archiving.

A label is a ``key`` with one ``value`` per trajectory (setting a key again
replaces its value); ``label.removed`` takes it off. ``trajectory.archived`` hides
a trajectory from lists by default (nothing is deleted); ``trajectory.unarchived``
brings it back. Within each (trajectory, key) — or each trajectory for archiving —
the later event wins: by ``at``, then by event id.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

LABEL_KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,127}$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LabelSet(_Frozen):
    key: str = Field(pattern=LABEL_KEY_PATTERN)
    value: str = Field(max_length=1024)
    author: str | None = Field(default=None, max_length=256)
    at: datetime


class LabelRemoved(_Frozen):
    key: str = Field(pattern=LABEL_KEY_PATTERN)
    author: str | None = Field(default=None, max_length=256)
    at: datetime


class TrajectoryArchived(_Frozen):
    at: datetime
    author: str | None = Field(default=None, max_length=256)


class TrajectoryUnarchived(_Frozen):
    at: datetime
    author: str | None = Field(default=None, max_length=256)
