"""A throw-away kopf operator that exercises what fleet-dispatch's operator will need of the dev cluster.

On create it creates an owned pod with the `kubernetes` client (off the event loop) and records it in
status; its delete handler makes kopf add and later remove a finalizer; a short timer patches status. It
is run by tests/test_devcluster_kopf.py with `kopf run`, never imported by the package.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import kubernetes

GROUP, VERSION, PLURAL = "fleet.dispatch.dev", "v1alpha1", "fleetdispatches"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="smoke.fleet.dispatch.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="smoke.fleet.dispatch.dev")
    settings.watching.server_timeout = 10
    settings.posting.level = 0


def _create_pod(namespace: str, name: str, owner: dict[str, Any]) -> None:
    kubernetes.config.load_kube_config()
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-1", "labels": {"fleet.dispatch.dev/dispatch": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "session", "image": "x", "command": ["true"]}],
        },
    }
    kopf.adopt(pod, owner=owner)
    kubernetes.client.CoreV1Api().create_namespaced_pod(namespace, pod)


@kopf.on.create(GROUP, VERSION, PLURAL)
async def created(body: kopf.Body, name: str, namespace: str, patch: kopf.Patch, **_: Any) -> None:
    await asyncio.to_thread(_create_pod, namespace, name, dict(body))
    kopf.info(body, reason="PodCreated", message=f"created pod {name}-1")
    patch.status["phase"] = "Running"
    patch.status["podName"] = f"{name}-1"


@kopf.timer(GROUP, VERSION, PLURAL, interval=0.5)
async def tick(patch: kopf.Patch, status: kopf.Status, **_: Any) -> None:
    if status.get("phase") == "Running":
        patch.status["attempt"] = 1


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def deleted(**_: Any) -> None:
    """Only here so that kopf puts a finalizer on every dispatch."""
