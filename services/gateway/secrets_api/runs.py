"""A runbook request's secrets: its collection's, with ``jetty.secret_params`` over
them, sealed into the run's entry of ``jetty_run_secrets`` before the run is
queued. Only the names travel in events; the recorded request has the values
replaced."""

from __future__ import annotations

from typing import Any

from nats.errors import Error as NatsError

from services.gateway.secrets_api.routes import (
    check_name,
    check_value,
    collection_secrets,
    run_secrets,
    unavailable,
)
from services.gateway.state import Gateway
from shared.secrets import SecretsError

REDACTED = "[secret]"


async def gather(gw: Gateway, collection: str, params: dict[str, str] | None) -> dict[str, str]:
    """The run's secrets (validated); {} when it has none. Without a configured
    key, a request with ``secret_params`` is 503 and one without runs without."""
    for name, value in (params or {}).items():
        check_name(name, f"jetty.secret_params.{name}")
        check_value(value, f"jetty.secret_params.{name}")
    if not params and not gw.settings.secrets_key:
        return {}
    try:
        values = await collection_secrets(gw).values(collection)
    except (NatsError, TimeoutError):
        raise unavailable() from None
    except SecretsError:
        raise unavailable() from None
    return values | dict(params or {})


async def store_for_run(gw: Gateway, trajectory_id: str, values: dict[str, str]) -> None:
    try:
        await run_secrets(gw).put(trajectory_id, values)
    except (NatsError, TimeoutError):
        raise unavailable() from None


def scrub_request(request: dict[str, Any]) -> dict[str, Any]:
    """The request as recorded: ``jetty.secret_params`` values replaced."""
    jetty = request.get("jetty")
    if isinstance(jetty, dict) and isinstance(jetty.get("secret_params"), dict):
        jetty = jetty | {"secret_params": dict.fromkeys(jetty["secret_params"], REDACTED)}
        return request | {"jetty": jetty}
    return request
