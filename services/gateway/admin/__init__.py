"""The gateway's admin API: a collection's keys and spend (``/api/v1/keys``)."""

from __future__ import annotations

from aiohttp import web

from services.gateway.admin import keys


def routes() -> list[web.RouteDef]:
    return keys.routes()
