"""The console in a real headless Chromium (Debian's, installed by `make test`),
driven by Playwright for Python, against a real stack whose runbooks run the real
claude-code CLI in the local sandbox (its model answered by the scripted fake).

Each page is saved as a screenshot in light and dark, at 1280 px and at a 390 px
phone width, under ``$JETTY_SCREENSHOTS`` (default ``.jetty/screenshots``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from jetty_cli.testing import StackFactory, TestStack, call
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.anthropic_upstream import Script as AnthropicScript
from tests.fakes.scenario_claude_code import ReadSummarizeWrite

pytestmark = pytest.mark.timeout(300)

ANTHROPIC_KEY = "sk-ant-console-test"
MODEL = "claude-sonnet-4-6"
WORKSPACE = "/workspace"
COLLECTION = "default"
SHOTS = Path(
    os.environ.get("JETTY_SCREENSHOTS", Path(__file__).parent.parent / ".jetty/screenshots")
)
SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert('y')> \u202eevil"


def chromium_path() -> str:
    for candidate in (os.environ.get("JETTY_CHROMIUM"), "/usr/lib/chromium/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    found = shutil.which("chromium")
    if found:
        return found
    raise RuntimeError("no chromium: `make test` installs Debian's (apt-get install chromium)")


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic(ANTHROPIC_KEY)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="module")
def site(stack_factory: StackFactory, fake: FakeAnthropic) -> Iterator[TestStack]:
    stack = stack_factory(
        env={
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "ANTHROPIC_BASE_URL": fake.base_url,
            "JETTY_RUNNER_ACK_WAIT": "3",
        }
    )
    yield stack
    stack.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        yield chromium
        await chromium.close()


class Watched:
    """A page with every dialog and console error it raised."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


async def _context(
    browser: Browser, base_url: str, scheme: str = "light", size: str = "desktop"
) -> BrowserContext:
    return await browser.new_context(
        base_url=base_url,
        color_scheme=scheme,
        viewport=SIZES[size],  # type: ignore[arg-type]
    )


async def _signed_in(browser: Browser, site: TestStack, token: str | None = None) -> Watched:
    context = await _context(browser, site.base_url)
    watched = Watched(await context.new_page())
    page = watched.page
    await page.goto("/ui/trajectories")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.fill("#token", token or site.token)
    await page.click("button[type=submit]")
    await expect(page.get_by_role("heading", name="Trajectories")).to_be_visible()
    return watched


async def _shots(browser: Browser, page: Page, name: str) -> None:
    """``name`` in light and dark, desktop and phone, from the same session."""
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    state = await page.context.storage_state()
    url = page.url
    for scheme in ("light", "dark"):
        for size, viewport in SIZES.items():
            context = await browser.new_context(
                storage_state=state,
                color_scheme=scheme,  # type: ignore[arg-type]
                viewport=viewport,  # type: ignore[arg-type]
            )
            other = await context.new_page()
            await other.goto(url)
            await other.wait_for_load_state("networkidle")
            await other.screenshot(path=str(SHOTS / f"{name}-{scheme}-{size}.png"), full_page=True)
            await context.close()


def _chat(site: TestStack, text: str, task: str) -> str:
    body = {
        "model": "mock/echo",
        "messages": [{"role": "user", "content": text}],
        "jetty": {"task": task},
    }
    status, headers, doc = call(site.base_url + "/v1/chat/completions", site.token, body)
    assert status == 200, doc
    return str(headers["X-Jetty-Trajectory-Id"])


async def test_sign_in_list_filters_and_a_passthrough_trajectory(
    browser: Browser, site: TestStack
) -> None:
    first = _chat(site, "What is the capital of France?", "geography")
    second = _chat(site, "Summarise the quarterly numbers.", "reports")
    watched = await _signed_in(browser, site)
    page = watched.page
    await page.reload()
    await expect(page.locator(f"#tr-{first}")).to_be_visible()
    await expect(page.locator(f"#tr-{second}")).to_be_visible()
    await _shots(browser, page, "list")

    # A filter changes the URL and the rows.
    await page.fill("input[name=task]", "geography")
    await page.click(".filters button[type=submit]")
    await expect(page).to_have_url(re.compile(r"task=geography"))
    await expect(page.locator(f"#tr-{first}")).to_be_visible()
    await expect(page.locator(f"#tr-{second}")).to_have_count(0)

    await page.click(f"#tr-{first} td.id a")
    await expect(page.locator("#summary h1")).to_have_text("geography")
    await expect(page.locator(".view-steps")).to_contain_text("What is the capital of France?")
    await page.click("label[for=v-chat]")
    await expect(page.locator(".view-chat .bubble.r-user")).to_contain_text("capital of France")
    await page.click("label[for=v-steps]")
    await _shots(browser, page, "passthrough")

    await page.goto("/ui/tasks")
    await expect(page.locator("table")).to_contain_text("reports")
    await _shots(browser, page, "tasks")
    assert watched.dialogs == [] and watched.errors == [], watched.errors


async def test_hostile_content_runs_no_script(browser: Browser, site: TestStack) -> None:
    trajectory_id = _chat(site, HOSTILE, "hostile")
    watched = await _signed_in(browser, site)
    page = watched.page
    await page.goto(f"/ui/trajectories/{trajectory_id}")
    await page.click("label[for=v-chat]")
    await expect(page.locator(".view-chat")).to_contain_text("<script>alert('x')</script>")
    await page.wait_for_timeout(300)  # give any handler the chance to fire
    assert watched.dialogs == []
    assert watched.errors == []  # a blocked inline script would be a CSP error here
    assert await page.locator("img[src=x]").count() == 0


async def test_another_collection_sees_a_404(browser: Browser, site: TestStack) -> None:
    trajectory_id = _chat(site, "private", "private")
    other = await site.create_token("console-elsewhere", "other")
    watched = await _signed_in(browser, site, other)
    page = watched.page
    response = await page.goto(f"/ui/trajectories/{trajectory_id}")
    assert response is not None and response.status == 404
    await expect(page.locator("h1")).to_contain_text("404")
    await expect(page.locator("body")).not_to_contain_text("private")


async def _upload(site: TestStack, name: str, data: bytes) -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="text/csv")
    form.add_field("collection", COLLECTION)
    headers = {"Authorization": f"Bearer {site.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(site.base_url + "/api/v1/files/upload", data=form, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        return str((await r.json())["path"])


async def _start_run(site: TestStack, task: str, file_paths: list[str]) -> str:
    body = {
        "model": MODEL,
        "stream": True,
        "messages": [
            {"role": "system", "content": "Read uploads/data.csv and write results/summary.md."},
            {"role": "user", "content": "Summarise the data."},
        ],
        "jetty": {
            "runbook": True,
            "agent": "claude-code",
            "collection": COLLECTION,
            "task": task,
            "file_paths": file_paths,
        },
    }
    headers = {"Authorization": f"Bearer {site.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(site.base_url + "/v1/chat/completions", json=body, headers=headers) as r,
    ):
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: {"):
                return str(orjson.loads(line[6:])["jetty_metadata"]["trajectory_id"])
    raise AssertionError("no first chunk")


class Slow:
    """The claude-code scenario, each answer held back so a person can watch."""

    def __init__(self, delay: float) -> None:
        self.inner = ReadSummarizeWrite(WORKSPACE)
        self.delay = delay

    def __call__(self, body: Any) -> AnthropicScript:
        return dataclasses.replace(self.inner(body), first_byte_delay=self.delay)


async def test_a_runbook_run_appears_live_with_nested_calls_and_its_artifact(
    browser: Browser, site: TestStack, fake: FakeAnthropic
) -> None:
    fake.respond_with(MODEL, Slow(1.5))
    path = await _upload(site, "data.csv", b"name,price,qty\nwidget,3,4\ngadget,10,1\n")
    watched = await _signed_in(browser, site)
    page = watched.page
    trajectory_id = await _start_run(site, "csv-summary", [path])
    await page.goto(f"/ui/trajectories/{trajectory_id}")
    seen_at_load = await page.locator("#spine > .row").count()
    await expect(page.locator("#summary .status")).to_have_text(
        re.compile("pending|running"), timeout=30_000
    )
    # Steps arrive over SSE: no reload from here on.
    await expect(page.locator("#spine > .row.k-tool_call").first).to_be_visible(timeout=60_000)
    await expect(page.locator("#summary .status")).to_have_text("completed", timeout=90_000)
    rows = page.locator("#spine > .row")
    assert await rows.count() > seen_at_load
    await expect(page.locator("#spine .calls .call").first).to_be_visible()
    assert await page.locator("#spine .calls .call").count() >= 3  # the model calls, nested
    await expect(page.locator("#spine > .row.k-tool_call", has_text="Write")).to_have_count(1)
    await expect(page.locator("#jumps")).to_contain_text("Most expensive")  # updated live

    # A stream that started over may resend rows: the page keeps each row once.
    count = await rows.count()
    await page.evaluate(
        """() => {
            const spine = document.getElementById("spine");
            const copy = spine.firstElementChild.cloneNode(true);
            spine.append(copy);
            window.htmx.process(copy);  // as htmx does for what a stream brings
            spine.dispatchEvent(new CustomEvent("htmx:sseMessage", {bubbles: true}));
        }"""
    )
    assert await rows.count() == count

    # Keyboard: j moves to the next step, k back, o opens it (its body loads then).
    await page.locator("body").click(position={"x": 5, "y": 5})
    await page.keyboard.press("j")
    await expect(rows.nth(0)).to_have_class(re.compile(r"\bcurrent\b"))
    await page.keyboard.press("j")
    await expect(rows.nth(1)).to_have_class(re.compile(r"\bcurrent\b"))
    await page.keyboard.press("k")
    await expect(rows.nth(0)).to_have_class(re.compile(r"\bcurrent\b"))
    await page.keyboard.press("o")
    await expect(rows.nth(0).locator(".stepbody")).to_be_visible()

    # The artifact: listed with the tool call that wrote it, previewed in place.
    artifact = page.locator("#artifacts tr", has_text="results/summary.md")
    await expect(artifact).to_contain_text("Write")
    await artifact.locator("td a").first.click()
    # Markdown, rendered (a heading, not "# Summary") from the CSV the agent read.
    await expect(page.locator("#preview .artifact h1")).to_have_text("Summary")
    await expect(page.locator("#preview .artifact")).to_contain_text("sum of price: 13")
    await _shots_of_view(page, "runbook-open")  # a step open, the artifact previewed
    await page.click("label[for=v-chat]")
    await expect(page.locator(".view-chat .bubble").first).to_be_visible()
    await _shots_of_view(page, "runbook-chat")
    await page.reload()
    await _shots(browser, page, "runbook")
    await page.click("label[for=v-time]")
    await expect(page.locator("#timeline rect").first).to_be_attached()
    await _shots_of_view(page, "runbook-timeline")
    assert watched.dialogs == [] and watched.errors == [], watched.errors


async def _shots_of_view(page: Page, name: str) -> None:
    await asyncio.to_thread(SHOTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}-light-desktop.png"), full_page=True)


async def test_cancel_stops_a_running_run(
    browser: Browser, site: TestStack, fake: FakeAnthropic
) -> None:
    fake.respond_with(MODEL, lambda body: AnthropicScript(first_byte_delay=60))
    watched = await _signed_in(browser, site)
    page = watched.page
    trajectory_id = await _start_run(site, "to-cancel", [])
    await page.goto(f"/ui/trajectories/{trajectory_id}")
    await expect(page.locator("#summary .status")).to_have_text("running", timeout=60_000)
    # A list open beside it: the running row updates itself when the run ends.
    lister = await page.context.new_page()
    await lister.goto("/ui/trajectories")
    await expect(lister.locator(f"#tr-{trajectory_id} .status")).to_have_text("running")
    await page.click("button.danger")
    await expect(page.locator("#summary .status")).to_have_text("cancelled", timeout=30_000)
    await expect(page.locator("button.danger")).to_have_count(0)
    await expect(lister.locator(f"#tr-{trajectory_id} .status")).to_have_text(
        "cancelled", timeout=30_000
    )
    # The list now holds passthrough calls and runbooks of each outcome.
    await page.goto("/ui/trajectories")
    await expect(page.locator(f"#tr-{trajectory_id} .status")).to_have_text("cancelled")
    await _shots(browser, page, "list-all")
    assert watched.dialogs == [] and watched.errors == [], watched.errors
