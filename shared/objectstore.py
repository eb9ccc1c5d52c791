"""Thin typed adapter over the S3-compatible object store (the ``minio`` SDK).

The SDK is synchronous: every call runs in a worker thread with the explicit
timeouts and bounded retries of the HTTP pool built here. :meth:`ObjectStore.put_stream`
uploads from an async iterator of chunks without holding the whole object in
memory (at most one multipart part, :data:`PART_SIZE`, is buffered by the SDK),
hashing and counting on the way.

Exception tree::

    ObjectStoreError           the store failed or is unreachable
     └── ObjectTooLarge        a stream went past its size limit (nothing was stored)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from shared.settings import CommonSettings

# S3's smallest multipart part; also the most the SDK buffers per upload.
PART_SIZE = 5 * 1024 * 1024

T = TypeVar("T")


class ObjectStoreError(Exception):
    pass


class ObjectTooLarge(ObjectStoreError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"object larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    content_type: str
    etag: str
    last_modified: datetime | None


class _ChunkReader:
    """A blocking ``read(n)`` (what the SDK wants) fed from an async iterator on
    the event loop; it runs in the SDK's worker thread."""

    def __init__(
        self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop, timeout: float
    ) -> None:
        self._chunks = chunks
        self._loop = loop
        self._timeout = timeout
        self._pending = b""
        self._done = False

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    def read(self, size: int = -1) -> bytes:
        while not self._pending and not self._done:
            future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            try:
                chunk = future.result(self._timeout)
            except TimeoutError:  # the client went quiet: stop waiting for it
                future.cancel()
                raise
            if chunk is None:
                self._done = True
            else:
                self._pending = chunk
        if size < 0 or size >= len(self._pending):
            data, self._pending = self._pending, b""
        else:
            data, self._pending = self._pending[:size], self._pending[size:]
        return data


class ObjectStore:
    def __init__(
        self, client: Minio, bucket: str, timeout: float = 30.0, signer: Minio | None = None
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.timeout = timeout
        # Signs URLs for clients outside (its endpoint is the one they reach); signing
        # is local computation, it never connects.
        self.signer = signer or client

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> ObjectStore:
        timeout = settings.s3_timeout
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            maxsize=10,
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
        )
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        signer = None
        public = settings.s3_public_endpoint
        if public and public != settings.s3_endpoint:
            scheme, _, host = public.rpartition("://")
            signer = Minio(
                host,
                access_key=settings.s3_access_key,
                secret_key=settings.s3_secret_key,
                secure=scheme == "https" if scheme else settings.s3_secure,
                region=settings.s3_region,
            )
        return cls(client, settings.s3_bucket, timeout, signer)

    def presigned_get(self, key: str, ttl: timedelta) -> str:
        """A URL anyone holding it can GET ``key`` with, until ``ttl`` has passed."""
        return self.signer.presigned_get_object(self.bucket, key, expires=ttl)

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), self.timeout * 2)
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ObjectStoreError(f"object store: {exc}") from exc

    async def ensure_bucket(self) -> None:
        def make() -> None:
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket)
                except S3Error as exc:  # created concurrently by another process
                    if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

        await self._call(make)

    async def ensure_bucket_retrying(self, log: logging.Logger, max_delay: float = 5.0) -> None:
        """:meth:`ensure_bucket`, retried until the store answers (what a service
        calls at start: the store may come up after it)."""
        delay = 0.2
        while True:
            try:
                await self.ensure_bucket()
                return
            except ObjectStoreError as exc:
                log.warning("object store not ready (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        content_type: str,
        limit: int,
    ) -> StoredObject:
        """Store ``chunks`` under ``key`` (replacing what is there). Past ``limit``
        bytes: :class:`ObjectTooLarge`, and the SDK aborts its multipart upload, so
        neither a partial object nor the replacement of the old one happens."""
        digest = hashlib.sha256()
        size = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal size
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise ObjectTooLarge(limit)
                digest.update(chunk)
                yield chunk

        reader = _ChunkReader(counted(), asyncio.get_running_loop(), self.timeout)

        def put() -> None:
            self.client.put_object(
                # The SDK only calls read(n) on it.
                self.bucket, key, cast(BinaryIO, reader), length=-1, part_size=PART_SIZE,
                content_type=content_type,
            )  # fmt: skip

        # No overall wait_for here: an upload takes as long as the client sends;
        # each read of the client and each call to the store has its own timeout.
        try:
            await asyncio.to_thread(put)
        except ObjectTooLarge:
            raise
        except (MinioException, urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
            raise ObjectStoreError(f"object store: {exc}") from exc
        return StoredObject(key, size, digest.hexdigest(), content_type)

    async def stat(self, key: str) -> ObjectInfo | None:
        def stat() -> ObjectInfo | None:
            try:
                info = self.client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                    return None
                raise
            return ObjectInfo(
                key=key,
                size=info.size or 0,
                content_type=info.content_type or "application/octet-stream",
                etag=info.etag or "",
                last_modified=info.last_modified,
            )

        return await self._call(stat)

    async def get(self, key: str) -> bytes:
        """The whole object (for small objects; large ones want a presigned URL)."""

        def get() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call(get)

    async def iter_chunks(self, key: str, chunk_size: int = 256 * 1024) -> AsyncIterator[bytes]:
        """The object's bytes in pieces, read in a thread as they are consumed (never
        the whole object in memory). Raises :class:`ObjectStoreError` on the first
        piece if the object cannot be read."""
        response = await self._call(lambda: self.client.get_object(self.bucket, key))
        try:
            while True:
                chunk = await self._call(lambda: response.read(chunk_size))
                if not chunk:
                    return
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def get_to_file(self, key: str, path: Path, *, limit: int | None = None) -> int:
        """Stream the object into a new file at ``path`` (never held in memory);
        returns its size. Past ``limit`` bytes: :class:`ObjectTooLarge` (the partial
        file is removed)."""

        def get() -> int:
            response = self.client.get_object(self.bucket, key)
            size = 0
            try:
                with open(path, "xb") as fh:
                    try:
                        for chunk in response.stream(256 * 1024):
                            size += len(chunk)
                            if limit is not None and size > limit:
                                raise ObjectTooLarge(limit)
                            fh.write(chunk)
                    except BaseException:
                        path.unlink(missing_ok=True)
                        raise
            finally:
                response.close()
                response.release_conn()
            return size

        # No overall wait_for (a large object takes as long as it takes): every
        # read has the HTTP pool's timeout.
        try:
            return await asyncio.to_thread(get)
        except ObjectTooLarge:
            raise
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ObjectStoreError(f"object store: {exc}") from exc

    async def remove(self, key: str) -> None:
        await self._call(lambda: self.client.remove_object(self.bucket, key))
