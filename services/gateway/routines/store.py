"""Where routines live: the key-value bucket ``jetty_routines`` (key
``<collection>.<routine id>``), changed only by compare-and-set, and the claims of
their firings in ``jetty_routine_fires`` (key ``<routine id>.<slot>``, kept a
week), which is what makes a firing happen once however many replicas tick."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict

from shared.kv import open_bucket, values_under

ROUTINES_BUCKET = "jetty_routines"
FIRES_BUCKET = "jetty_routine_fires"
FIRES_TTL = 7 * 24 * 3600.0


def new_routine_id() -> str:
    return "rt_" + secrets.token_hex(10)


def is_routine_id(value: str) -> bool:
    rest = value.removeprefix("rt_")
    return rest != value and len(rest) == 20 and all(c in "0123456789abcdef" for c in rest)


class Routine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str
    collection: str
    name: str
    cadence: str
    paused: bool = False
    #: the chat-completions body of each run (a runbook request)
    request: dict[str, Any]
    created_at: float
    #: the latest scheduled time that was fired (or skipped by a resume)
    last_slot: float | None = None
    last_trajectory_id: str | None = None
    last_error: str | None = None


class Fire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    state: Literal["claimed", "fired", "failed"]
    by: str
    at: float
    trajectory_id: str | None = None
    error: str | None = None


class Conflict(Exception):
    pass


class RoutineStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._routines: Any = None
        self._fires: Any = None

    async def routines_kv(self) -> Any:
        if self._routines is None:
            self._routines = await open_bucket(self._js, ROUTINES_BUCKET, "routines")
        return self._routines

    async def fires_kv(self) -> Any:
        if self._fires is None:
            self._fires = await open_bucket(
                self._js, FIRES_BUCKET, "claims of routine firings", ttl=FIRES_TTL
            )
        return self._fires

    async def create(self, routine: Routine) -> None:
        kv = await self.routines_kv()
        await kv.create(f"{routine.collection}.{routine.id}", routine.model_dump_json().encode())

    async def get(self, collection: str, routine_id: str) -> Routine | None:
        if not is_routine_id(routine_id):
            return None
        kv = await self.routines_kv()
        try:
            entry = await kv.get(f"{collection}.{routine_id}")
        except KeyNotFoundError:
            return None
        return Routine.model_validate_json(entry.value) if entry.value else None

    async def update(
        self, collection: str, routine_id: str, change: Callable[[Routine], Routine]
    ) -> Routine | None:
        """Compare-and-set; None when the routine is gone."""
        kv = await self.routines_kv()
        key = f"{collection}.{routine_id}"
        for _ in range(50):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                return None
            if not entry.value:
                return None
            new = change(Routine.model_validate_json(entry.value))
            try:
                await kv.update(key, new.model_dump_json().encode(), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return new
        raise Conflict(key)

    async def delete(self, collection: str, routine_id: str) -> None:
        kv = await self.routines_kv()
        await kv.purge(f"{collection}.{routine_id}")

    async def all(self, collection: str | None = None) -> list[Routine]:
        kv = await self.routines_kv()
        raw = await values_under(kv, f"{collection}.>" if collection else ">")
        found = [Routine.model_validate_json(v) for v in raw]
        return sorted(found, key=lambda r: (r.created_at, r.id))

    # --- firing claims -----------------------------------------------------------

    @staticmethod
    def fire_key(routine_id: str, slot: float) -> str:
        return f"{routine_id}.{int(slot * 1000)}"

    async def claim(self, key: str, fire: Fire, stale_after: float, now: float) -> bool:
        """Whether this replica now holds the firing: the first to create the key,
        or the one that takes over a claim left ``stale_after`` seconds unfinished."""
        kv = await self.fires_kv()
        try:
            await kv.create(key, fire.model_dump_json().encode())
            return True
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return False
        current = Fire.model_validate_json(entry.value) if entry.value else None
        if current is None or current.state != "claimed" or now - current.at < stale_after:
            return False
        try:
            await kv.update(key, fire.model_dump_json().encode(), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def settle(self, key: str, fire: Fire) -> None:
        kv = await self.fires_kv()
        await kv.put(key, fire.model_dump_json().encode())

    async def fire_state(self, key: str) -> Fire | None:
        kv = await self.fires_kv()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return Fire.model_validate_json(entry.value) if entry.value else None
