"""Webhook registration and delivery records."""

from __future__ import annotations

from services.gateway.openapi.models import ErrorResponse
from services.gateway.openapi.registry import Operation, Param
from shared.webhooks import DeliveryList, Webhook, WebhookCreate, WebhookList

_ID = Param("webhook_id", "path", "a webhook id (wh_…)")
_NOT_FOUND = {404: ("no such webhook in the collection", ErrorResponse)}
_DELETED = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "deleted": {"type": "boolean"}},
    "required": ["id", "deleted"],
}

OPERATIONS = [
    Operation(
        "post",
        "/api/v1/webhooks",
        "Register a URL for the collection's events",
        "webhooks",
        description="Deliveries are signed per Standard Webhooks (webhook-id, "
        "webhook-timestamp, webhook-signature); the secret is in this answer only. "
        "Loopback, private and link-local targets are refused unless the operator "
        "allows them (JETTY_WEBHOOK_ALLOW_NETWORKS).",
        request=WebhookCreate,
        responses={
            201: ("the webhook, with its secret", Webhook),
            400: ("a bad URL, target or event type", ErrorResponse),
        },
    ),
    Operation(
        "get",
        "/api/v1/webhooks",
        "The collection's webhooks",
        "webhooks",
        responses={200: ("the webhooks (no secrets)", WebhookList)},
    ),
    Operation(
        "get",
        "/api/v1/webhooks/{webhook_id}",
        "One webhook",
        "webhooks",
        params=(_ID,),
        responses={200: ("the webhook (no secret)", Webhook), **_NOT_FOUND},
    ),
    Operation(
        "delete",
        "/api/v1/webhooks/{webhook_id}",
        "Delete a webhook",
        "webhooks",
        params=(_ID,),
        responses={200: ("deleted", _DELETED), **_NOT_FOUND},
    ),
    Operation(
        "get",
        "/api/v1/webhooks/{webhook_id}/deliveries",
        "A webhook's delivery attempts, newest first",
        "webhooks",
        params=(_ID,),
        responses={200: ("the attempts (kept 7 days)", DeliveryList), **_NOT_FOUND},
    ),
]
