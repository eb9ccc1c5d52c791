"""Deliver events to the webhooks that want them, signed per Standard Webhooks.

One durable pull consumer (``jetty-webhooks``), filtered on the subjects the
endpoints want (:mod:`services.webhooks.endpoints`; none when there is no
endpoint). For each event, every endpoint of its collection that wants its type gets a POST of
the event envelope, with ``webhook-id`` (the event id: receivers deduplicate on
it), ``webhook-timestamp`` and ``webhook-signature`` (``v1,<base64 HMAC-SHA256>``
of ``id.timestamp.body`` with the endpoint's secret). A 2xx is delivered;
anything else (or no answer within ``webhook_timeout``) is retried: the event is
NAKed with the next delay of ``webhook_retry_delays`` and the stream redelivers
it then — so retries survive restarts — to the endpoints that have not had it
yet. After the last delay the delivery is given up. Each attempt is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
from nats.aio.msg import Msg
from standardwebhooks.webhooks import Webhook as Signer

from services.webhooks.settings import WebhookSettings
from shared.webhooks import (
    Delivery,
    StoredWebhook,
    WebhookError,
    WebhookStore,
    check_target,
    now,
    parse_networks,
)

log = logging.getLogger(__name__)


class Deliverer:
    def __init__(
        self,
        settings: WebhookSettings,
        store: WebhookStore,
        session: aiohttp.ClientSession,
        hooks: Callable[[str], list[StoredWebhook]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.session = session
        self.allowed = parse_networks(settings.webhook_allow_networks)
        #: a collection's endpoints, as the live watch (endpoints.py) knows them
        self._of_collection = hooks
        #: endpoints that had an event, so a redelivery skips them
        self._done: dict[str, set[str]] = {}

    async def handle(self, msg: Msg) -> None:
        try:
            event: dict[str, Any] = orjson.loads(msg.data)
            event_id, event_type = str(event["id"]), str(event["type"])
            collection = str(event["collection"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            await msg.ack()
            return
        wanted = [h for h in self._of_collection(collection) if h.wants(event_type)]
        if not wanted:
            await msg.ack()
            return
        attempt = msg.metadata.num_delivered
        delays = self.settings.webhook_retry_delays
        last = attempt > len(delays)
        done = self._done.setdefault(event_id, set())
        if attempt > 1 and not done:
            # After a restart: what the records say was delivered already.
            for hook in wanted:
                for record in await self.store.deliveries(hook.id):
                    if record.event_id == event_id and record.outcome == "delivered":
                        done.add(hook.id)
        results = await asyncio.gather(
            *(self._deliver(h, event, msg.data, attempt, last) for h in wanted if h.id not in done)
        )
        for hook_id, ok in results:
            if ok:
                done.add(hook_id)
        if all(ok for _, ok in results) or last:
            self._done.pop(event_id, None)
            await msg.ack()
        else:
            await msg.nak(delay=delays[attempt - 1])

    async def _deliver(
        self, hook: StoredWebhook, event: dict[str, Any], body: bytes, attempt: int, last: bool
    ) -> tuple[str, bool]:
        started = time.monotonic()
        at = now()
        status: int | None = None
        error: str | None = None
        outcome = "delivered"
        try:
            await check_target(hook.url, self.allowed)
            headers = _signed_headers(hook.secret, str(event["id"]), at.timestamp(), body)
            async with self.session.post(
                hook.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
                await response.read()
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
        except WebhookError as exc:
            error, outcome = str(exc), "refused"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:300]
        ok = error is None
        if not ok and outcome != "refused":
            outcome = "gave_up" if last else "failed"
        delays = self.settings.webhook_retry_delays
        next_at = None
        if outcome == "failed":
            next_at = at + timedelta(seconds=delays[attempt - 1])
        record = Delivery(
            webhook_id=hook.id,
            event_id=str(event["id"]),
            event_type=str(event["type"]),
            trajectory_id=str(event.get("trajectory_id", "")),
            attempt=attempt,
            outcome=outcome,
            status_code=status,
            error=error,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            at=at,
            next_attempt_at=next_at,
        )
        try:
            await self.store.record(record)
        except Exception as exc:  # a lost record must not stop deliveries
            log.warning("could not record delivery to %s: %r", hook.id, exc)
        if not ok:
            log.info("webhook %s: %s (attempt %d, %s)", hook.id, outcome, attempt, error)
        # A refused target is not retried: it would be refused again.
        return hook.id, ok or outcome == "refused"


def _signed_headers(secret: str, msg_id: str, timestamp: float, body: bytes) -> dict[str, str]:
    moment = datetime.fromtimestamp(int(timestamp), UTC)
    signature = Signer(secret).sign(msg_id, moment, body.decode())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature,
        "User-Agent": "jetty-webhooks/1",
    }
