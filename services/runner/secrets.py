"""A run's secrets on the runner side: read the run's sealed entry, put the
values into the agent's environment (the agent's own variables win, so a secret
cannot redirect it), and mask them out of every event this runner publishes for
the run while it goes on. The entry is removed when the run ends."""

from __future__ import annotations

import contextlib
import dataclasses
import logging

from services.runner.agents.base import AgentCommand
from shared.bus import EventPublisher
from shared.secrets import Masker, RunSecrets

log = logging.getLogger(__name__)


class SecretsUnavailable(Exception):
    pass


class RunSecretScope:
    """Holds one run's secrets from :meth:`load` to :meth:`close`."""

    def __init__(
        self, store: RunSecrets | None, publisher: EventPublisher, trajectory_id: str
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.trajectory_id = trajectory_id
        self.values: dict[str, str] = {}
        self._masked = False

    async def load(self, names: list[str]) -> None:
        if not names:
            return
        if self.store is None:
            raise SecretsUnavailable("this runner has no JETTY_SECRETS_KEY")
        try:
            self.values = await self.store.get(self.trajectory_id)
        except Exception as exc:  # the bus, or a value sealed under another key
            raise SecretsUnavailable(f"the run's secrets could not be read: {exc!r}") from None
        missing = set(names) - set(self.values)
        if missing:
            raise SecretsUnavailable(f"secrets missing: {', '.join(sorted(missing))}")
        self.publisher.masks.acquire(self.trajectory_id, Masker(self.values))
        self._masked = True

    def apply(self, command: AgentCommand) -> AgentCommand:
        if not self.values:
            return command
        return dataclasses.replace(command, env={**self.values, **command.env})

    async def close(self) -> None:
        if self._masked:
            self.publisher.masks.release(self.trajectory_id)
            self._masked = False
        if self.values and self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.delete(self.trajectory_id)
        self.values = {}
