"""The OpenAI-style files API (``/api/v1/files``) with the official OpenAI SDK, and
what a runbook request takes from it — ``jetty.files``, ``jetty.unzip``,
``jetty.runbook_path``, front matter, template variables, the inferred agent —
checked at the gateway on a real stack. Its providers are configured (so models
route) but no agent is installed where its runner looks, so a run accepted here
fails at once without starting anything (tests/test_parity_runbook.py runs one)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from jetty_cli.testing import StackFactory, TestStack, call

COLLECTION = "default"


@pytest.fixture(scope="module")
def queued(stack_factory: StackFactory) -> TestStack:
    nowhere = "http://127.0.0.1:9"  # never called: no agent runs here
    return stack_factory(
        env={
            "JETTY_RUNBOOK_WAIT": "0",
            "JETTY_UNZIP_MAX_BYTES": "200000",
            "JETTY_RUNNER_AGENTS_DIR": "/nonexistent-agents",
            "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": nowhere,
            "OPENAI_API_KEY": "k", "OPENAI_BASE_URL": nowhere,
            "GEMINI_API_KEY": "k", "GEMINI_BASE_URL": nowhere,
        }
    )  # fmt: skip


@pytest.fixture
async def client(queued: TestStack) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(base_url=queued.base_url + "/api/v1", api_key=queued.token, max_retries=0)
    yield sdk
    await sdk.close()


def _zip(entries: dict[str, bytes], *, compress: bool = True) -> bytes:
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return out.getvalue()


def _runbook(**jetty: Any) -> dict[str, Any]:
    messages = jetty.pop("messages", None) or [
        {"role": "system", "content": "Summarise the CSV."},
        {"role": "user", "content": "Go."},
    ]
    return {
        "model": jetty.pop("model", "claude-sonnet-4-6"),
        "messages": messages,
        "jetty": {"runbook": True, "collection": COLLECTION, **jetty},
    }


def _post(stack: TestStack, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, doc = call(stack.base_url + "/v1/chat/completions", stack.token, body)
    return status, doc


async def test_the_openai_sdk_creates_lists_reads_and_deletes_files(
    queued: TestStack, client: AsyncOpenAI
) -> None:
    data = b"name,price\nwidget,3\n"
    created = await client.files.create(file=("data.csv", data, "text/csv"), purpose="user_data")
    assert created.id.startswith("file-") and created.object == "file"
    assert created.bytes == len(data) and created.filename == "data.csv"
    assert created.purpose == "user_data"

    listed = await client.files.list()
    assert created.id in [f.id for f in listed.data]
    only = await client.files.list(purpose="batch")
    assert created.id not in [f.id for f in only.data]
    assert (await client.files.retrieve(created.id)).model_dump() == created.model_dump()
    assert (await client.files.content(created.id)).read() == data

    deleted = await client.files.delete(created.id)
    assert deleted.id == created.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError) as missing:
        await client.files.retrieve(created.id)
    assert missing.value.body["param"] == "file_id"  # type: ignore[index]
    assert created.id not in [f.id for f in (await client.files.list()).data]


async def test_files_belong_to_their_collection(queued: TestStack, client: AsyncOpenAI) -> None:
    mine = await client.files.create(file=("mine.txt", b"mine"), purpose="user_data")
    other_token = await queued.create_token("other-files")
    other = AsyncOpenAI(base_url=queued.base_url + "/api/v1", api_key=other_token, max_retries=0)
    try:
        with pytest.raises(openai.NotFoundError):
            await other.files.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.files.delete(mine.id)
        assert mine.id not in [f.id for f in (await other.files.list()).data]
    finally:
        await other.close()
    assert (await client.files.retrieve(mine.id)).id == mine.id


async def test_bad_uploads_are_refused(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await client.files.create(file=("x.txt", b"x"), purpose="nonsense")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "purpose"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        await client.files.create(file=("../x.txt", b"x"), purpose="user_data")
    assert bad.value.body["code"] == "invalid_name"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        await client.files.content("file-" + "A" * 24)


async def test_unknown_file_ids_fail_the_run_naming_them(
    queued: TestStack, client: AsyncOpenAI
) -> None:
    known = await client.files.create(file=("data.csv", b"a,b\n1,2\n"), purpose="user_data")
    ghost1, ghost2 = "file-" + "x" * 24, "file-" + "y" * 24
    status, doc = _post(queued, _runbook(files=[known.id, ghost1, ghost2]))
    assert status == 400, doc
    error = doc["error"]
    assert error["param"] == "jetty.files" and error["code"] == "file_not_found"
    assert ghost1 in error["message"] and ghost2 in error["message"]
    assert known.id not in error["message"]
    status, doc = _post(queued, _runbook(files=["data.csv"]))
    assert status == 400 and doc["error"]["code"] == "invalid_file_id"


async def test_a_file_and_a_path_cannot_land_on_one_workspace_path(
    queued: TestStack, client: AsyncOpenAI
) -> None:
    one = await client.files.create(file=("twice.csv", b"1"), purpose="user_data")
    two = await client.files.create(file=("twice.csv", b"2"), purpose="user_data")
    status, doc = _post(queued, _runbook(files=[one.id, two.id]))
    assert status == 400 and doc["error"]["code"] == "duplicate_input", doc


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ({"../escape.txt": b"x"}, "unsafe_zip_entry"),
        ({"/etc/passwd": b"x"}, "unsafe_zip_entry"),
        ({"a/../../b.txt": b"x"}, "unsafe_zip_entry"),
        ({"ok.txt": b"x" * 300_000}, "zip_too_large"),  # past JETTY_UNZIP_MAX_BYTES
        ({"bomb.bin": b"\0" * 2_000_000}, "zip_too_large"),  # expands > 100x
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "too-large", "ratio"],
)
async def test_unsafe_or_oversized_zips_are_refused(
    queued: TestStack, client: AsyncOpenAI, entries: dict[str, bytes], code: str
) -> None:
    archive = await client.files.create(file=("in.zip", _zip(entries)), purpose="user_data")
    status, doc = _post(queued, _runbook(files=[archive.id], unzip=True))
    assert status == 400, doc
    assert doc["error"]["code"] == code and doc["error"]["param"] == "jetty.files[0]", doc


async def test_a_symlink_in_a_zip_is_refused(queued: TestStack, client: AsyncOpenAI) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    archive = await client.files.create(file=("l.zip", out.getvalue()), purpose="user_data")
    status, doc = _post(queued, _runbook(files=[archive.id], unzip=True))
    assert status == 400 and doc["error"]["code"] == "unsafe_zip_entry", doc
    broken = await client.files.create(file=("b.zip", b"PK not a zip"), purpose="user_data")
    status, doc = _post(queued, _runbook(files=[broken.id], unzip=True))
    assert status == 400 and doc["error"]["code"] == "invalid_zip", doc


async def test_a_runbook_file_with_front_matter_and_variables(
    queued: TestStack, client: AsyncOpenAI
) -> None:
    text = (
        "---\nagent: codex\ntimeout_s: 120\nprimary_outputs: [results/report.md]\n---\n"
        "Write a report on {{ topic }} for {{audience}}.\n"
    )
    stored = await client.files.create(file=("rb.md", text.encode()), purpose="user_data")
    variables = {"topic": "sales", "audience": "the board"}
    status, doc = _post(
        queued, _runbook(messages=[{"role": "user", "content": "Go."}], model="gpt-4o",
                         runbook_path=stored.id, template_variables=variables)
    )  # fmt: skip
    assert status == 202, doc  # the runner is stopped: queued
    meta = doc["jetty_metadata"]
    assert meta["agent"] == "codex" and meta["agent_source"] == "front_matter"
    view = _trajectory(queued, meta["trajectory_id"])
    assert view["runbook"]["primary_outputs"] == ["results/report.md"]
    assert view["runbook"]["timeout_s"] == 120
    assert view["runbook"]["runbook_path"] == stored.id

    # The request overrides the front matter.
    status, doc = _post(
        queued, _runbook(messages=[{"role": "user", "content": "Go."}], model="gpt-4o",
                         runbook_path=stored.id, template_variables=variables,
                         agent="claude-code", primary_outputs=["a.md"])
    )  # fmt: skip
    assert status == 202 and doc["jetty_metadata"]["agent"] == "claude-code"
    assert doc["jetty_metadata"]["agent_source"] == "request"

    status, doc = _post(queued, _runbook(runbook_path=stored.id, template_variables={"topic": "x"}))
    assert status == 400, doc
    assert doc["error"]["code"] == "missing_template_variable"
    assert doc["error"]["param"] == "jetty.template_variables"
    assert "audience" in doc["error"]["message"]


@pytest.mark.parametrize(
    ("front", "code"),
    [
        ("agent: aider\n", "invalid_front_matter"),
        ("agnet: codex\n", "invalid_front_matter"),
        ("timeout_s: [1\n", "invalid_front_matter"),
        ("- a list\n", "invalid_front_matter"),
    ],
)
def test_bad_front_matter_is_a_400(queued: TestStack, front: str, code: str) -> None:
    body = _runbook(messages=[{"role": "system", "content": f"---\n{front}---\nDo it.\n"}])
    status, doc = _post(queued, body)
    assert status == 400 and doc["error"]["code"] == code, doc
    assert doc["error"]["param"] == "messages"


@pytest.mark.parametrize(
    ("model", "agent"),
    [
        ("claude-sonnet-4-6", "claude-code"),
        ("anthropic/claude-haiku-4-5", "claude-code"),
        ("gpt-4o", "codex"),
        ("o3-mini", "codex"),
        ("gemini-2.5-pro", "gemini-cli"),
    ],
)
def test_the_agent_is_inferred_from_the_model(queued: TestStack, model: str, agent: str) -> None:
    status, doc = _post(queued, _runbook(model=model))
    assert status == 202, doc
    assert doc["jetty_metadata"]["agent"] == agent
    assert doc["jetty_metadata"]["agent_source"] == "model"


def test_a_model_that_names_no_agent_needs_one(queued: TestStack) -> None:
    status, doc = _post(queued, _runbook(model="mock/echo"))
    assert status == 400 and doc["error"]["param"] == "jetty.agent", doc
    assert "mock/echo" in doc["error"]["message"]


def test_missing_runbook_path_is_a_400(queued: TestStack) -> None:
    status, doc = _post(queued, _runbook(runbook_path="uploads/nope.md"))
    assert status == 400 and doc["error"]["param"] == "jetty.runbook_path", doc
    status, doc = _post(queued, _runbook(runbook_path="file-" + "z" * 24))
    assert status == 400 and doc["error"]["code"] == "file_not_found", doc


def _trajectory(stack: TestStack, trajectory_id: str) -> dict[str, Any]:
    status, _, view = call(stack.base_url + f"/api/v1/trajectories/{trajectory_id}", stack.token)
    assert status == 200, view
    assert isinstance(view, dict)
    return view
