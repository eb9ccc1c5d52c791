"""The Kubernetes side of the ``kubernetes`` sandbox backend: its settings
(``JETTY_K8S_*``), the API client, and the few API calls the backend makes, each
in a worker thread with a request timeout and every failure as a
:class:`~services.runner.sandbox.base.SandboxError` naming the call.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runner.sandbox.base import (
    SandboxError,
)

T = TypeVar("T")


class KubernetesSettings(BaseSettings):
    """``JETTY_K8S_*``: where and how sandbox Jobs run."""

    model_config = SettingsConfigDict(env_prefix="JETTY_K8S_", extra="ignore")

    namespace: str = "jetty"
    sandbox_image: str = "jetty-sandbox:latest"
    image_pull_policy: str = "IfNotPresent"
    runtime_class: str | None = Field(default=None, description="gVisor/Kata RuntimeClass")
    #: local single-node clusters only: the pod shares the node's network so it
    #: reaches a platform on the node's loopback (never on a real cluster)
    host_network: bool = False
    service_account: str = "jetty-sandbox"
    cpu_request: str = "500m"
    cpu_limit: str = "2"
    #: the memory limit is the run's Limits.memory_mb
    memory_request: str = "512Mi"
    workspace_size: str = "4Gi"
    ephemeral_storage_limit: str | None = "8Gi"
    ttl_seconds_after_finished: int = Field(default=600, ge=0)
    #: on top of the run's timeout: pod start (image pull) and the outputs upload
    deadline_margin_s: int = Field(default=300, ge=0)
    #: the gateway as the sandbox pods reach it (becomes layout.gateway_url)
    gateway_url: str = "http://jetty-gateway.jetty.svc:8080"
    #: API server URL (tests, out-of-cluster); unset: in-cluster config, else kubeconfig
    api_host: str | None = None
    kubeconfig: str | None = None
    request_timeout_s: float = Field(default=30.0, gt=0)
    #: server-side bound of one watch request; the backend re-watches after it
    watch_timeout_s: int = Field(default=30, ge=1)
    #: largest outputs archive the pod may upload, MB
    max_outputs_mb: int = Field(default=2048, ge=1)


def api_client_from_settings(settings: KubernetesSettings) -> k8s.ApiClient:
    if settings.api_host:
        configuration = k8s.Configuration(host=settings.api_host)
        return k8s.ApiClient(configuration)
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=settings.kubeconfig, client_configuration=configuration
        )
    return k8s.ApiClient(configuration)


def api_message(exc: ApiException) -> str:
    """``403 Forbidden: <the Status object's message>``."""
    detail = ""
    try:
        detail = str(json.loads(exc.body or "{}").get("message") or "")
    except (ValueError, AttributeError):
        detail = str(exc.body or "")[:300]
    return f"{exc.status} {exc.reason}" + (f": {detail}" if detail else "")


class KubeApi:
    """The few calls we make, each in a thread, errors as :class:`SandboxError`."""

    def __init__(self, api_client: k8s.ApiClient, settings: KubernetesSettings) -> None:
        self.batch = k8s.BatchV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.ns = settings.namespace
        self.timeout = settings.request_timeout_s
        self.watch_timeout = settings.watch_timeout_s

    async def call(self, what: str, fn: Callable[[], T], *, missing_ok: bool = False) -> T | None:
        try:
            return await asyncio.to_thread(fn)
        except ApiException as exc:
            if missing_ok and exc.status == 404:
                return None
            raise SandboxError(f"kubernetes API: {what}: {api_message(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SandboxError(f"kubernetes API: {what}: {exc}") from exc

    def watch_until(
        self,
        list_fn: Callable[..., Any],
        decide: Callable[[str, Any], T | None],
        stop: threading.Event,
        absent: T | None = None,
        **selectors: str,
    ) -> T | None:
        """List, then watch from the list's resourceVersion, until ``decide``
        answers (blocking: run it in a thread). None when ``stop`` is set;
        ``absent`` when the list is empty (the object is already gone)."""
        while not stop.is_set():
            listing = list_fn(self.ns, _request_timeout=self.timeout, **selectors)
            if absent is not None and not listing.items:
                return absent
            for item in listing.items or []:
                if (found := decide("ADDED", item)) is not None:
                    return found
            version = listing.metadata.resource_version if listing.metadata else None
            watcher = k8s_watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                    list_fn,
                    self.ns,
                    resource_version=version,
                    timeout_seconds=self.watch_timeout,
                    _request_timeout=self.watch_timeout + self.timeout,
                    **selectors,
                ):
                    if (found := decide(str(event["type"]), event["object"])) is not None:
                        return found
                    if stop.is_set():
                        return None
            except ApiException as exc:
                if exc.status != 410:  # expired resourceVersion: list again
                    raise
            finally:
                watcher.stop()  # type: ignore[no-untyped-call]
        return None

    async def delete_job(self, name: str) -> None:
        body = k8s.V1DeleteOptions(propagation_policy="Background")
        await self.call(
            f"delete Job {name}",
            lambda: self.batch.delete_namespaced_job(
                name, self.ns, body=body, _request_timeout=self.timeout
            ),
            missing_ok=True,
        )

    async def delete_secret(self, name: str) -> None:
        await self.call(
            f"delete Secret {name}",
            lambda: self.core.delete_namespaced_secret(
                name, self.ns, _request_timeout=self.timeout
            ),
            missing_ok=True,
        )
