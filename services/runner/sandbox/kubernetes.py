"""The ``kubernetes`` sandbox backend: one ``batch/v1`` Job per run.

``start`` presigns the inputs (GET) and one outputs archive (PUT), puts them with
the agent's command in a per-run Secret, creates the Job (rendered by
:mod:`.k8s_manifests`) and makes the Job the Secret's owner. ``lines`` waits for
the Job's pod and follows its log; ``wait`` watches the Job to its end and reads
the container's exit code and the summary that ``podentry`` left in its
termination message; ``collect_outputs`` unpacks the archive the pod uploaded into
the run's artifact prefix (checking every name and size: the pod is not trusted);
``kill`` and ``destroy`` delete the Job (and the Secret).

The official client is synchronous: each call runs in a worker thread with an
explicit request timeout; watches are server-bounded (``timeoutSeconds``) and
resumed from the last resourceVersion, so no thread outlives its use by long.

Every API or object-store failure surfaces as :class:`SandboxError` with the
verb, the object and the API's own message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import mimetypes
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import IO, Any, BinaryIO, cast

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from minio.error import MinioException

from services.runner.sandbox import k8s_manifests as manifests
from services.runner.sandbox.base import (
    ArtifactError,
    OutputFile,
    SandboxError,
    SandboxExit,
    SandboxLayout,
    SandboxSpec,
)
from services.runner.sandbox.k8s_api import (
    KubeApi,
    KubernetesSettings,
    api_client_from_settings,
    api_message,
)
from services.runner.sandbox.podentry import CONFIG_VERSION, PodEntryError, safe_relative
from shared.objectstore import ObjectStore, ObjectStoreError

_MAX_OUTPUT_FILES = 10_000


@dataclass(frozen=True, slots=True)
class _JobEnd:
    condition: str  # Complete | Failed | Deleted
    reason: str = ""
    message: str = ""


def _job_end(event_type: str, job: Any) -> _JobEnd | None:
    if event_type == "DELETED":
        return _JobEnd("Deleted")
    status = job.status
    for cond in (status.conditions if status else None) or []:
        if cond.type in ("Complete", "Failed") and cond.status == "True":
            return _JobEnd(cond.type, cond.reason or "", cond.message or "")
    return None


# Waiting reasons a pod does not recover from by itself: its run fails now
# instead of sitting in Pending until the Job's deadline.
_CANNOT_START = frozenset(
    {
        "ErrImageNeverPull",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _cannot_start(pod: Any) -> str | None:
    """``"<reason>: <message>"`` when the pod's container cannot start."""
    for status in (pod.status.container_statuses if pod.status else None) or []:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason in _CANNOT_START:
            return f"{waiting.reason}: {waiting.message or ''}".strip().rstrip(":")
    return None


def _started_pod(event_type: str, pod: Any) -> Any | None:
    """A pod whose container has started (or already ended), or one that cannot
    start: its log can be read, or its run fails at once."""
    if event_type == "DELETED":
        return None
    phase = pod.status.phase if pod.status else None
    if phase in ("Running", "Succeeded", "Failed") or _cannot_start(pod):
        return pod
    return None


class KubernetesSandbox:
    def __init__(
        self,
        backend: KubernetesSandboxBackend,
        spec: SandboxSpec,
        job: str,
        secret: str,
        archive_key: str,
    ) -> None:
        self._backend = backend
        self._api = backend.api
        self._spec = spec
        self.sandbox_id = job
        self.artifact_errors: list[ArtifactError] = []
        self._job = job
        self._secret = secret
        self._archive_key = archive_key
        self._killed = False
        self._stop = threading.Event()
        self._watches: set[threading.Event] = set()
        self._exit: SandboxExit | None = None

    # --- the agent's output -------------------------------------------------------

    def _pod_selector(self) -> str:
        return f"{manifests.JOB_NAME_LABEL}={self._job}"

    def _stopper(self) -> threading.Event:
        """An event that ends one watch thread (set when its caller is done, or
        by :meth:`destroy`)."""
        event = threading.Event()
        if self._stop.is_set():
            event.set()
        self._watches.add(event)
        return event

    def _done(self, event: threading.Event) -> None:
        event.set()
        self._watches.discard(event)

    async def _started(self) -> Any | None:
        """The Job's pod once its container started; None if the Job ended (or
        was deleted) without one."""
        api = self._api
        stop = self._stopper()
        pod_task = asyncio.create_task(
            api.call(
                f"watch pods of Job {self._job}",
                lambda: api.watch_until(
                    api.core.list_namespaced_pod,
                    _started_pod,
                    stop,
                    label_selector=self._pod_selector(),
                ),
            )
        )
        end_task = asyncio.create_task(self._job_ended())
        try:
            done, _ = await asyncio.wait({pod_task, end_task}, return_when="FIRST_COMPLETED")
            if pod_task in done:
                return pod_task.result()
            end_task.result()
            # Ended: a pod that ran (even briefly) still has its log.
            pods = await api.call(
                f"list pods of Job {self._job}",
                lambda: api.core.list_namespaced_pod(
                    api.ns, label_selector=self._pod_selector(), _request_timeout=api.timeout
                ),
            )
            items = [p for p in (pods.items if pods else None) or [] if _started_pod("", p)]
            return items[0] if items else None
        finally:
            self._done(stop)
            for task in (pod_task, end_task):
                task.cancel()
            await asyncio.gather(pod_task, end_task, return_exceptions=True)

    async def lines(self) -> AsyncIterator[str]:
        pod = await self._started()
        if pod is None:
            return
        reason = _cannot_start(pod)
        if reason is not None and (pod.status.phase or "Pending") == "Pending":
            self._killed = True
            await self._api.delete_job(self._job)
            raise SandboxError(f"the pod of Job {self._job} cannot start: {reason}")
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        api = self._api
        name = pod.metadata.name
        # Quiet stretches (the agent thinking) are normal: bounded by the Job's deadline.
        read_timeout = self._backend.deadline(self._spec)
        response: list[Any] = []

        def follow() -> None:
            try:
                resp = api.core.read_namespaced_pod_log(
                    name,
                    api.ns,
                    container=manifests.CONTAINER,
                    follow=True,
                    _preload_content=False,
                    _request_timeout=(api.timeout, float(read_timeout)),
                )
                response.append(resp)
                for raw in _iter_lines(resp):
                    loop.call_soon_threadsafe(queue.put_nowait, raw)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        thread = threading.Thread(target=follow, name=f"log-{name}", daemon=True)
        thread.start()
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, ApiException):
                    raise SandboxError(f"kubernetes API: logs of pod {name}: {api_message(item)}")
                if isinstance(item, BaseException):
                    if self._killed:
                        return  # the pod went with the Job
                    raise SandboxError(f"kubernetes API: logs of pod {name}: {item}") from item
                if item.startswith("o "):
                    yield item[2:]
        finally:
            if thread.is_alive():  # we stopped early: unblock the thread's read
                for resp in response:
                    with contextlib.suppress(ValueError, RuntimeError, OSError):
                        resp.shutdown()
            for resp in response:
                resp.release_conn()

    # --- the end --------------------------------------------------------------------

    async def _job_ended(self) -> _JobEnd:
        api = self._api
        stop = self._stopper()
        try:
            end = await api.call(
                f"watch Job {self._job}",
                lambda: api.watch_until(
                    api.batch.list_namespaced_job,
                    _job_end,
                    stop,
                    absent=_JobEnd("Deleted"),
                    field_selector=f"metadata.name={self._job}",
                ),
            )
        finally:
            self._done(stop)
        # A Job that is gone from the list is as good as deleted.
        return end or _JobEnd("Deleted")

    async def wait(self) -> SandboxExit:
        if self._exit is not None:
            return self._exit
        end = await self._job_ended()
        if end.condition == "Deleted" or self._killed:
            self._exit = SandboxExit(exit_code=None, killed=True)
            return self._exit
        summary, code = await self._container_end()
        tail = str(summary.get("stderr_tail") or "")
        if summary.get("error"):
            tail = (tail + "\n" if tail else "") + f"sandbox: {summary['error']}"
        deadline = end.condition == "Failed" and end.reason == "DeadlineExceeded"
        if deadline or summary.get("timed_out"):
            self._exit = SandboxExit(exit_code=None, timed_out=True, stderr_tail=tail)
        else:
            if code is None and end.condition == "Complete":
                code = 0
            if code is None:
                tail = tail or f"the Job failed: {end.reason} {end.message}".strip()
            self._exit = SandboxExit(exit_code=code, stderr_tail=tail)
        return self._exit

    async def _container_end(self) -> tuple[dict[str, Any], int | None]:
        """podentry's summary (termination message) and the container's exit code."""
        api = self._api
        pods = await api.call(
            f"list pods of Job {self._job}",
            lambda: api.core.list_namespaced_pod(
                api.ns, label_selector=self._pod_selector(), _request_timeout=api.timeout
            ),
        )
        for pod in (pods.items if pods else None) or []:
            for status in (pod.status.container_statuses if pod.status else None) or []:
                terminated = status.state.terminated if status.state else None
                if status.name != manifests.CONTAINER or terminated is None:
                    continue
                summary: dict[str, Any] = {}
                try:
                    parsed = json.loads(terminated.message or "{}")
                    summary = parsed if isinstance(parsed, dict) else {}
                except ValueError:
                    summary = {"stderr_tail": terminated.message or ""}
                code = summary.get("exit_code")
                if not isinstance(code, int) or summary.get("error"):
                    code = terminated.exit_code
                return summary, code
        return {}, None

    async def kill(self) -> None:
        if self._killed:
            return
        self._killed = True
        await self._api.delete_job(self._job)

    # --- results ----------------------------------------------------------------------

    async def collect_outputs(self) -> list[OutputFile]:
        return await self._backend.unpack_outputs(self._archive_key, self._spec)

    async def destroy(self) -> None:
        self._stop.set()
        for event in list(self._watches):
            event.set()
        await self._api.delete_job(self._job)
        await self._api.delete_secret(self._secret)
        await self._backend.remove_archive(self._archive_key)


def _iter_lines(resp: Any) -> Iterator[str]:
    """Lines of a streamed urllib3 response (a line may span chunks)."""
    pending = b""
    for chunk in resp.stream(64 * 1024, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace").rstrip("\r")


class _Hashing:
    """A blocking reader that counts and hashes what the SDK reads through it."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


class KubernetesSandboxBackend:
    name = "kubernetes"

    def __init__(
        self, settings: KubernetesSettings, store: ObjectStore, api_client: k8s.ApiClient
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = KubeApi(api_client, settings)
        self._api_client = api_client
        self.layout = SandboxLayout(
            workspace="/workspace",
            home="/home/agent",
            agents_dir="/opt/agents",
            gateway_url=settings.gateway_url.rstrip("/"),
        )

    @classmethod
    def from_settings(
        cls, settings: KubernetesSettings, store: ObjectStore
    ) -> KubernetesSandboxBackend:
        return cls(settings, store, api_client_from_settings(settings))

    def archive_key(self, spec: SandboxSpec) -> str:
        """Where the pod's outputs archive goes: beside, never inside, the artifacts."""
        return f"{spec.collection}/.sandbox/{spec.trajectory_id}/outputs.tar.gz"

    def deadline(self, spec: SandboxSpec) -> int:
        return math.ceil(spec.limits.timeout_s) + self.settings.deadline_margin_s

    async def _presign(self, spec: SandboxSpec, archive_key: str) -> dict[str, Any]:
        expires = timedelta(seconds=self.deadline(spec) + 60)
        client, bucket = self.store.client, self.store.bucket

        def sign() -> dict[str, Any]:
            inputs = [
                {
                    "path": f.path,
                    "url": client.presigned_get_object(bucket, f.key, expires=expires),
                }
                for f in spec.inputs
            ]
            put = client.presigned_put_object(bucket, archive_key, expires=expires)
            return {"inputs": inputs, "output": put}

        try:
            return await asyncio.to_thread(sign)
        except (MinioException, ValueError) as exc:
            raise SandboxError(f"object store: presigning the run's URLs: {exc}") from exc

    def run_config(self, spec: SandboxSpec, urls: dict[str, Any]) -> dict[str, Any]:
        cmd = spec.command
        return {
            "v": CONFIG_VERSION,
            "argv": list(cmd.argv),
            "env": dict(cmd.env),
            "home_files": {k: base64.b64encode(v).decode() for k, v in cmd.home_files.items()},
            "stdin": base64.b64encode(cmd.stdin).decode() if cmd.stdin is not None else None,
            "inputs": urls["inputs"],
            "output": {"url": urls["output"], "max_bytes": self.settings.max_outputs_mb << 20},
            "timeout_s": spec.limits.timeout_s,
            "limits": {
                "max_processes": spec.limits.max_processes,
                "cpu_seconds": spec.limits.cpu_seconds,
                "max_file_mb": spec.limits.max_file_mb,
            },
        }

    def job_manifest(self, spec: SandboxSpec) -> dict[str, Any]:
        s = self.settings
        name = manifests.job_name(spec.trajectory_id)
        return manifests.render_job(
            manifests.JobParams(
                name=name,
                namespace=s.namespace,
                image=s.sandbox_image,
                image_pull_policy=s.image_pull_policy,
                trajectory_id=spec.trajectory_id,
                collection=spec.collection,
                task=spec.task,
                secret=manifests.secret_name(name),
                active_deadline_s=self.deadline(spec),
                ttl_after_finished_s=s.ttl_seconds_after_finished,
                service_account=s.service_account,
                cpu_request=s.cpu_request,
                cpu_limit=s.cpu_limit
                if spec.limits.cpus is None
                else f"{round(spec.limits.cpus * 1000)}m",
                memory_request=s.memory_request,
                memory_limit=f"{spec.limits.memory_mb}Mi",
                workspace=self.layout.workspace,
                home=self.layout.home,
                workspace_size=s.workspace_size,
                ephemeral_storage_limit=s.ephemeral_storage_limit
                if spec.limits.disk_mb is None
                else f"{spec.limits.disk_mb}Mi",
                runtime_class=s.runtime_class,
                host_network=s.host_network,
                extra_labels=spec.labels,
            )
        )

    async def open(self) -> None:
        pass  # Jobs left by a runner end by their own deadline and TTL

    async def start(self, spec: SandboxSpec) -> KubernetesSandbox:
        api = self.api
        job = self.job_manifest(spec)
        name = job["metadata"]["name"]
        secret = manifests.secret_name(name)
        archive_key = self.archive_key(spec)
        config = self.run_config(spec, await self._presign(spec, archive_key))
        secret_body = manifests.render_run_secret(
            secret,
            api.ns,
            job["metadata"]["labels"],
            base64.b64encode(json.dumps(config).encode()).decode(),
        )
        secret_model = k8s.V1Secret.from_dict(secret_body)
        job_model = k8s.V1Job.from_dict(job)
        if secret_model is None or job_model is None:
            raise SandboxError("the rendered Job or Secret did not load as a client model")
        await api.call(
            f"create Secret {secret} in namespace {api.ns}",
            lambda: api.core.create_namespaced_secret(
                api.ns, secret_model, _request_timeout=api.timeout
            ),
        )
        try:
            created = await api.call(
                f"create Job {name} in namespace {api.ns}",
                lambda: api.batch.create_namespaced_job(
                    api.ns, job_model, _request_timeout=api.timeout
                ),
            )
            uid = created.metadata.uid if created and created.metadata else None
            if uid:
                owner = {"metadata": {"ownerReferences": [manifests.owner_reference(name, uid)]}}
                await api.call(
                    f"set the owner of Secret {secret}",
                    lambda: api.core.patch_namespaced_secret(
                        secret, api.ns, owner, _request_timeout=api.timeout
                    ),
                )
        except SandboxError:
            await api.delete_job(name)
            await api.delete_secret(secret)
            raise
        return KubernetesSandbox(self, spec, name, secret, archive_key)

    async def unpack_outputs(self, archive_key: str, spec: SandboxSpec) -> list[OutputFile]:
        """The pod's archive, checked member by member, stored under the run's
        artifact prefix. No archive: the pod produced none (killed, failed early)."""
        if await self._stat(archive_key) is None:
            return []
        prefix = (
            spec.artifact_prefix
            if spec.artifact_prefix.endswith("/")
            else spec.artifact_prefix + "/"
        )
        max_file = spec.limits.max_file_mb << 20
        client, bucket = self.store.client, self.store.bucket

        def unpack() -> list[OutputFile]:
            response = client.get_object(bucket, archive_key)
            out: list[OutputFile] = []
            try:
                with tarfile.open(fileobj=response, mode="r|gz") as tar:
                    for member in tar:
                        if not member.isreg():
                            continue  # the pod only packs regular files
                        rel = safe_relative(member.name).as_posix()
                        if member.size > max_file:
                            raise PodEntryError(f"output {rel} is larger than {max_file} bytes")
                        if len(out) >= _MAX_OUTPUT_FILES:
                            raise PodEntryError(f"more than {_MAX_OUTPUT_FILES} output files")
                        source = tar.extractfile(member)
                        if source is None:
                            continue
                        reader = _Hashing(source)
                        ctype = mimetypes.guess_type(rel)[0] or "application/octet-stream"
                        key = prefix + rel
                        client.put_object(
                            bucket, key, cast(BinaryIO, reader), member.size, content_type=ctype
                        )
                        out.append(
                            OutputFile(rel, key, reader.size, reader.digest.hexdigest(), ctype)
                        )
            finally:
                response.close()
                response.release_conn()
            return out

        try:
            return await asyncio.to_thread(unpack)
        except (PodEntryError, tarfile.TarError, EOFError) as exc:
            raise SandboxError(f"the sandbox's outputs archive was refused: {exc}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise SandboxError(f"object store: storing the sandbox's outputs: {exc}") from exc

    async def _stat(self, key: str) -> object | None:
        try:
            return await self.store.stat(key)
        except ObjectStoreError as exc:
            raise SandboxError(f"object store: {exc}") from exc

    async def remove_archive(self, key: str) -> None:
        try:
            await self.store.remove(key)
        except ObjectStoreError as exc:
            raise SandboxError(f"object store: removing {key}: {exc}") from exc

    async def close(self) -> None:
        await asyncio.to_thread(self._api_client.close)
