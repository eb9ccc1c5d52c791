"""The Jetty-parity inputs and results end to end: the real claude-code in the real
local sandbox on a real stack, its model calls answered by the scripted Anthropic
fake, the CSV it summarises arriving as an entry of an uploaded zip
(``jetty.files`` + ``jetty.unzip``), its runbook read from an uploaded Markdown
file with front matter and a template variable, the agent inferred from the
model, the primary output listed first, and the whole run downloaded as one zip."""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from jetty_cli.testing import StackFactory, TestStack, call
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.scenario_claude_code import ReadSummarizeWrite, summarize_csv
from tests.helpers import anthropic_env, fake_anthropic_fixture

pytestmark = pytest.mark.timeout(300)

KEY = "sk-ant-parity-test"
MODEL = "claude-sonnet-4-6"
COLLECTION = "default"


anthropic = fake_anthropic_fixture(KEY)


@pytest.fixture(scope="module")
def parity(stack_factory: StackFactory, anthropic: FakeAnthropic) -> Iterator[TestStack]:
    stack = stack_factory(env=anthropic_env(anthropic, KEY))
    yield stack
    stack.close()


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


async def _get(stack: TestStack, path: str) -> tuple[int, bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            stack.base_url + path, headers={"Authorization": f"Bearer {stack.token}"}
        ) as response,
    ):
        return response.status, await response.read(), dict(response.headers)


async def test_a_zipped_input_a_stored_runbook_and_the_whole_run_as_a_zip(
    parity: TestStack, anthropic: FakeAnthropic
) -> None:
    rng = random.Random()
    text = "name,price,qty\n" + "".join(
        f"item{i},{rng.randint(1, 500)},{rng.randint(1, 9)}\n" for i in range(5)
    )
    anthropic.respond_with(MODEL, ReadSummarizeWrite("/workspace"))
    client = AsyncOpenAI(base_url=parity.base_url + "/v1", api_key=parity.token, max_retries=0)
    files = AsyncOpenAI(base_url=parity.base_url + "/api/v1", api_key=parity.token, max_retries=0)
    archive = await files.files.create(
        file=("inputs.zip", _zip({"data.csv": text.encode(), "notes/readme.txt": b"hi"})),
        purpose="user_data",
    )
    runbook = await files.files.create(
        file=(
            "summary.md",
            b"---\nprimary_outputs: [results/summary.md]\n---\n"
            b"Read uploads/data.csv and write {{ target }}.\n",
        ),
        purpose="user_data",
    )
    last: dict[str, Any] = {}
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Summarise the data."}],
        stream=True,
        timeout=240,
        extra_body={
            "jetty": {
                "runbook": True,
                "task": "parity",
                "files": [archive.id],
                "unzip": True,
                "runbook_path": runbook.id,
                "template_variables": {"target": "results/summary.md"},
            }
        },
    )
    async for chunk in stream:
        last = (chunk.model_extra or {}).get("jetty_metadata") or last
    await client.close()
    await files.close()

    assert last["status"] == "completed", last["error"]
    assert last["agent"] == "claude-code" and last["agent_source"] == "model"
    assert [a["path"] for a in last["primary_outputs"]] == ["results/summary.md"]
    # The agent saw the rendered runbook body, not its front matter or the braces.
    systems = [str(r.body.get("system")) for r in anthropic.requests]
    assert any("write results/summary.md" in s for s in systems)
    assert not any("{{ target }}" in s or "primary_outputs:" in s for s in systems)

    trajectory_id = last["trajectory_id"]
    status, _, view = call(parity.base_url + f"/api/v1/trajectories/{trajectory_id}", parity.token)
    assert status == 200, view
    assert [a["path"] for a in view["primary_outputs"]] == ["results/summary.md"]
    assert view["primary_outputs"][0]["url"].endswith("/artifacts/results/summary.md")
    placed = {i["path"] for i in view["runbook"]["inputs"]}
    assert placed == {"uploads/data.csv", "uploads/notes/readme.txt"}
    assert view["runbook"]["agent_source"] == "model"

    status, body, headers = await _get(parity, f"/api/v1/trajectories/{trajectory_id}/download")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(body)) as got:
        assert got.testzip() is None
        names = set(got.namelist())
        assert names == {a["path"] for a in view["artifacts"]}
        assert got.read("results/summary.md").decode() == summarize_csv(text)

    # Another id of the same shape: the last character changed, never to itself.
    unknown = trajectory_id[:-1] + ("y" if trajectory_id.endswith("x") else "x")
    status, _, _ = await _get(parity, f"/api/v1/trajectories/{unknown}/download")
    assert status == 404
    other = await parity.create_token("parity-other")
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            parity.base_url + f"/api/v1/trajectories/{trajectory_id}/download",
            headers={"Authorization": f"Bearer {other}"},
        ) as response,
    ):
        assert response.status == 404
