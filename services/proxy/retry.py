"""When a failed upstream try is retried, moved past, or final.

Three outcomes for an :class:`~shared.errors.ApiError` from a provider:

* **retry the same target** — 429, and 5xx that mean "the upstream could not
  answer now" (5xx mapped to 502, 529 overloaded, connection failures and connect
  timeouts): after exponential backoff with full jitter, or after the upstream's
  ``Retry-After`` when it gave one;
* **fall back only** — our key rejected (``upstream_auth_failed``), a first-byte or
  total timeout (504: waiting again would multiply the wait), and a retryable error
  whose ``Retry-After`` is longer than ``max_delay`` (the client is better told than
  kept waiting): the next target is tried at once;
* **final** — any other 4xx: the request itself is wrong, so no other target will
  like it better.

The caller adds the two rules that need its state: nothing is retried once a chunk
has reached the client, and no wait may run past the call's total deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shared.errors import ApiError

# Same-target retries: worth another try after a pause.
_NO_RETRY_CODES = frozenset({"upstream_auth_failed", "upstream_timeout", "response_too_large"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: retries of one target after its first try (so ``max_retries + 1`` tries)
    max_retries: int = 2
    #: the first backoff ceiling in seconds; doubles each retry
    base_delay: float = 0.5
    #: no pause is longer; a longer ``Retry-After`` means "fall back instead"
    max_delay: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    # Injected so tests can see the pauses without waiting for them.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @classmethod
    def none(cls) -> RetryPolicy:
        """No retries (fallback targets are still tried)."""
        return cls(max_retries=0)

    def falls_back(self, error: ApiError) -> bool:
        """Whether another target may be tried after ``error``."""
        return (
            error.status == 429 or error.status >= 500 or error.code == "upstream_auth_failed"
        ) and error.code != "response_too_large"

    def delay(self, retries_done: int, error: ApiError) -> float | None:
        """Seconds to wait before retrying the same target, or ``None``: move on."""
        if retries_done >= self.max_retries or not self.falls_back(error):
            return None
        if error.code in _NO_RETRY_CODES or (error.status < 500 and error.status != 429):
            return None
        if error.retry_after is not None:
            wanted = float(error.retry_after)
            return wanted if wanted <= self.max_delay else None
        ceiling = min(self.max_delay, self.base_delay * (2**retries_done))
        return self.rng.uniform(0.0, ceiling)
