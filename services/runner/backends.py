"""The sandbox backend named by ``JETTY_RUNNER_BACKEND``, built from settings."""

from __future__ import annotations

from urllib.parse import urlsplit

from services.runner.sandbox.base import SandboxBackend
from services.runner.settings import RunnerSettings
from shared.objectstore import ObjectStore


def build_backend(settings: RunnerSettings, store: ObjectStore | None = None) -> SandboxBackend:
    store = store or ObjectStore.from_settings(settings)
    if settings.runner_backend == "kubernetes":
        # Imported only here: the official client is heavy and the local backend
        # does not need it.
        from services.runner.sandbox.k8s_api import KubernetesSettings
        from services.runner.sandbox.kubernetes import KubernetesSandboxBackend

        k8s_settings = KubernetesSettings()
        if k8s_settings.host_network and "gateway_url" not in k8s_settings.model_fields_set:
            # A pod on the node's network reaches the gateway where the runner does.
            k8s_settings = k8s_settings.model_copy(
                update={"gateway_url": settings.runner_gateway_url}
            )
        return KubernetesSandboxBackend.from_settings(k8s_settings, store)
    from services.runner.sandbox.local import LocalSandboxBackend, LocalSandboxSettings

    gateway = urlsplit(settings.runner_gateway_url)
    return LocalSandboxBackend(
        LocalSandboxSettings(
            root=settings.runner_workspace_root,
            agents_dir=settings.runner_agents_dir,
            gateway_host=gateway.hostname or "127.0.0.1",
            gateway_port=gateway.port or (443 if gateway.scheme == "https" else 80),
            max_output_files=settings.runner_max_artifacts,
            relay_max_connections=settings.runner_relay_max_connections,
            cgroups=settings.runner_cgroups,
            disk_quota=settings.runner_disk_quota,
        ),
        store,
    )
