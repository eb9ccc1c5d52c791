"""Run the gateway: ``python -m services.gateway``."""

from __future__ import annotations

import gc

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
    app = create_app(settings)
    # What is loaded by now lives as long as the process: keep it out of the
    # collector's way, and collect the young generation less often (each request
    # allocates a few hundred objects that die with it).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        # Several worker processes share the port; the kernel spreads connections.
        reuse_port=settings.gateway_workers > 1 or None,
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
