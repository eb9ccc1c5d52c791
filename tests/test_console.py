"""The console's HTML handlers on a real stack: sign-in and sessions, security
headers, escaping of hostile content, scoping by collection, CSRF, lazy step
bodies, filters in the URL, and the vendored assets' checksums."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import pytest

from jetty_cli.testing import TestStack, call, chat
from services.gateway.console import render
from services.gateway.console.guard import CSP
from shared.tokens import TokenStore, hash_token

VENDOR = Path(__file__).parent.parent / "services/gateway/console/static/vendor"
HOSTILE = (
    "<script>alert(1)</script><img src=x onerror=alert(2)> [x](javascript:alert(3)) "
    "\u202egnp.exe\u202c \x07bell " + "W" * 5000
)


class Browser:
    """An aiohttp session with a cookie jar: what a browser keeps between pages."""

    def __init__(self, stack: TestStack) -> None:
        self.base = stack.base_url
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), raise_for_status=False
        )
        self.csrf = ""

    async def sign_in(self, token: str) -> aiohttp.ClientResponse:
        response = await self.http.post(
            self.base + "/ui/login", data={"token": token, "next": "/ui/tasks"}
        )
        await response.read()
        return response

    async def get(self, path: str, **headers: str) -> tuple[int, str, Any]:
        async with self.http.get(self.base + path, headers=headers) as response:
            text = await response.text()
            found = re.search(r'name="csrf" value="([^"]+)"', text)
            if found:
                self.csrf = found.group(1)
            return response.status, text, response.headers

    async def close(self) -> None:
        await self.http.close()


@pytest.fixture
async def browser(stack: TestStack) -> Any:
    b = Browser(stack)
    yield b
    await b.close()


def _call(stack: TestStack, text: str, task: str | None = None) -> str:
    body: dict[str, Any] = {"model": "mock/echo", "messages": [{"role": "user", "content": text}]}
    if task:
        body["jetty"] = {"task": task}
    status, headers, doc = call(stack.base_url + "/v1/chat/completions", stack.token, body)
    assert status == 200, doc
    return headers["X-Jetty-Trajectory-Id"]


async def test_pages_need_a_session_and_sign_in_sets_a_strict_cookie(
    stack: TestStack, browser: Browser
) -> None:
    status, text, _ = await browser.get("/ui/trajectories")
    assert status == 200 and "Sign in" in text  # redirected to the sign-in page
    bad = await browser.sign_in("jt_not-a-token")
    assert bad.status == 401
    response = await browser.sign_in(stack.token)
    assert response.status == 200 and response.url.path == "/ui/tasks"
    cookie = response.history[0].headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
    assert stack.token not in cookie
    status, text, headers = await browser.get("/ui/trajectories")
    assert status == 200 and "Trajectories" in text
    assert headers["Content-Security-Policy"] == CSP
    assert "'unsafe-inline'" not in CSP and "unsafe-eval" not in CSP
    assert "frame-ancestors 'none'" in CSP
    assert headers["X-Content-Type-Options"] == "nosniff"


async def test_root_redirects_a_browser_and_answers_an_api_client(stack: TestStack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(
            stack.base_url + "/", headers={"Accept": "text/html"}, allow_redirects=False
        ) as r:
            assert r.status == 302 and r.headers["Location"] == "/ui/"
        async with http.get(stack.base_url + "/") as r:
            assert r.status == 200 and (await r.json())["console"] == "/ui/"


async def test_sign_out_and_a_revoked_token_end_the_session(
    stack: TestStack, browser: Browser
) -> None:
    token = await stack.create_token(stack.collection, "console-revoke")
    await browser.sign_in(token)
    status, _, _ = await browser.get("/ui/trajectories")
    assert status == 200

    nc = await nats.connect(stack.nats_url)
    try:
        await TokenStore(nc.jetstream()).revoke(hash_token(token))
    finally:
        await nc.close()
    status, text, _ = await browser.get("/ui/trajectories")
    assert "Sign in" in text  # the session ended with its token
    status, _, _ = await browser.get("/ui/trajectories", **{"HX-Request": "true"})
    assert status == 401

    await browser.sign_in(stack.token)
    await browser.get("/ui/trajectories")
    async with browser.http.post(
        browser.base + "/ui/logout", data={"csrf": browser.csrf}, allow_redirects=False
    ) as r:
        assert r.status == 303
    status, text, _ = await browser.get("/ui/trajectories")
    assert "Sign in" in text


async def test_hostile_content_is_escaped_and_inert(stack: TestStack, browser: Browser) -> None:
    trajectory_id = _call(stack, HOSTILE, task="hostile-task")
    await browser.sign_in(stack.token)
    status, text, _ = await browser.get(f"/ui/trajectories/{trajectory_id}")
    assert status == 200
    assert "<script>alert(1)" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert 'href="javascript:' not in text
    assert "\u202e" not in text and "⟨U+202E⟩" in text and "\x07" not in text
    # No inline script or style anywhere, so the CSP can stay strict.
    assert not re.search(r"<script(?![^>]*\bsrc=)", text)
    assert " style=" not in text and "<style" not in text


def test_markdown_is_sanitised() -> None:
    html = str(render.markdown_html("# Hi\n[x](javascript:alert(1)) <b onclick=x>b</b>\n"))
    assert "<h1>Hi</h1>" in html
    assert "href" not in html and "<b onclick" not in html and "&lt;b onclick" in html
    link = str(render.markdown_html("[ok](https://example.com) [bad](javascript:alert(1))"))
    assert 'href="https://example.com"' in link
    assert 'href="javascript' not in link
    chip = render.text_html(
        "see [redacted base64: media_type=image/png; bytes=2048; sha256=" + "a" * 64 + "]"
    )
    assert 'class="chip"' in chip and "image/png" in chip and "2.0 KB" in chip


async def test_another_collections_trajectory_is_a_404_page(
    stack: TestStack, browser: Browser
) -> None:
    trajectory_id = _call(stack, "mine")
    other = await stack.create_token("console-other", "other")
    await browser.sign_in(other)
    for path in (
        f"/ui/trajectories/{trajectory_id}",
        f"/ui/trajectories/{trajectory_id}/steps/0",
        f"/ui/trajectories/{trajectory_id}/trajectory.json",
        f"/ui/{stack.collection}/default/{trajectory_id}",
        "/ui/trajectories/tr_0000000000000000000000",
    ):
        status, text, headers = await browser.get(path)
        assert status == 404, path
        assert "belongs to another collection" in text
        assert headers["Content-Type"].startswith("text/html")
    status, text, _ = await browser.get("/ui/trajectories")
    assert trajectory_id not in text


async def test_posts_need_the_sessions_csrf_secret(stack: TestStack, browser: Browser) -> None:
    await browser.sign_in(stack.token)
    async with browser.http.post(
        browser.base + "/ui/logout", data={"csrf": "forged"}, allow_redirects=False
    ) as r:
        assert r.status == 403
    async with browser.http.post(
        browser.base + "/ui/login",
        data={"token": stack.token},
        headers={"Origin": "https://evil.example"},
        allow_redirects=False,
    ) as r:
        assert r.status == 403


async def test_step_bodies_load_on_demand(stack: TestStack, browser: Browser) -> None:
    trajectory_id = _call(stack, "lazy body please")
    await browser.sign_in(stack.token)
    status, text, _ = await browser.get(
        f"/ui/trajectories/{trajectory_id}/steps/0", **{"HX-Request": "true"}
    )
    assert status == 200 and "<html" not in text  # a fragment
    assert "lazy body please" in text and "Raw request" in text
    status, text, _ = await browser.get(f"/ui/trajectories/{trajectory_id}/steps/0")
    assert status == 200 and "<html" in text  # without JavaScript: a page
    status, _, _ = await browser.get(f"/ui/trajectories/{trajectory_id}/steps/99")
    assert status == 404


async def test_filters_live_in_the_url_and_narrow_the_rows(
    stack: TestStack, browser: Browser
) -> None:
    first = _call(stack, "alpha", task="console-filter-a")
    second = _call(stack, "beta", task="console-filter-b")
    await browser.sign_in(stack.token)
    status, text, _ = await browser.get("/ui/trajectories?task=console-filter-a")
    assert status == 200 and first in text and second not in text
    status, text, _ = await browser.get(f"/ui/trajectories?q={second}")
    assert second in text and first not in text
    status, text, _ = await browser.get("/ui/trajectories?mode=runbook&task=console-filter-a")
    assert first not in text
    status, text, _ = await browser.get("/ui/trajectories?min_cost=lots")
    assert status == 400 and "minimum cost" in text
    status, text, _ = await browser.get("/ui/tasks?period=7d")
    assert "console-filter-a" in text and "console-filter-b" in text


def test_vendored_assets_match_their_checksums() -> None:
    lines = (VENDOR / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 5
    for line in lines:
        digest, name = line.split()
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert "htmx.org 2.0" in (VENDOR / "VERSIONS").read_text()


def test_chat_helper_still_records(stack: TestStack) -> None:
    status, headers, _ = chat(stack.base_url, stack.token, "hello")
    assert status == 200 and headers["X-Jetty-Trajectory-Id"].startswith("tr_")


async def test_a_long_run_renders_its_first_rows_and_loads_the_rest(stack: TestStack) -> None:
    from bench.console import COLLECTION, seed_long_run

    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        trajectory_id = await seed_long_run(pool, 800)
    finally:
        await pool.close()
    browser = Browser(stack)
    try:
        await browser.sign_in(await stack.create_token(COLLECTION, "long"))
        status, text, _ = await browser.get(f"/ui/trajectories/{trajectory_id}")
        assert status == 200
        assert text.count('<li id="row-') == 100  # the first slice of 600 agent steps
        more = re.search(r'hx-get="(/ui/trajectories/[^"]+/rows\?from=100&amp;upto=799)"', text)
        assert more, "no link to the next rows"
        assert "Open the timeline" in text  # a long timeline loads on demand
        status, rows, _ = await browser.get(
            more.group(1).replace("&amp;", "&"), **{"HX-Request": "1"}
        )
        assert status == 200 and rows.count('<li id="row-') == 100
        assert 'id="row-134"' in rows and "from=200" in rows
        status, last, _ = await browser.get(
            f"/ui/trajectories/{trajectory_id}/rows?from=500&upto=799", **{"HX-Request": "1"}
        )
        assert last.count('<li id="row-') == 100 and "More steps" not in last
        status, timeline, _ = await browser.get(
            f"/ui/trajectories/{trajectory_id}/timeline", **{"HX-Request": "1"}
        )
        assert timeline.count("<rect") == 800
        status, found, _ = await browser.get(f"/ui/trajectories/{trajectory_id}?find=m6.py")
        assert '<li id="row-6" class="row k-tool_call hit"' in found and "1 step match" in found
    finally:
        await browser.close()


async def _long_run(stack: TestStack, steps: int) -> str:
    from bench.console import seed_long_run

    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        return await seed_long_run(pool, steps)
    finally:
        await pool.close()


async def test_the_live_stream_resumes_after_last_event_id(stack: TestStack) -> None:
    from bench.console import COLLECTION

    trajectory_id = await _long_run(stack, 40)
    browser = Browser(stack)
    try:
        await browser.sign_in(await stack.create_token(COLLECTION, "live"))
        url = browser.base + f"/ui/trajectories/{trajectory_id}/live"
        async with browser.http.get(url, headers={"Last-Event-ID": "33"}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            body = await r.text()  # a completed run: one update, then done
        assert body.startswith("event: update\nid: 39\n")
        assert 'id="row-34"' in body and 'id="row-38"' in body and 'id="row-30"' not in body
        assert 'id="summary" class="summary" hx-swap-oob="true"' in body
        assert body.rstrip().endswith("event: done\nid: 39\ndata: completed")
    finally:
        await browser.close()


async def test_redacted_base64_shows_as_a_chip(stack: TestStack, browser: Browser) -> None:
    image = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 8).decode()
    body = {
        "model": "mock/echo",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this"},
                    {"type": "image_url", "image_url": {"url": image}},
                ],
            }
        ],
    }
    status, headers, doc = call(stack.base_url + "/v1/chat/completions", stack.token, body)
    assert status == 200, doc
    await browser.sign_in(stack.token)
    status, text, _ = await browser.get(f"/ui/trajectories/{headers['X-Jetty-Trajectory-Id']}")
    assert '<span class="chip"' in text and "image/png · 2.0 KB" in text
    assert image[30:90] not in text


async def test_artifact_previews(stack: TestStack) -> None:
    from bench.console import COLLECTION

    trajectory_id = await _long_run(stack, 8)
    token = await stack.create_token(COLLECTION, "artifacts")
    csv_rows = "name,qty\n" + "".join(f"<b>item{i}</b>,{i}\n" for i in range(700))
    files = {
        "table.csv": (csv_rows.encode(), "text/csv"),
        "data.json": (b'{"a": [1, "<x>"]}', "application/json"),
        "pic.png": (base64.b64decode(PNG), "image/png"),
        "evil.svg": (b"<svg onload=alert(1)></svg>", "image/svg+xml"),
    }
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=1)
    try:
        async with aiohttp.ClientSession() as http:
            for name, (data, media) in files.items():
                form = aiohttp.FormData()
                form.add_field("file", data, filename=name, content_type=media)
                async with http.post(
                    stack.base_url + "/api/v1/files/upload",
                    data=form,
                    headers={"Authorization": f"Bearer {token}"},
                ) as r:
                    stored = await r.json()
                    assert r.status == 200, stored
                await pool.execute(
                    """INSERT INTO artifacts (trajectory_id, path, collection, task, key, size,
                       sha256, content_type, stored_at, event_id)
                       VALUES ($1, $2, $3, 'long-run', $4, $5, $6, $7, now(), 'ev')""",
                    trajectory_id,
                    f"out/{name}",
                    COLLECTION,
                    f"{COLLECTION}/uploads/{name}",
                    stored["size"],
                    stored["sha256"],
                    media,
                )
        # issue 11's primary outputs: one produced, one the run never wrote
        await pool.execute(
            "UPDATE runbooks SET extra = $2::jsonb WHERE trajectory_id = $1",
            trajectory_id,
            '{"primary_outputs": ["out/pic.png", "out/report.md"]}',
        )
    finally:
        await pool.close()
    browser = Browser(stack)
    try:
        await browser.sign_in(token)
        base = f"/ui/trajectories/{trajectory_id}"
        status, page, _ = await browser.get(base)
        assert "out/table.csv" in page and "Download" in page
        # The primary output is listed first, marked, and the missing one named.
        panel = page[page.index('id="artifacts"') :]
        rows = re.findall(r"<tr( class=\"primary\")?>\s*<td>(.*?)</td>", panel, re.S)
        paths = [re.findall(r"out/[\w.]+", cell)[0] for _, cell in rows]
        assert paths == ["out/pic.png", "out/data.json", "out/evil.svg", "out/table.csv"]
        assert [bool(mark) for mark, _ in rows] == [True, False, False, False]
        assert 'class="chip primary"' in rows[0][1] and "1 primary output first" in panel
        assert "Named as primary but not produced: <code>out/report.md</code>" in panel
        status, text, _ = await browser.get(f"{base}/artifacts/out/table.csv")
        assert status == 200 and text.count("<tr>") == 501  # header + 500 rows
        assert "&lt;b&gt;item0&lt;/b&gt;" in text and "first 500 rows" in text
        status, text, _ = await browser.get(f"{base}/artifacts/out/data.json")
        assert '<span class="k">&#34;a&#34;</span>' in text and "&lt;x&gt;" in text
        status, text, _ = await browser.get(f"{base}/artifacts/out/pic.png")
        assert f'<img src="{base}/images/out/pic.png"' in text
        async with browser.http.get(browser.base + f"{base}/images/out/pic.png") as r:
            assert r.status == 200 and r.content_type == "image/png"
            assert "sandbox" in r.headers["Content-Security-Policy"]
        status, text, _ = await browser.get(f"{base}/artifacts/out/evil.svg")
        assert "No preview for this type" in text and "<svg" not in text
        status, _, _ = await browser.get(f"{base}/images/out/evil.svg")
        assert status == 404
        async with browser.http.get(browser.base + f"{base}/files/out/data.json") as r:
            assert r.status == 200 and await r.read() == files["data.json"][0]
            assert "attachment" in r.headers["Content-Disposition"]
    finally:
        await browser.close()


PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9a"
    "wAAAABJRU5ErkJggg=="
)


async def test_labels_show_and_filter(stack: TestStack, browser: Browser) -> None:
    labelled = _call(stack, "labelled", task="console-labels")
    plain = _call(stack, "plain", task="console-labels")
    status, _, doc = call(
        stack.base_url + f"/api/v1/trajectories/{labelled}/labels",
        stack.token,
        {"key": "team", "value": "data<x>"},
    )
    assert status in (200, 201), doc
    await browser.sign_in(stack.token)
    status, text, _ = await browser.get("/ui/trajectories?label=team:data<x>")
    assert status == 200 and labelled in text and plain not in text
    assert "team: data&lt;x&gt;" in text
    status, text, _ = await browser.get(f"/ui/trajectories/{labelled}")
    start = text.index('id="summary"')
    header = text[start : text.index("</header>", start)]
    assert (
        '<a class="chip label" href="/ui/trajectories?label=team%3Adata%3Cx%3E">'
        "team: data&lt;x&gt;</a>"
    ) in header
    status, text, _ = await browser.get("/ui/trajectories?label=nocolon")
    assert status == 400 and "key:value" in text
