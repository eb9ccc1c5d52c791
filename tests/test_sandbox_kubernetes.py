"""The ``kubernetes`` sandbox backend against a local fake of the Kubernetes API
(tests/fakes/kube_api.py: no cluster can run here) and a real S3-compatible
store (nanio) with real presigned URLs; ``podentry.py`` runs for real as a local
process, both on its own and as the pod of a :class:`LocalKubelet`."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from jetty_cli.embedded import EmbeddedObjectStore
from services.runner.agents.base import AgentCommand
from services.runner.sandbox import k8s_manifests, podentry
from services.runner.sandbox.base import InputFile, Limits, SandboxError, SandboxSpec
from services.runner.sandbox.k8s_api import KubernetesSettings, api_client_from_settings
from services.runner.sandbox.kubernetes import KubernetesSandbox, KubernetesSandboxBackend
from shared.ids import new_trajectory_id
from shared.objectstore import ObjectStore
from tests.fakes.kube_api import FakeKubeApi, LocalKubelet, Obj

PODENTRY = Path(podentry.__file__)
CSV = b"city,visits\nLisbon,3\nPorto,5\n"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedObjectStore]:
    with EmbeddedObjectStore(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
async def store(s3: EmbeddedObjectStore) -> ObjectStore:
    client = Minio(
        s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False,
        region="us-east-1",
    )  # fmt: skip
    objects = ObjectStore(client, "jetty")
    await objects.ensure_bucket()
    return objects


@pytest.fixture
async def kube() -> AsyncIterator[FakeKubeApi]:
    api = FakeKubeApi()
    await api.start()
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
async def backend(kube: FakeKubeApi, store: ObjectStore) -> AsyncIterator[KubernetesSandboxBackend]:
    settings = KubernetesSettings(
        api_host=kube.base_url,
        namespace="jetty",
        sandbox_image="jetty-sandbox:test",
        runtime_class="gvisor",
        watch_timeout_s=2,
    )
    b = KubernetesSandboxBackend(settings, store, api_client_from_settings(settings))
    try:
        yield b
    finally:
        await b.close()


def _spec(
    argv: list[str] | None = None,
    inputs: list[InputFile] | None = None,
    timeout_s: float = 60,
    collection: str = "acme",
) -> SandboxSpec:
    trajectory = new_trajectory_id()
    return SandboxSpec(
        trajectory_id=trajectory,
        collection=collection,
        task="summarise",
        command=AgentCommand(
            argv=argv or ["claude", "-p", "hi"],
            env={"ANTHROPIC_AUTH_TOKEN": "jrt_run_token", "HOME": "/home/agent"},
            home_files={".claude/settings.json": b"{}"},
        ),
        inputs=inputs or [],
        limits=Limits(timeout_s=timeout_s, memory_mb=2048),
        artifact_prefix=f"{collection}/summarise/{trajectory}/",
        labels={"agent": "claude-code"},
    )


def _summary(exit_code: int, **extra: Any) -> str:
    return json.dumps({"exit_code": exit_code, "timed_out": False, "outputs": 0, **extra})


def _requests(kube: FakeKubeApi, method: str, fragment: str) -> list[Any]:
    return [r for r in kube.requests if r[0] == method and fragment in r[1]]


async def _drain(sandbox: KubernetesSandbox) -> list[str]:
    return [line async for line in sandbox.lines()]


# --- the API calls, scripted pods ---------------------------------------------------------


async def test_start_creates_the_secret_the_exact_job_and_follows_it_to_the_end(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    async def pod(p: Obj) -> None:
        await kube.run_pod(
            p,
            ['o {"type":"system"}', "p 0 input(s) in place", "e a warning", 'o {"type":"result"}'],
            0,
            _summary(0),
        )

    kube.on_pod_created = pod
    spec = _spec()
    sandbox = await backend.start(spec)
    assert sandbox.sandbox_id == k8s_manifests.job_name(spec.trajectory_id)

    (job_post,) = _requests(kube, "POST", "/apis/batch/v1/namespaces/jetty/jobs")
    assert job_post[3] == backend.job_manifest(spec)
    pod_spec = job_post[3]["spec"]["template"]["spec"]
    assert pod_spec["runtimeClassName"] == "gvisor"
    assert job_post[3]["spec"]["activeDeadlineSeconds"] == 60 + backend.settings.deadline_margin_s
    assert "jrt_run_token" not in json.dumps(job_post[3])  # the token is only in the Secret

    (secret_post,) = _requests(kube, "POST", "/api/v1/namespaces/jetty/secrets")
    assert kube.requests.index(secret_post) < kube.requests.index(job_post)
    config = json.loads(base64.b64decode(secret_post[3]["data"]["run.json"]))
    assert config["argv"] == ["claude", "-p", "hi"]
    assert config["env"]["ANTHROPIC_AUTH_TOKEN"] == "jrt_run_token"
    assert base64.b64decode(config["home_files"][".claude/settings.json"]) == b"{}"
    assert "X-Amz-Signature=" in config["output"]["url"]
    (patch,) = _requests(kube, "PATCH", "/secrets/")
    job = kube.get("jobs", "jetty", sandbox.sandbox_id)
    assert job is not None
    assert patch[3]["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]

    assert await _drain(sandbox) == ['{"type":"system"}', '{"type":"result"}']
    end = await sandbox.wait()
    assert (end.exit_code, end.timed_out, end.killed) == (0, False, False)
    (log,) = _requests(kube, "GET", "/log")
    assert log[2]["follow"].lower() == "true" and log[2]["container"] == "agent"
    assert await sandbox.collect_outputs() == []  # this scripted pod uploaded nothing

    await sandbox.destroy()
    (delete,) = _requests(kube, "DELETE", "/jobs/")
    assert delete[3]["propagationPolicy"] == "Background"
    assert _requests(kube, "DELETE", "/secrets/")
    await sandbox.destroy()  # again: the 404s are tolerated


async def test_a_failing_agent_reports_its_exit_code_and_stderr(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    kube.on_pod_created = lambda p: kube.run_pod(
        p, ["e boom"], 3, _summary(3, stderr_tail="Traceback: boom")
    )
    sandbox = await backend.start(_spec())
    assert await _drain(sandbox) == []
    end = await sandbox.wait()
    assert (end.exit_code, end.timed_out, end.stderr_tail) == (3, False, "Traceback: boom")
    await sandbox.destroy()


async def test_podentry_failure_is_reported_as_a_sandbox_message(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    message = json.dumps(
        {"exit_code": None, "error": "input uploads/a.csv could not be downloaded"}
    )
    kube.on_pod_created = lambda p: kube.run_pod(p, [], podentry.SETUP_FAILED, message)
    sandbox = await backend.start(_spec())
    end = await sandbox.wait()
    assert end.exit_code == podentry.SETUP_FAILED
    assert "sandbox: input uploads/a.csv could not be downloaded" in end.stderr_tail
    await sandbox.destroy()


async def test_deadline_exceeded_is_a_timeout(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    async def pod(p: Obj) -> None:
        await kube.start_container(p)
        await kube.log(p, "o working")
        await kube.followed_by_client(p)
        await kube.exceed_deadline(p)

    kube.on_pod_created = pod
    sandbox = await backend.start(_spec(timeout_s=0.5))
    job = kube.get("jobs", "jetty", sandbox.sandbox_id)
    assert job is not None and job["spec"]["activeDeadlineSeconds"] == 1 + 300
    assert await _drain(sandbox) == ["working"]
    end = await sandbox.wait()
    assert (end.exit_code, end.timed_out, end.killed) == (None, True, False)
    await sandbox.destroy()


async def test_kill_deletes_the_job_and_ends_lines_and_wait(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    async def pod(p: Obj) -> None:  # runs until the Job is deleted
        await kube.start_container(p)
        await kube.log(p, "o first")

    kube.on_pod_created = pod
    sandbox = await backend.start(_spec())
    lines = sandbox.lines()
    assert await anext(lines) == "first"
    waiter = asyncio.create_task(sandbox.wait())
    await sandbox.kill()
    await sandbox.kill()  # idempotent: one DELETE
    assert [line async for line in lines] == []
    end = await waiter
    assert (end.exit_code, end.killed) == (None, True)
    (delete,) = _requests(kube, "DELETE", "/jobs/")
    assert delete[3]["propagationPolicy"] == "Background"
    assert kube.pods_of("jetty", sandbox.sandbox_id) == []
    await sandbox.destroy()  # Job already gone: 404 tolerated


async def test_a_job_deleted_by_someone_else_counts_as_killed(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    kube.on_pod_created = kube.start_container
    sandbox = await backend.start(_spec())
    waiter = asyncio.create_task(sandbox.wait())
    await backend.api.delete_job(sandbox.sandbox_id)
    assert (await waiter).killed
    await sandbox.kill()  # 404 on delete: tolerated
    await sandbox.destroy()


async def test_forbidden_create_is_a_clear_error_and_leaves_nothing(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    kube.faults["create-job"] = (
        403,
        'jobs.batch is forbidden: User "system:serviceaccount:jetty:jetty-runner" cannot '
        'create resource "jobs" in API group "batch" in the namespace "jetty"',
    )
    spec = _spec()
    with pytest.raises(SandboxError) as caught:
        await backend.start(spec)
    text = str(caught.value)
    assert "create Job" in text and "403 Forbidden" in text and "cannot create resource" in text
    assert not [k for k in kube.objects if k[0] == "secrets"]  # the Secret was removed


async def test_server_error_while_watching_is_a_sandbox_error(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend
) -> None:
    kube.on_pod_created = kube.start_container
    sandbox = await backend.start(_spec())
    kube.faults["list-jobs"] = (500, "etcdserver: request timed out")
    with pytest.raises(SandboxError, match=r"watch Job .*500 Internal Server Error: etcdserver"):
        await sandbox.wait()
    kube.faults.clear()
    await sandbox.destroy()


async def test_unreachable_api_is_a_sandbox_error(store: ObjectStore) -> None:
    settings = KubernetesSettings(api_host="http://127.0.0.1:9", request_timeout_s=2)
    b = KubernetesSandboxBackend(settings, store, api_client_from_settings(settings))
    b.api.core.api_client.configuration.retries = 0
    try:
        with pytest.raises(SandboxError, match="kubernetes API: create Secret"):
            await b.start(_spec())
    finally:
        await b.close()


# --- podentry for real ----------------------------------------------------------------------

AGENT = textwrap.dedent(
    """
    import json, os, sys, pathlib
    data = pathlib.Path("uploads/data.csv").read_text()
    print(json.dumps({"type": "read", "rows": data.count("\\n") - 1}), flush=True)
    print("thinking about it", file=sys.stderr, flush=True)
    pathlib.Path("results").mkdir()
    pathlib.Path("results/summary.md").write_text("# Visits\\n8 in total\\n")
    print(json.dumps({"type": "done", "token": os.environ["ANTHROPIC_AUTH_TOKEN"]}))
    """
)


async def test_the_whole_chain_with_podentry_as_the_pod(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend, store: ObjectStore, tmp_path: Path
) -> None:
    kubelet = LocalKubelet(kube, PODENTRY, tmp_path)
    kube.on_pod_created = kubelet
    key = "acme/uploads/data.csv"
    store.client.put_object("jetty", key, io.BytesIO(CSV), len(CSV))
    spec = _spec(argv=[sys.executable, "-c", AGENT], inputs=[InputFile("uploads/data.csv", key)])
    sandbox = await backend.start(spec)
    lines = await _drain(sandbox)
    assert [json.loads(line) for line in lines] == [
        {"type": "read", "rows": 2},
        {"type": "done", "token": "jrt_run_token"},
    ]
    end = await sandbox.wait()
    assert (end.exit_code, end.timed_out) == (0, False)
    assert "thinking about it" in end.stderr_tail
    home = kubelet.mounts[next(iter(kubelet.mounts))]["/home/agent"]
    assert (Path(home) / ".claude/settings.json").read_bytes() == b"{}"

    outputs = await sandbox.collect_outputs()
    content = b"# Visits\n8 in total\n"
    assert [(o.path, o.size, o.sha256) for o in outputs] == [
        ("results/summary.md", len(content), hashlib.sha256(content).hexdigest())
    ]
    (out,) = outputs
    assert out.key == spec.artifact_prefix + "results/summary.md"
    assert out.content_type == "text/markdown"
    assert await store.get(out.key) == content
    archive = backend.archive_key(spec)
    assert await store.stat(archive) is not None
    await sandbox.destroy()
    assert await store.stat(archive) is None


async def test_podentry_times_the_agent_out(
    kube: FakeKubeApi, backend: KubernetesSandboxBackend, tmp_path: Path
) -> None:
    kube.on_pod_created = LocalKubelet(kube, PODENTRY, tmp_path)
    spec = _spec(
        argv=[sys.executable, "-c", "import time; print('start', flush=True); time.sleep(60)"],
        timeout_s=1,
    )
    sandbox = await backend.start(spec)
    assert await _drain(sandbox) == ["start"]
    end = await sandbox.wait()
    assert (end.exit_code, end.timed_out) == (None, True)
    await sandbox.destroy()


def _run_podentry(
    tmp: Path, config: dict[str, Any]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    for name in ("workspace", "home", "tmp"):
        (tmp / name).mkdir(exist_ok=True)
    (tmp / "run.json").write_text(json.dumps(config))
    env = {
        "PATH": "/usr/bin:/bin",
        "JETTY_POD_CONFIG": str(tmp / "run.json"),
        "JETTY_POD_WORKSPACE": str(tmp / "workspace"),
        "JETTY_POD_HOME": str(tmp / "home"),
        "JETTY_POD_TMP": str(tmp / "tmp"),
        "JETTY_POD_TERMINATION_LOG": str(tmp / "termination-log"),
    }
    proc = subprocess.run(
        [sys.executable, "-I", str(PODENTRY)], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    return proc, json.loads((tmp / "termination-log").read_text())


async def test_podentry_downloads_inputs_and_uploads_only_new_or_changed_files(
    store: ObjectStore, tmp_path: Path
) -> None:
    client = store.client
    client.put_object("jetty", "acme/uploads/a.csv", io.BytesIO(CSV), len(CSV))
    client.put_object("jetty", "acme/uploads/b.txt", io.BytesIO(b"old"), 3)
    hour = timedelta(hours=1)
    archive_key = "acme/.sandbox/tr_test/outputs.tar.gz"
    agent = (
        "import pathlib; pathlib.Path('uploads/b.txt').write_text('new');"
        "pathlib.Path('out.txt').write_text('made');"
        "pathlib.Path('link').symlink_to('/etc/passwd');"
        "print('line one'); print('line two')"
    )
    config = {
        "v": podentry.CONFIG_VERSION,
        "argv": [sys.executable, "-c", agent],
        "env": {},
        "home_files": {},
        "stdin": None,
        "inputs": [
            {
                "path": "uploads/a.csv",
                "url": client.presigned_get_object("jetty", "acme/uploads/a.csv", hour),
            },
            {
                "path": "uploads/b.txt",
                "url": client.presigned_get_object("jetty", "acme/uploads/b.txt", hour),
            },
        ],
        "output": {
            "url": client.presigned_put_object("jetty", archive_key, hour),
            "max_bytes": 1 << 20,
        },
        "timeout_s": 30,
        "limits": {"max_processes": 256, "cpu_seconds": 30, "max_file_mb": 16},
    }
    proc, summary = await asyncio.to_thread(_run_podentry, tmp_path, config)
    assert proc.returncode == 0, proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.startswith("o ")] == [
        "o line one",
        "o line two",
    ]
    assert (tmp_path / "workspace/uploads/a.csv").read_bytes() == CSV
    assert summary["exit_code"] == 0 and summary["outputs"] == 2
    with tarfile.open(fileobj=io.BytesIO(await store.get(archive_key)), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["out.txt", "uploads/b.txt"]


async def test_the_presigned_put_cannot_write_another_key(store: ObjectStore) -> None:
    """The pod's only write grant is one signed URL for one key: the same
    signature on any other key (e.g. another run's artifacts) is refused."""
    url = store.client.presigned_put_object(
        "jetty", "acme/.sandbox/tr_x/outputs.tar.gz", timedelta(hours=1)
    )
    forged = url.replace("acme/.sandbox/tr_x/outputs.tar.gz", "acme/summarise/tr_other/evil.md")
    request = urllib.request.Request(forged, data=b"evil", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as caught:
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)
    caught.value.close()
    assert caught.value.code == 403
    assert await store.stat("acme/summarise/tr_other/evil.md") is None


async def test_an_archive_escaping_the_prefix_is_refused(
    backend: KubernetesSandboxBackend, store: ObjectStore
) -> None:
    spec = _spec()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("ok.txt", "../../../tr_other/evil.md"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    data = buffer.getvalue()
    store.client.put_object("jetty", backend.archive_key(spec), io.BytesIO(data), len(data))
    with pytest.raises(SandboxError, match="outputs archive was refused: refused path"):
        await backend.unpack_outputs(backend.archive_key(spec), spec)
    assert await store.stat("acme/summarise/tr_other/evil.md") is None


def test_a_runs_limits_map_to_the_containers_requests_and_limits(
    backend: KubernetesSandboxBackend,
) -> None:
    """The same concepts as the local backend: memory and CPUs become the
    container's limits, the disk quota its ephemeral-storage limit; unset ones
    keep the backend's settings."""
    spec = dataclasses.replace(
        _spec(), limits=Limits(timeout_s=60, memory_mb=3072, cpus=1.5, disk_mb=2048)
    )
    [container] = backend.job_manifest(spec)["spec"]["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert limits == {"cpu": "1500m", "memory": "3072Mi", "ephemeral-storage": "2048Mi"}
    [default] = backend.job_manifest(_spec())["spec"]["template"]["spec"]["containers"]
    assert default["resources"]["limits"]["cpu"] == backend.settings.cpu_limit
    assert default["resources"]["limits"]["ephemeral-storage"] == "8Gi"
