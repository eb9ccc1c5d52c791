"""The console: a web UI under ``/ui/`` to browse, follow and inspect trajectories.

Server-rendered (Jinja2 through aiohttp-jinja2), htmx and its SSE extension
vendored under ``static/vendor`` (see ``static/vendor/SHA256SUMS``), one small ES
module of our own. :func:`setup` registers it on the gateway's application; the
gateway puts :data:`console_middleware` in its chain. See docs/console.md.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from services.gateway.console import artifacts, guard, live, pages, render
from services.gateway.console.guard import PREFIX, console_middleware, is_console

__all__ = ["console_middleware", "is_console", "setup"]

HERE = Path(__file__).parent


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(render.FILTERS)
    env.tests.update(render.TESTS)
    app.cleanup_ctx.append(guard.sessions_ctx)
    p = PREFIX
    app.router.add_get("/", pages.root)
    app.router.add_get(p, pages.home)
    app.router.add_get(p + "/", pages.home)
    app.router.add_get(p + "/login", pages.login_form)
    app.router.add_post(p + "/login", pages.login)
    app.router.add_post(p + "/logout", pages.logout)
    app.router.add_get(p + "/tasks", pages.tasks_page)
    app.router.add_get(p + "/trajectories", pages.list_page)
    app.router.add_get(p + "/trajectories/live", live.follow_rows)
    t = p + "/trajectories/{trajectory_id}"
    app.router.add_get(t, pages.trajectory_page)
    app.router.add_get(t + "/live", live.follow)
    app.router.add_get(t + "/trajectory.json", pages.download_json)
    app.router.add_get(t + "/steps/{index}", pages.step_body)
    app.router.add_get(t + "/rows", pages.more_rows)
    app.router.add_get(t + "/timeline", pages.timeline_part)
    app.router.add_post(t + "/cancel", artifacts.cancel)
    app.router.add_get(t + "/artifacts/{path:.+}", artifacts.preview)
    app.router.add_get(t + "/files/{path:.+}", artifacts.download)
    app.router.add_get(t + "/images/{path:.+}", artifacts.image)
    app.router.add_get(p + "/{collection}/{task}/{trajectory_id}", pages.permalink)
    app.router.add_static(p + "/static", HERE / "static")
