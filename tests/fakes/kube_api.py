"""A local fake of exactly the Kubernetes API calls the ``kubernetes`` sandbox
backend makes, speaking the real wire format.

Served (JSON objects with apiVersion/kind/metadata, ``Status`` objects for
errors, ``resourceVersion`` on everything):

* ``POST/PATCH/DELETE /api/v1/namespaces/{ns}/secrets[/{name}]``
* ``POST/DELETE /apis/batch/v1/namespaces/{ns}/jobs[/{name}]``
* ``GET /apis/batch/v1/namespaces/{ns}/jobs`` and ``GET /api/v1/namespaces/{ns}/pods``:
  a list, or with ``watch=true`` newline-delimited ``{"type", "object"}`` events
  from ``resourceVersion`` on, closed after ``timeoutSeconds``; ``fieldSelector``
  ``metadata.name=…`` and equality ``labelSelector``s
* ``GET /api/v1/namespaces/{ns}/pods/{name}/log`` (``follow=true`` streams until the
  container ends or the pod goes; 400 while the container is still waiting)

Creating a Job creates its pod (``Pending``) as the Job controller would, with the
``job-name``/``controller-uid`` labels; deleting a Job deletes its pods. What the
pod then does is the test's: :meth:`FakeKubeApi.run_pod` (scripted lines, exit
code, termination message), :meth:`FakeKubeApi.exceed_deadline`, or a
:class:`LocalKubelet` that runs the real ``podentry.py`` as a local process.
:attr:`FakeKubeApi.faults` makes a verb answer with an error ``Status``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import secrets
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

Obj = dict[str, Any]

_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "AlreadyExists",
    500: "InternalError",
}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_object(code: int, message: str, name: str = "", kind: str = "") -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": _REASONS.get(code, "Unknown") if code >= 400 else "",
        "details": {"name": name, "kind": kind},
        "code": code,
    }


def _error(code: int, message: str, name: str = "", kind: str = "") -> web.Response:
    return web.json_response(status_object(code, message, name, kind), status=code)


def _matches(obj: Obj, field_selector: str | None, label_selector: str | None) -> bool:
    meta = obj.get("metadata", {})
    for clause in filter(None, (field_selector or "").split(",")):
        key, _, value = clause.partition("=")
        if key == "metadata.name" and meta.get("name") != value.lstrip("="):
            return False
    labels = meta.get("labels") or {}
    for clause in filter(None, (label_selector or "").split(",")):
        key, _, value = clause.partition("=")
        if labels.get(key) != value.lstrip("="):
            return False
    return True


class FakeKubeApi:
    def __init__(self) -> None:
        #: (plural, namespace, name) -> object
        self.objects: dict[tuple[str, str, str], Obj] = {}
        #: (resourceVersion, plural, event type, object snapshot)
        self.history: list[tuple[int, str, str, Obj]] = []
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        #: verb ("create-job", "delete-job", "list-pods", …) -> (status code, message)
        self.faults: dict[str, tuple[int, str]] = {}
        #: logs by pod name; ``None`` marks the end of the container's output
        self.logs: dict[str, list[str]] = {}
        self.on_pod_created: Callable[[Obj], Awaitable[None]] | None = None
        #: set once a client follows the pod's log (after it was sent what there was)
        self.followed: dict[str, asyncio.Event] = {}
        self._rv = 1000
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self.app = web.Application()
        self.app.router.add_post("/api/v1/namespaces/{ns}/secrets", self._create_secret)
        self.app.router.add_patch("/api/v1/namespaces/{ns}/secrets/{name}", self._patch_secret)
        self.app.router.add_delete("/api/v1/namespaces/{ns}/secrets/{name}", self._delete_secret)
        self.app.router.add_post("/apis/batch/v1/namespaces/{ns}/jobs", self._create_job)
        self.app.router.add_get("/apis/batch/v1/namespaces/{ns}/jobs", self._list_jobs)
        self.app.router.add_delete("/apis/batch/v1/namespaces/{ns}/jobs/{name}", self._delete_job)
        self.app.router.add_get("/api/v1/namespaces/{ns}/pods", self._list_pods)
        self.app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/log", self._pod_log)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # --- server lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the store ------------------------------------------------------------------------

    async def _put(self, plural: str, obj: Obj, event: str) -> Obj:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        key = (plural, meta["namespace"], meta["name"])
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.history.append((self._rv, plural, event, copy.deepcopy(obj)))
        async with self._changed:
            self._changed.notify_all()
        return obj

    def get(self, plural: str, ns: str, name: str) -> Obj | None:
        return self.objects.get((plural, ns, name))

    def pods_of(self, ns: str, job: str) -> list[Obj]:
        return [
            o
            for (plural, n, _), o in self.objects.items()
            if plural == "pods" and n == ns and o["metadata"]["labels"].get("job-name") == job
        ]

    def _record(self, request: web.Request, body: Any) -> None:
        self.requests.append((request.method, request.path, dict(request.query), body))

    def _fault(self, verb: str) -> web.Response | None:
        if verb in self.faults:
            code, message = self.faults[verb]
            return _error(code, message)
        return None

    # --- secrets ----------------------------------------------------------------------------

    async def _create_secret(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        if fault := self._fault("create-secret"):
            return fault
        ns, name = request.match_info["ns"], body["metadata"]["name"]
        if self.get("secrets", ns, name):
            return _error(409, f'secrets "{name}" already exists', name, "secrets")
        obj = copy.deepcopy(body)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
        await self._put("secrets", obj, "ADDED")
        return web.json_response(obj, status=201)

    async def _patch_secret(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        if fault := self._fault("patch-secret"):
            return fault
        ns, name = request.match_info["ns"], request.match_info["name"]
        obj = self.get("secrets", ns, name)
        if obj is None:
            return _error(404, f'secrets "{name}" not found', name, "secrets")
        obj = copy.deepcopy(obj)
        obj["metadata"].update(body.get("metadata", {}))
        await self._put("secrets", obj, "MODIFIED")
        return web.json_response(obj)

    async def _delete_secret(self, request: web.Request) -> web.Response:
        self._record(request, await request.read() or None)
        if fault := self._fault("delete-secret"):
            return fault
        ns, name = request.match_info["ns"], request.match_info["name"]
        obj = self.get("secrets", ns, name)
        if obj is None:
            return _error(404, f'secrets "{name}" not found', name, "secrets")
        await self._put("secrets", copy.deepcopy(obj), "DELETED")
        return web.json_response(
            {**status_object(200, ""), "status": "Success", "details": {"name": name}}
        )

    # --- jobs and their pods ------------------------------------------------------------

    async def _create_job(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        if fault := self._fault("create-job"):
            return fault
        ns, name = request.match_info["ns"], body["metadata"]["name"]
        if self.get("jobs", ns, name):
            return _error(409, f'jobs.batch "{name}" already exists', name, "jobs")
        job = copy.deepcopy(body)
        uid = str(uuid.uuid4())
        job["metadata"].update(namespace=ns, uid=uid, creationTimestamp=_now(), generation=1)
        selector = {"batch.kubernetes.io/controller-uid": uid}
        job["spec"]["selector"] = {"matchLabels": selector}
        job["spec"]["template"]["metadata"]["labels"].update(
            {**selector, "controller-uid": uid, "job-name": name,
             "batch.kubernetes.io/job-name": name}
        )  # fmt: skip
        job["status"] = {"startTime": _now(), "active": 1, "ready": 0, "terminating": 0,
                         "uncountedTerminatedPods": {}}  # fmt: skip
        await self._put("jobs", job, "ADDED")
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{name}-{secrets.token_hex(3)[:5]}",
                "namespace": ns,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "labels": dict(job["spec"]["template"]["metadata"]["labels"]),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(job["spec"]["template"]["spec"]),
            "status": {"phase": "Pending", "qosClass": "Burstable"},
        }
        await self._put("pods", pod, "ADDED")
        if self.on_pod_created is not None:
            self.spawn(self.on_pod_created(pod))
        return web.json_response(job, status=201)

    async def _delete_job(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self._record(request, body)
        if fault := self._fault("delete-job"):
            return fault
        ns, name = request.match_info["ns"], request.match_info["name"]
        job = self.get("jobs", ns, name)
        if job is None:
            return _error(404, f'jobs.batch "{name}" not found', name, "jobs")
        await self._put("jobs", copy.deepcopy(job), "DELETED")
        for pod in self.pods_of(ns, name):  # the garbage collector, in the background
            self._end_log(pod["metadata"]["name"])
            await self._put("pods", copy.deepcopy(pod), "DELETED")
        details = {"name": name, "group": "batch", "kind": "jobs", "uid": job["metadata"]["uid"]}
        return web.json_response(
            {**status_object(200, ""), "status": "Success", "details": details}
        )

    async def _list_jobs(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "jobs", "batch/v1", "JobList", "list-jobs")

    async def _list_pods(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "pods", "v1", "PodList", "list-pods")

    async def _list(
        self, request: web.Request, plural: str, api_version: str, kind: str, verb: str
    ) -> web.StreamResponse:
        self._record(request, None)
        if fault := self._fault(verb):
            return fault
        ns = request.match_info["ns"]
        fields = request.query.get("fieldSelector")
        labels = request.query.get("labelSelector")
        if request.query.get("watch", "").lower() not in ("true", "1"):
            items = [
                o
                for (p, n, _), o in self.objects.items()
                if p == plural and n == ns and _matches(o, fields, labels)
            ]
            return web.json_response(
                {"apiVersion": api_version, "kind": kind, "items": items,
                 "metadata": {"resourceVersion": str(self._rv)}}
            )  # fmt: skip
        since = int(request.query.get("resourceVersion") or self._rv)
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = since
        while True:
            for rv, p, event, obj in self.history:
                if rv <= seen:
                    continue
                seen = rv
                if p != plural or obj["metadata"]["namespace"] != ns:
                    continue
                if _matches(obj, fields, labels):
                    line = json.dumps({"type": event, "object": obj}) + "\n"
                    try:
                        await response.write(line.encode())
                    except ConnectionResetError:  # the watcher went away
                        return response
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            async with self._changed:
                if self.history and self.history[-1][0] > seen:
                    continue  # changed while we were writing
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
        with contextlib.suppress(ConnectionResetError):  # the client went first
            await response.write_eof()
        return response

    # --- logs ---------------------------------------------------------------------------------

    def _end_log(self, pod: str) -> None:
        # Followers wake on the next notification (every _put sends one).
        self.logs.setdefault(pod, []).append("\x00end")

    async def _pod_log(self, request: web.Request) -> web.StreamResponse:
        self._record(request, None)
        if fault := self._fault("pod-log"):
            return fault
        ns, name = request.match_info["ns"], request.match_info["name"]
        pod = self.get("pods", ns, name)
        if pod is None:
            return _error(404, f'pods "{name}" not found', name, "pods")
        container = request.query.get("container", "agent")
        if pod["status"].get("phase") == "Pending":
            return _error(
                400,
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            )
        follow = request.query.get("follow", "").lower() in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        while True:
            lines = self.logs.setdefault(name, [])
            ended = False
            for line in lines[sent:]:
                sent += 1
                if line == "\x00end":
                    ended = True
                    break
                try:
                    await response.write((line + "\n").encode())
                except ConnectionResetError:  # the follower went away
                    return response
            if ended or not follow:
                break
            self.followed.setdefault(name, asyncio.Event()).set()
            async with self._changed:
                if len(self.logs[name]) == sent:
                    await self._changed.wait()
        with contextlib.suppress(ConnectionResetError):  # the client went first
            await response.write_eof()
        return response

    # --- what the kubelet and the Job controller do --------------------------------------

    async def _set_pod(self, pod: Obj, status: Obj) -> Obj:
        key = ("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        current = self.objects.get(key)
        if current is None:
            return pod
        updated = copy.deepcopy(current)
        updated["status"] = status
        return await self._put("pods", updated, "MODIFIED")

    async def start_container(self, pod: Obj) -> None:
        await self._set_pod(
            pod,
            {"phase": "Running", "startTime": _now(), "containerStatuses": [
                {"name": "agent", "ready": True, "restartCount": 0, "started": True,
                 "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                 "state": {"running": {"startedAt": _now()}}}]},
        )  # fmt: skip

    async def followed_by_client(self, pod: Obj) -> None:
        await self.followed.setdefault(pod["metadata"]["name"], asyncio.Event()).wait()

    async def log(self, pod: Obj, *lines: str) -> None:
        self.logs.setdefault(pod["metadata"]["name"], []).extend(lines)
        async with self._changed:
            self._changed.notify_all()

    async def finish_container(self, pod: Obj, exit_code: int, message: str = "") -> None:
        """The container ended: pod Succeeded/Failed, then the Job's conditions."""
        self._end_log(pod["metadata"]["name"])
        phase = "Succeeded" if exit_code == 0 else "Failed"
        await self._set_pod(
            pod,
            {"phase": phase, "startTime": _now(), "containerStatuses": [
                {"name": "agent", "ready": False, "restartCount": 0, "started": False,
                 "image": pod["spec"]["containers"][0]["image"], "imageID": "",
                 "state": {"terminated": {
                     "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                     "message": message, "startedAt": _now(), "finishedAt": _now(),
                     "containerID": "containerd://" + secrets.token_hex(32)}}}]},
        )  # fmt: skip
        job = self._job_of(pod)
        if job is None:
            return
        if exit_code == 0:
            conds = [
                (
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
                ("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
            ]
            counts = {"succeeded": 1}
        else:
            conds = [
                (
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                ),
                ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
            ]
            counts = {"failed": 1}
        await self._finish_job(job, conds, counts)  # fmt: skip

    async def exceed_deadline(self, pod: Obj) -> None:
        """activeDeadlineSeconds passed: the Job fails and its pod is killed."""
        job = self._job_of(pod)
        self._end_log(pod["metadata"]["name"])
        if job is not None:
            msg = "Job was active longer than specified deadline"
            await self._finish_job(
                job,
                [("FailureTarget", "DeadlineExceeded", msg), ("Failed", "DeadlineExceeded", msg)],
                {"failed": 1},
            )
        current = self.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
        if current is not None:
            await self._put("pods", copy.deepcopy(current), "DELETED")

    def _job_of(self, pod: Obj) -> Obj | None:
        return self.get("jobs", pod["metadata"]["namespace"], pod["metadata"]["labels"]["job-name"])

    async def _finish_job(
        self, job: Obj, conditions: list[tuple[str, str, str]], counts: dict[str, int]
    ) -> None:
        updated = copy.deepcopy(job)
        status = updated["status"]
        status.update(active=0, ready=0, **counts)
        status["conditions"] = [
            {"type": t, "status": "True", "reason": r, "message": m,
             "lastProbeTime": _now(), "lastTransitionTime": _now()}
            for t, r, m in conditions
        ]  # fmt: skip
        if "succeeded" in counts:
            status["completionTime"] = _now()
        await self._put("jobs", updated, "MODIFIED")

    async def run_pod(self, pod: Obj, lines: list[str], exit_code: int, message: str = "") -> None:
        await self.start_container(pod)
        await self.log(pod, *lines)
        await self.finish_container(pod, exit_code, message)


class LocalKubelet:
    """Runs a created pod's real entry point (``podentry.py``) as a local process:
    the Secret volume's files written to a folder, every other volume a fresh
    folder, each mount path in the container's env replaced by its folder; the
    process's output becomes the pod log and its termination-log file the
    container's termination message."""

    def __init__(self, api: FakeKubeApi, podentry: Path, root: Path) -> None:
        self.api = api
        self.podentry = podentry
        self.root = root
        #: pod name -> mount path -> the local folder standing for it
        self.mounts: dict[str, dict[str, str]] = {}

    async def __call__(self, pod: Obj) -> None:
        spec = pod["spec"]
        container = spec["containers"][0]
        base = Path(tempfile.mkdtemp(prefix=pod["metadata"]["name"] + "-", dir=self.root))
        volumes = {v["name"]: v for v in spec["volumes"]}
        paths: dict[str, str] = {}
        for mount in container["volumeMounts"]:
            local = base / mount["name"]
            local.mkdir()
            volume = volumes[mount["name"]]
            if "secret" in volume:
                secret = self.api.get("secrets", pod["metadata"]["namespace"],
                                      volume["secret"]["secretName"])  # fmt: skip
                assert secret is not None, "the pod's Secret volume has no Secret"
                for key, value in secret["data"].items():
                    (local / key).write_bytes(base64.b64decode(value))
            paths[mount["mountPath"]] = str(local)
        termination = base / "termination-log"
        paths[container["terminationMessagePath"]] = str(termination)
        self.mounts[pod["metadata"]["name"]] = dict(paths)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for item in container["env"]:
            value = item["value"]
            for mount_path, local_path in paths.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    value = local_path + value[len(mount_path) :]
                    break
            env[item["name"]] = value
        await self.api.start_container(pod)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(self.podentry), env=env,
            cwd=paths[container["workingDir"]],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        async for raw in proc.stdout:
            await self.api.log(pod, raw.decode("utf-8", "replace").rstrip("\n"))
        code = await proc.wait()
        message = termination.read_text() if termination.exists() else ""
        await self.api.finish_container(pod, code, message)
