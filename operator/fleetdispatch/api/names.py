"""The names the API is made of, each defined once: its group and version, the resources fleet-dispatch reads
and writes and their paths, the labels on a dispatch's pods, the names the operator injects, and which
container of a pod is the session.

Standard library only: the session side (the heartbeat's Lease path), the core, the operator's shell and the
dev cluster all import it. Deliberately not here: the shape of any object (that is `models` and the CRDs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

GROUP = "fleet.dispatch.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Names the operator injects into every pod; a template may not use them.
SUPERVISOR_CONTAINER = "fleet-supervisor"
STATE_VOLUME = "fleet-state"
STATE_DIR = "/var/run/fleet"
SESSION_CONTAINER = "session"
# With spec.workspace: the dispatch's claim `<dispatch>-workspace`, mounted as this volume into the session.
WORKSPACE_VOLUME = "fleet-workspace"
WORKSPACE_SUFFIX = "-workspace"
# Every pod of a dispatch carries both; users select a dispatch's pods with them.
DISPATCH_LABEL = f"{GROUP}/dispatch"
ATTEMPT_LABEL = f"{GROUP}/attempt"
# A dispatch that counts in a FleetCampaign's status carries the campaign's name (written by hand, or by the
# campaign for the dispatches it creates); those also carry their item's name.
CAMPAIGN_LABEL = f"{GROUP}/campaign"
ITEM_LABEL = f"{GROUP}/item"
# The session container of a campaign's dispatch sees its item's name in this variable.
ITEM_ENV = "FLEET_ITEM"
# Set to a new value on a Failed dispatch, it starts a new line of attempts (`kubectl fleet retry` sets it);
# the value handled is kept in status.retryHandled, so the same value retries once.
RETRY_ANNOTATION = f"{GROUP}/retry"


def session_container(names: Sequence[str]) -> int | None:
    """Which of a pod's containers (by name, in order) is the session the supervisor watches: the only one
    whatever its name, else the one named `session`; None when there is no such container."""
    if len(names) == 1:
        return 0
    return next((index for index, name in enumerate(names) if name == SESSION_CONTAINER), None)


@dataclass(frozen=True)
class Resource:
    """A resource type's REST paths: `/api/v1/...` for the core group, `/apis/GROUP/VERSION/...` otherwise."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The collection (no `name`), an object, or an object's subresource; across all namespaces when a
        namespaced resource is given no `namespace`."""
        parts = ["/api", self.version] if not self.group else ["/apis", self.group, self.version]
        if self.namespaced and namespace is not None:
            parts += ["namespaces", _segment(namespace)]
        elif not self.namespaced and namespace is not None:
            raise ValueError(f"{self.plural} are not namespaced")
        parts.append(self.plural)
        if name is not None:
            parts.append(_segment(name))
            if subresource is not None:
                parts.append(_segment(subresource))
        elif subresource is not None:
            raise ValueError("a subresource needs an object name")
        return "/".join(parts)


def _segment(value: str) -> str:
    # Names are validated by the API server, but a path is built before it sees them: never let a value
    # add a segment or a query.
    if not value or value in (".", ".."):
        raise ValueError(f"not a path segment: {value!r}")
    return quote(value, safe="")


FLEET_DISPATCHES = Resource(GROUP, VERSION, "fleetdispatches")
QUOTA_POOLS = Resource(GROUP, VERSION, "quotapools")
FLEET_CAMPAIGNS = Resource(GROUP, VERSION, "fleetcampaigns")
PODS = Resource("", "v1", "pods")
EVENTS = Resource("", "v1", "events")
NODES = Resource("", "v1", "nodes", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts")
PERSISTENT_VOLUME_CLAIMS = Resource("", "v1", "persistentvolumeclaims")
PERSISTENT_VOLUMES = Resource("", "v1", "persistentvolumes", namespaced=False)
STORAGE_CLASSES = Resource("storage.k8s.io", "v1", "storageclasses", namespaced=False)
LEASES = Resource("coordination.k8s.io", "v1", "leases")
CUSTOM_RESOURCE_DEFINITIONS = Resource(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False
)
