"""Run the gateway: ``python -m services.gateway``."""

from __future__ import annotations

from aiohttp import web

from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.logs import setup_logging, use_uvloop
from shared.tracing import setup_tracing, shutdown_tracing


def main() -> None:
    settings = GatewaySettings()
    setup_logging("gateway", settings.log_level)
    setup_tracing("gateway")
    use_uvloop()
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        # Cancel a handler when its client disconnects: that is how a stream's
        # upstream call gets cancelled promptly.
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=10,
        print=lambda *_: None,
    )
    shutdown_tracing()


if __name__ == "__main__":
    main()
