"""File uploads on a real stack with a real S3-compatible server (nanio), read back
with the minio SDK."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from minio import Minio
from minio.error import S3Error

from jetty_cli.testing import StackFactory, TestStack

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def files_stack(stack_factory: StackFactory) -> TestStack:
    return stack_factory(env={"JETTY_MAX_UPLOAD_BYTES": str(LIMIT)})


def _minio(stack: TestStack) -> Minio:
    return Minio(
        stack.s3.endpoint,
        access_key=stack.s3.access_key,
        secret_key=stack.s3.secret_key,
        secure=False,
        region="us-east-1",
    )


def _read(stack: TestStack, key: str) -> bytes:
    response = _minio(stack).get_object("jetty", key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


async def _post(
    stack: TestStack,
    path: str,
    parts: list[tuple[str, bytes | str | AsyncIterator[bytes], str | None, str | None]],
    token: str | None = "",
) -> tuple[int, dict[str, object]]:
    """Multipart POST like ``curl -F``; a part is (field, value, filename, content type)."""
    form = aiohttp.FormData()
    for field, value, filename, content_type in parts:
        form.add_field(field, value, filename=filename, content_type=content_type)
    headers = {} if token is None else {"Authorization": f"Bearer {token or stack.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.base_url + path, data=form, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_upload_streams_into_the_store(files_stack: TestStack) -> None:
    data = b"city,temp\nOslo,3\n" * 1000
    status, body = await _post(
        files_stack,
        "/api/v1/files/upload",
        [
            ("collection", files_stack.collection, None, None),
            ("file", data, "weather.csv", "text/csv"),
        ],
    )
    assert status == 200, body
    assert body == {
        "path": "uploads/weather.csv",
        "collection": files_stack.collection,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "text/csv",
    }
    key = f"{files_stack.collection}/uploads/weather.csv"
    assert await asyncio.to_thread(_read, files_stack, key) == data
    stat = await asyncio.to_thread(_minio(files_stack).stat_object, "jetty", key)
    assert stat.content_type == "text/csv"


async def test_reupload_replaces(files_stack: TestStack) -> None:
    for content in (b"first version", b"second"):
        status, body = await _post(
            files_stack, "/api/v1/files/upload", [("file", content, "notes.txt", None)]
        )
        assert status == 200, body
        assert body["size"] == len(content)
        assert body["content_type"] == "application/octet-stream"
    key = f"{files_stack.collection}/uploads/notes.txt"
    assert await asyncio.to_thread(_read, files_stack, key) == b"second"


async def test_over_the_limit_is_413_and_leaves_nothing(files_stack: TestStack) -> None:
    status, body = await _post(
        files_stack,
        "/api/v1/files/upload",
        [("file", os.urandom(LIMIT + 1), "big.bin", "application/octet-stream")],
    )
    assert status == 413
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "file_too_large"
    assert error["type"] == "invalid_request_error"
    with pytest.raises(S3Error) as caught:
        await asyncio.to_thread(
            _minio(files_stack).stat_object, "jetty", f"{files_stack.collection}/uploads/big.bin"
        )
    assert caught.value.code == "NoSuchKey"
    # Exactly the limit is fine.
    status, body = await _post(
        files_stack, "/api/v1/files/upload", [("file", b"x" * LIMIT, "edge.bin", None)]
    )
    assert status == 200, body
    assert body["size"] == LIMIT


async def _post_raw(stack: TestStack, filename: bytes) -> tuple[int, dict[str, object]]:
    """A multipart body written by hand, as curl sends it: the filename unescaped."""
    boundary = "jettyboundary42"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        + b"Content-Type: text/plain\r\n\r\nx\r\n"
        + f"--{boundary}--\r\n".encode()
    )  # fmt: skip
    headers = {
        "Authorization": f"Bearer {stack.token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.base_url + "/api/v1/files/upload", data=body, headers=headers) as r,
    ):
        return r.status, await r.json()


UNSAFE = ["../escape.txt", "/etc/passwd", "a/../../b", "..", ".", "dir\\file", "", " ", "x\u202e"]


@pytest.mark.parametrize("name", UNSAFE)
async def test_unsafe_names_are_400(files_stack: TestStack, name: str) -> None:
    # aiohttp percent-escapes the name ("../x" goes out as "..%2Fx").
    status, body = await _post(files_stack, "/api/v1/files/upload", [("file", b"x", name, None)])
    assert status == 400, body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["type"] == "invalid_request_error"
    objects = await asyncio.to_thread(
        lambda: list(_minio(files_stack).list_objects("jetty", recursive=True))
    )
    assert all("escape" not in str(o.object_name) for o in objects)
    assert all("passwd" not in str(o.object_name) for o in objects)


@pytest.mark.parametrize(
    "raw", [b"../escape.txt", b"/etc/passwd", b"tab\tname", b"bell\x07", b"%2e%2e%2fescape", b"%ff"]
)
async def test_unsafe_raw_names_are_400(files_stack: TestStack, raw: bytes) -> None:
    status, body = await _post_raw(files_stack, raw)
    assert status == 400, body
    error = body["error"]
    assert isinstance(error, dict)
    # aiohttp refuses most control characters while parsing the part's headers.
    assert error["code"] in ("invalid_name", "invalid_multipart")


async def test_unusual_but_safe_names(files_stack: TestStack) -> None:
    for name in ("100%.txt", "résumé 2024.csv", ".hidden", "a b+c&d=e?.txt"):
        status, body = await _post(
            files_stack, "/api/v1/files/upload", [("file", name.encode(), name, None)]
        )
        assert status == 200, (name, body)
        assert body["path"] == f"uploads/{name}"
        key = f"{files_stack.collection}/uploads/{name}"
        assert await asyncio.to_thread(_read, files_stack, key) == name.encode()


async def test_another_collection_is_403(files_stack: TestStack) -> None:
    status, body = await _post(
        files_stack,
        "/api/v1/files/upload",
        [("collection", "someone-else", None, None), ("file", b"x", "x.txt", None)],
    )
    assert status == 403, body
    error = body["error"]
    assert isinstance(error, dict)
    assert error["code"] == "collection_forbidden"


async def test_collection_after_the_file_is_checked_too(files_stack: TestStack) -> None:
    status, _ = await _post(
        files_stack,
        "/api/v1/files/upload",
        [("file", b"x", "late.txt", None), ("collection", "someone-else", None, None)],
    )
    assert status == 403
    with pytest.raises(S3Error):
        await asyncio.to_thread(
            _minio(files_stack).stat_object, "jetty", f"{files_stack.collection}/uploads/late.txt"
        )


async def test_missing_or_bad_token_is_401(files_stack: TestStack) -> None:
    parts: list[tuple[str, bytes | str, str | None, str | None]] = [("file", b"x", "x.txt", None)]
    status, body = await _post(files_stack, "/api/v1/files/upload", parts, token=None)
    assert status == 401
    assert isinstance(body["error"], dict)
    status, _ = await _post(files_stack, "/api/v1/files/upload", parts, token="not-a-token")
    assert status == 401


async def test_missing_file_part_is_400(files_stack: TestStack) -> None:
    status, body = await _post(
        files_stack, "/api/v1/files/upload", [("collection", files_stack.collection, None, None)]
    )
    assert status == 400, body


async def test_sandbox_upload_takes_several_files(files_stack: TestStack) -> None:
    one, two = b"alpha\n", b'{"b": 2}'
    status, body = await _post(
        files_stack,
        "/api/v1/sandbox/upload",
        [
            ("files", one, "one.txt", "text/plain"),
            ("files", two, "two.json", "application/json"),
        ],
    )
    assert status == 200, body
    assert body == {
        "files": [
            {
                "path": "uploads/one.txt",
                "collection": files_stack.collection,
                "size": len(one),
                "sha256": hashlib.sha256(one).hexdigest(),
                "content_type": "text/plain",
            },
            {
                "path": "uploads/two.json",
                "collection": files_stack.collection,
                "size": len(two),
                "sha256": hashlib.sha256(two).hexdigest(),
                "content_type": "application/json",
            },
        ]
    }
    for name, content in (("one.txt", one), ("two.json", two)):
        key = f"{files_stack.collection}/uploads/{name}"
        assert await asyncio.to_thread(_read, files_stack, key) == content


BIG_LIMIT = 8 * 1024 * 1024


async def _generated(size: int, digest: hashlib._Hash) -> AsyncIterator[bytes]:
    """``size`` bytes produced piecemeal, so the client does not hold them either."""
    block = os.urandom(64 * 1024)
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        digest.update(piece)
        sent += len(piece)
        yield piece


async def test_large_files_go_up_in_parts(stack_factory: StackFactory) -> None:
    stack = stack_factory(env={"JETTY_MAX_UPLOAD_BYTES": str(BIG_LIMIT)})
    try:
        size = 7 * 1024 * 1024 + 123  # two S3 parts (5 MiB each at most)
        digest = hashlib.sha256()
        status, body = await _post(
            stack, "/api/v1/files/upload", [("file", _generated(size, digest), "big.bin", None)]
        )
        assert status == 200, body
        assert body["size"] == size
        assert body["sha256"] == digest.hexdigest()
        key = f"{stack.collection}/uploads/big.bin"
        assert hashlib.sha256(await asyncio.to_thread(_read, stack, key)).hexdigest() == (
            digest.hexdigest()
        )

        # Past the limit after a first part went up: the multipart upload is
        # aborted and the earlier big.bin stays as it was.
        status, body = await _post(
            stack,
            "/api/v1/files/upload",
            [("file", _generated(BIG_LIMIT + 1, hashlib.sha256()), "big.bin", None)],
        )
        assert status == 413, body
        stat = await asyncio.to_thread(_minio(stack).stat_object, "jetty", key)
        assert stat.size == size
        uploads = await asyncio.to_thread(
            lambda: list(_minio(stack).list_objects("jetty", recursive=True))
        )
        assert [o.object_name for o in uploads] == [key]
    finally:
        stack.close()
