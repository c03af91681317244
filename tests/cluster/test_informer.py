"""The controller's own list-then-watch (`controller.informer.Informer`) against the real kube-apiserver.

ConfigMaps stand in for any resource: the informer is generic. Shown here: a paged listing (pages of 2),
`synced` after the first listing, the label selector, every change told once with the view it replaces, a
delete told with the object, and, after a stop, a fresh start telling exactly what changed meanwhile: the
changed object, the deleted one (no body: only a listing found it gone), nothing for the unchanged ones.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any

from fleetdispatch.api.names import Resource
from fleetdispatch.client.kubeapi import Credentials, KubeApi
from fleetdispatch.controller.informer import Informer, Key
from fleetdispatch.devcluster.stack import BackgroundCluster
from operators import Namespace

CONFIG_MAPS = Resource("", "v1", "configmaps")
LABEL = "informer-test"
_names = itertools.count()

Seen = tuple[Key, str | None, str | None, bool]  # key, view, before, with a body


def credentials(cluster: BackgroundCluster) -> Credentials:
    plane = cluster.dev.plane
    return Credentials(
        server=plane.url,
        ca_file=str(plane.ca),
        certificate_file=str(plane.admin.certificate),
        key_file=str(plane.admin.key),
    )


def config_map(name: str, value: str, labelled: bool = True) -> dict[str, Any]:
    labels = {LABEL: "yes"} if labelled else {}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"v": value},
    }


def value(body: Mapping[str, Any]) -> str:
    return str((body.get("data") or {}).get("v"))


async def until(condition: Any, seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not in time")


def test_lists_in_pages_then_tells_each_change_once_and_after_a_restart_what_changed_meanwhile(
    cluster: BackgroundCluster,
) -> None:
    ns = Namespace(cluster, f"informer-{next(_names)}", runtime="none")
    kube = ns.kube
    path = CONFIG_MAPS.path(ns.name)
    for index in range(5):
        kube.request("POST", path, config_map(f"cm{index}", "a"))
    kube.request("POST", path, config_map("other", "a", labelled=False))
    seen: list[Seen] = []

    def on_event(key: Key, view: str | None, before: str | None, body: Mapping[str, Any] | None) -> None:
        seen.append((key, view, before, body is not None))

    async def run() -> None:
        api = KubeApi(credentials(cluster))
        informer: Informer[str] = Informer(
            api, CONFIG_MAPS, [ns.name], value, on_event, label_selector=LABEL, page_size=2, timeout_seconds=5
        )
        try:
            informer.start()
            await asyncio.wait_for(informer.synced.wait(), 20)
            assert sorted(seen) == [((ns.name, f"cm{i}"), "a", None, True) for i in range(5)]
            assert len(informer) == 5 and informer.get(ns.name, "other") is None
            assert informer.visible_since(ns.name) is not None

            seen.clear()
            kube.request(
                "PATCH", f"{path}/cm1", {"data": {"v": "b"}}, content_type="application/merge-patch+json"
            )
            kube.request("DELETE", f"{path}/cm2")
            await until(lambda: len(seen) >= 2)
            await asyncio.sleep(0.3)
            assert seen == [((ns.name, "cm1"), "b", "a", True), ((ns.name, "cm2"), None, "a", True)]
            assert informer.get(ns.name, "cm1") == "b" and informer.get(ns.name, "cm2") is None

            await informer.stop()
            seen.clear()
            kube.request(
                "PATCH", f"{path}/cm3", {"data": {"v": "c"}}, content_type="application/merge-patch+json"
            )
            kube.request("DELETE", f"{path}/cm4")
            kube.request("POST", path, config_map("cm5", "d"))
            informer.start()
            await until(lambda: len(seen) >= 3)
            await asyncio.sleep(0.3)
            assert sorted(seen) == [
                ((ns.name, "cm3"), "c", "a", True),
                ((ns.name, "cm4"), None, "a", False),
                ((ns.name, "cm5"), "d", None, True),
            ]
        finally:
            await informer.stop()
            await api.close()

    asyncio.run(run())
