"""Masks for a runbook agent's model calls: while such a call is in this proxy,
the run's secret values are masked out of every event the proxy publishes for it
(the request the agent sent, which may quote a tool's output, and the answer).

The run's values are read once from its sealed entry and kept a short while per
trajectory, so a run's calls cost one key-value read per ``ttl`` seconds; a run
without secrets is remembered as such."""

from __future__ import annotations

import logging
import time

from nats.errors import Error as NatsError

from shared.bus import EventPublisher
from shared.secrets import Masker, RunSecrets, SecretsError

log = logging.getLogger(__name__)

_CACHE_SIZE = 4096


class RunMasks:
    def __init__(self, store: RunSecrets, publisher: EventPublisher, ttl: float = 30.0) -> None:
        self.store = store
        self.publisher = publisher
        self.ttl = ttl
        self._cache: dict[str, tuple[float, Masker | None]] = {}

    async def _masker(self, trajectory_id: str) -> Masker | None:
        now = time.monotonic()
        cached = self._cache.get(trajectory_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            values = await self.store.get(trajectory_id)
        except (NatsError, TimeoutError, SecretsError) as exc:
            log.warning("secrets of run %s unreadable: %r", trajectory_id, exc)
            values = {}
        masker = Masker(values) if values else None
        if len(self._cache) >= _CACHE_SIZE:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[trajectory_id] = (now + self.ttl, masker)
        return masker

    async def acquire(self, trajectory_id: str) -> bool:
        masker = await self._masker(trajectory_id)
        if masker is None:
            return False
        self.publisher.masks.acquire(trajectory_id, masker)
        return True

    def release(self, trajectory_id: str) -> None:
        self.publisher.masks.release(trajectory_id)
