"""``GET /openapi.json`` and ``GET /docs``: the document and its rendered page.

The page is Swagger UI's prebuilt bundle (``swagger-ui-dist`` from npm, pinned
in ``vendor/package.json``, installed by ``make install``) served from
``/docs/assets/``; nothing is fetched from a CDN. Both are public (no token), as
they describe the API rather than expose data.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from services.gateway.openapi import document_bytes
from services.gateway.openapi.registry import Operation, Param

ASSETS = Path(__file__).resolve().parent / "vendor" / "node_modules" / "swagger-ui-dist"
SERVED_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"})

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Jetty Flows API reference</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" href="/docs/assets/favicon-32x32.png">
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <style>body { margin: 0; } .swagger-ui .topbar { display: none; }</style>
</head>
<body>
  <div id="reference"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

# A separate script (not inline), so a strict Content-Security-Policy holds.
_INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#reference",
  deepLinking: true,
  persistAuthorization: true,
  tryItOutEnabled: false,
});
"""

_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json")


async def docs_page(request: web.Request) -> web.Response:
    if not (ASSETS / "swagger-ui-bundle.js").is_file():
        return web.Response(
            status=503,
            text="The API reference page's assets are not installed (make install); "
            "the document itself is at /openapi.json.\n",
        )
    return web.Response(
        text=_PAGE, content_type="text/html", headers={"Content-Security-Policy": _CSP}
    )


async def docs_init(request: web.Request) -> web.Response:
    return web.Response(text=_INIT, content_type="application/javascript")


async def docs_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in SERVED_ASSETS or not (ASSETS / name).is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(ASSETS / name, headers={"Cache-Control": "public, max-age=86400"})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/openapi.json", openapi_json),
        web.get("/docs", docs_page),
        web.get("/docs/init.js", docs_init),
        web.get("/docs/assets/{name}", docs_asset),
    ]


_TEXT = {"type": "string"}

OPERATIONS = [
    Operation(
        "get",
        "/openapi.json",
        "This document",
        "reference",
        responses={200: ("the OpenAPI 3.1 document", {"type": "object"})},
        public=True,
    ),
    Operation(
        "get",
        "/docs",
        "The rendered API reference",
        "reference",
        responses={200: ("an HTML page", {"text/html": _TEXT})},
        public=True,
    ),
    Operation(
        "get",
        "/docs/init.js",
        "The reference page's start-up script",
        "reference",
        responses={200: ("JavaScript", {"application/javascript": _TEXT})},
        public=True,
    ),
    Operation(
        "get",
        "/docs/assets/{name}",
        "The reference page's vendored assets",
        "reference",
        params=(Param("name", "path"),),
        responses={
            200: ("a file", {"application/octet-stream": _TEXT}),
            404: ("no such asset", None),
        },
        public=True,
    ),
]
