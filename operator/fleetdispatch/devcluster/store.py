"""The dev cluster's object store: the API server's semantics over in-memory JSON objects.

Everything a client can observe about a write is decided here, synchronously, so that the HTTP layer
(:mod:`.server`) only translates requests and the semantics are unit-testable without a socket:

* server-filled metadata (``uid``, ``creationTimestamp``, ``resourceVersion`` from one global counter,
  ``generation`` bumped only when something outside ``metadata`` and ``status`` changes), ``generateName``;
* ``resourceVersion`` preconditions (409), immutable ``name``/``namespace``/``uid``, no-op writes that change
  nothing (no new ``resourceVersion``, no watch event), status-subresource isolation in both directions;
* validation of custom resources against their CRD (structural schema, defaults, CEL) through
  :mod:`fleetdispatch.admission`, with the ``fieldValidation`` modes Strict (400), Warn and Ignore;
* namespaces that must exist (404) and that delete their contents; finalizers and ``deletionTimestamp``;
  graceful deletion of pods bound to a node (the runtime finishes it, as a kubelet does); garbage collection
  of dependents whose owners are all gone (``propagationPolicy: Orphan`` strips the reference instead);
* a bounded history of changes, so a watch can resume from a ``resourceVersion`` or be told it is too old
  (410), and subscriptions that receive every later change, translated through the watcher's selectors
  (an object that stops matching is DELETED for that watcher, one that starts matching is ADDED).

What it deliberately does not do: persistence (state is in memory and lost on exit), server-side apply,
admission of built-in kinds beyond the basics (a pod needs containers), RBAC, quota, and more than one
served version per kind.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import random
import string
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetdispatch import admission
from fleetdispatch.devcluster import patches
from fleetdispatch.devcluster.resources import BUILTINS, CRDS, NAMESPACES, PODS, ResourceType, from_crd
from fleetdispatch.devcluster.selectors import Matcher

Object = dict[str, Any]
Clock = Callable[[], datetime.datetime]
StoreKey = tuple[str, str]  # (group, plural)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
STRICT, WARN, IGNORE = "Strict", "Warn", "Ignore"
ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
DEFAULT_POD_GRACE_SECONDS = 30
_SERVER_METADATA = (
    "uid",
    "creationTimestamp",
    "name",
    "namespace",
    "generation",
    "resourceVersion",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
_CAUSE_REASONS = {
    admission.INVALID: "FieldValueInvalid",
    admission.REQUIRED: "FieldValueRequired",
    admission.UNSUPPORTED: "FieldValueNotSupported",
    admission.TOO_LONG: "FieldValueTooLong",
    admission.TOO_MANY: "FieldValueTooMany",
    admission.DUPLICATE: "FieldValueDuplicate",
    admission.FORBIDDEN: "FieldValueForbidden",
}


def timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time serialises."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ApiError(Exception):
    """An error the server answers with a ``Status`` object and this HTTP code."""

    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})

    def status(self) -> Object:
        body: Object = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(kind: ResourceType, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{kind.qualified} "{name}" not found',
        {"name": name, "group": kind.group, "kind": kind.plural},
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _conflict(kind: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind.qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "group": kind.group, "kind": kind.plural},
    )


def _invalid(kind: ResourceType, name: str, errors: list[admission.FieldError]) -> ApiError:
    causes = [
        {
            "reason": _CAUSE_REASONS.get(error.kind, "FieldValueInvalid"),
            "message": str(error).removeprefix(f"{error.path}: "),
            "field": error.path,
        }
        for error in errors
    ]
    return ApiError(
        422,
        "Invalid",
        admission.invalid_status_message(
            f"{kind.kind}.{kind.group}" if kind.group else kind.kind, name, errors
        ),
        {"name": name, "group": kind.group, "kind": kind.kind, "causes": causes},
    )


@dataclass(frozen=True)
class Change:
    """One committed change, as the history keeps it: the object after (and, if any, before) it."""

    resource_version: int
    type: str
    key: StoreKey
    obj: Object
    old: Object | None


@dataclass(eq=False)
class Subscription:
    """A watcher's view of later changes: the events it should see, already filtered and translated."""

    key: StoreKey
    namespace: str | None
    matches: Matcher
    events: asyncio.Queue[tuple[str, Object]] = field(default_factory=asyncio.Queue)

    def translate(self, change: Change) -> tuple[str, Object] | None:
        """The event this watcher sees for ``change``, or None (selectors decide, as the watch cache does)."""
        if self.namespace is not None and change.obj["metadata"].get("namespace") != self.namespace:
            return None
        now = self.matches(change.obj)
        if change.type != MODIFIED:
            return (change.type, change.obj) if now else None
        before = change.old is not None and self.matches(change.old)
        if now:
            return (MODIFIED if before else ADDED, change.obj)
        return (DELETED, change.obj) if before else None


@dataclass(frozen=True)
class Written:
    """The result of a write: the object as stored, and warnings for the ``Warning`` header."""

    obj: Object
    warnings: tuple[str, ...] = ()


class Store:
    """All objects of the dev cluster, with the API server's write semantics (see the module docstring)."""

    def __init__(self, *, clock: Clock = utc_now, history: int = 10_000) -> None:
        self._clock = clock
        self._counter = itertools.count(1)
        self.resource_version = 0
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[StoreKey, dict[tuple[str, str], Object]] = {}
        self._uids: dict[str, tuple[ResourceType, str, str]] = {}
        self._history: deque[Change] = deque(maxlen=history)
        self._subscriptions: dict[StoreKey, set[Subscription]] = {}
        self._spec_unchanged_crds: dict[StoreKey, Mapping[str, Any]] = {}
        for kind in BUILTINS:
            self.register(kind)
        for name in DEFAULT_NAMESPACES:
            self.create(NAMESPACES, None, {"metadata": {"name": name}})

    def now(self) -> datetime.datetime:
        return self._clock()

    # ---- kinds ------------------------------------------------------------------------------------------

    def register(self, kind: ResourceType) -> None:
        self._types[(kind.group, kind.version, kind.plural)] = kind
        self._spec_unchanged_crds.pop(kind.key, None)
        self._objects.setdefault(kind.key, {})

    def kinds(self) -> list[ResourceType]:
        return list(self._types.values())

    def kind(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._types.get((group, version, plural))

    # ---- reads ------------------------------------------------------------------------------------------

    def get(self, kind: ResourceType, namespace: str | None, name: str) -> Object:
        obj = self._objects[kind.key].get((namespace or "", name))
        if obj is None:
            raise not_found(kind, name)
        return obj

    def select(self, kind: ResourceType, namespace: str | None, matches: Matcher) -> list[Object]:
        return [
            obj
            for (ns, _), obj in self._objects[kind.key].items()
            if (namespace is None or ns == namespace) and matches(obj)
        ]

    def objects(self, kind: ResourceType) -> Iterator[Object]:
        yield from self._objects[kind.key].values()

    # ---- watches ----------------------------------------------------------------------------------------

    def subscribe(
        self, kind: ResourceType, namespace: str | None, matches: Matcher, since: int | None
    ) -> tuple[list[tuple[str, Object]], Subscription]:
        """The events a new watch starts with, and its subscription to every later change.

        ``since`` None replays the current objects as ADDED; a ``resourceVersion`` replays the changes after
        it from the history, or raises a 410 when the history no longer reaches back that far. The snapshot
        and the subscription are taken in one step, so no change falls between them.
        """
        subscription = Subscription(kind.key, namespace, matches)
        if since is None:
            initial = [(ADDED, obj) for obj in self.select(kind, namespace, matches)]
        else:
            oldest = self._history[0].resource_version if self._history else self.resource_version + 1
            if since < oldest - 1 and since < self.resource_version:
                raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest - 1})")
            initial = [
                event
                for change in self._history
                if change.resource_version > since and change.key == kind.key
                if (event := subscription.translate(change)) is not None
            ]
        self._subscriptions.setdefault(kind.key, set()).add(subscription)
        return initial, subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.get(subscription.key, set()).discard(subscription)

    def watching(self, kind: ResourceType) -> int:
        """How many watches of `kind` are open (the dev command waits for the operator's)."""
        return len(self._subscriptions.get(kind.key, ()))

    def watchers(self) -> int:
        return sum(len(subscriptions) for subscriptions in self._subscriptions.values())

    # ---- writes -----------------------------------------------------------------------------------------

    def create(
        self,
        kind: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        field_validation: str = STRICT,
        dry_run: bool = False,
    ) -> Written:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            metadata = obj["metadata"] = {}
        self._check_identity(kind, obj)
        namespace = self._namespace_for(kind, namespace, metadata)
        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if not prefix:
                raise _invalid(
                    kind,
                    "",
                    [
                        admission.FieldError(
                            "metadata.name", admission.REQUIRED, "name or generateName is required"
                        )
                    ],
                )
            metadata["name"] = self._generate_name(kind, namespace, str(prefix))
        name = str(metadata["name"])
        if (namespace or "", name) in self._objects[kind.key]:
            raise ApiError(
                409,
                "AlreadyExists",
                f'{kind.qualified} "{name}" already exists',
                {"name": name, "group": kind.group, "kind": kind.plural},
            )
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "managedFields"):
            metadata.pop(key, None)
        if kind.status_subresource:
            obj.pop("status", None)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        metadata.update(uid=str(uuid.uuid4()), creationTimestamp=timestamp(self._clock()), generation=1)
        if namespace is not None:
            metadata["namespace"] = namespace
        obj, warnings = self._admit(kind, obj, None, field_validation)
        self._prepare_builtin(kind, obj)
        if dry_run:  # `dryRun=All` (kubectl diff): admitted and returned, never stored
            return Written(obj, warnings)
        self._commit(kind, ADDED, obj, None)
        if kind == CRDS:
            self._establish(obj)
        self._collect_if_orphaned(kind, obj)
        return Written(obj, warnings)

    def update(
        self,
        kind: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        field_validation: str = STRICT,
        dry_run: bool = False,
    ) -> Written:
        """PUT: replace the object (or its status), honouring ``metadata.resourceVersion`` when given."""
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        current = self.get(kind, namespace, name)
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request("metadata must be a JSON object")
        if metadata.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({metadata.get('name')}) does not match the name on the URL ({name})"
            )
        return self._replace(
            kind,
            current,
            copy.deepcopy(body),
            metadata.get("resourceVersion"),
            subresource=subresource,
            field_validation=field_validation,
            dry_run=dry_run,
        )

    def patch(
        self,
        kind: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        field_validation: str = STRICT,
        dry_run: bool = False,
    ) -> Written:
        current = self.get(kind, namespace, name)
        try:
            patched = patches.apply(content_type, current, patch)
        except patches.PatchError as error:
            if error.malformed:
                raise bad_request(str(error)) from None
            raise ApiError(422, "Invalid", str(error)) from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not a JSON object")
        wanted = ((patch.get("metadata") or {}) if isinstance(patch, dict) else {}).get("resourceVersion")
        return self._replace(
            kind,
            current,
            patched,
            wanted,
            subresource=subresource,
            field_validation=field_validation,
            dry_run=dry_run,
        )

    def delete(
        self,
        kind: ResourceType,
        namespace: str | None,
        name: str,
        *,
        grace_seconds: int | None = None,
        propagation: str = "Background",
        preconditions: Mapping[str, Any] | None = None,
    ) -> Object:
        """Delete, gracefully where the kind calls for it; returns the object as it now stands."""
        current = self.get(kind, namespace, name)
        metadata = current["metadata"]
        wanted = preconditions or {}
        if wanted.get("uid") not in (None, metadata["uid"]) or wanted.get("resourceVersion") not in (
            None,
            metadata["resourceVersion"],
        ):
            raise _conflict(kind, name)
        if propagation == "Orphan":
            self._orphan_dependents(metadata["uid"])
        if kind == NAMESPACES:
            return self._delete_namespace(current)
        grace = self._grace_seconds(kind, current, grace_seconds)
        if metadata.get("finalizers") or grace > 0:
            if metadata.get("deletionTimestamp"):
                if grace == 0 and metadata.get("deletionGracePeriodSeconds"):
                    # The kubelet's final delete: what is left waits for the finalizers only.
                    finished = copy.deepcopy(current)
                    finished["metadata"]["deletionGracePeriodSeconds"] = 0
                    self._commit(kind, MODIFIED, finished, current)
                    return finished
                return current
            marked = copy.deepcopy(current)
            deadline = self._clock() + datetime.timedelta(seconds=grace)
            marked["metadata"].update(deletionTimestamp=timestamp(deadline), deletionGracePeriodSeconds=grace)
            self._commit(kind, MODIFIED, marked, current)
            return marked
        return self._remove(kind, current)

    # ---- internals --------------------------------------------------------------------------------------

    def _check_identity(self, kind: ResourceType, obj: Object) -> None:
        api_version, obj_kind = obj.get("apiVersion"), obj.get("kind")
        if api_version not in (None, kind.api_version) or obj_kind not in (None, kind.kind):
            raise bad_request(
                f"the API version in the data ({api_version}) or kind ({obj_kind}) does not match the "
                f"expected API version ({kind.api_version}) and kind ({kind.kind})"
            )

    def _namespace_for(self, kind: ResourceType, namespace: str | None, metadata: Object) -> str | None:
        if not kind.namespaced:
            metadata.pop("namespace", None)
            return None
        if namespace is None:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if metadata.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        owner = self._objects[NAMESPACES.key].get(("", namespace))
        if owner is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if owner["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f"unable to create new content in namespace {namespace} because it is being terminated",
            )
        return namespace

    def _generate_name(self, kind: ResourceType, namespace: str | None, prefix: str) -> str:
        while True:
            name = prefix + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            if (namespace or "", name) not in self._objects[kind.key]:
                return name

    def _admit(
        self, kind: ResourceType, obj: Object, old: Object | None, field_validation: str
    ) -> tuple[Object, tuple[str, ...]]:
        """Custom resources through their CRD: pruned, defaulted, validated (or a 400/422)."""
        if kind.crd is None:
            if kind == PODS and not (obj.get("spec") or {}).get("containers"):
                raise _invalid(
                    kind,
                    obj["metadata"]["name"],
                    [admission.FieldError("spec.containers", admission.REQUIRED, "")],
                )
            return obj, ()
        crd = kind.crd
        if old is not None and _spec_part(obj) == _spec_part(old):
            # Ratcheting (Kubernetes 1.30+): rules over fields an update leaves unchanged are not enforced
            # again. Skipping the unchanged spec keeps status writes, the operator's main traffic, cheap.
            crd = self._spec_unchanged_crds.get(kind.key) or self._without_spec_validation(kind)
        stored, errors = admission.admit(crd, obj, old, strict=True)
        unknown = [str(error) for error in errors if error.kind == admission.UNKNOWN_FIELD]
        invalid = [error for error in errors if error.kind != admission.UNKNOWN_FIELD]
        if unknown and field_validation == STRICT:
            raise bad_request(
                f"{kind.kind} in version {kind.version!r} cannot be handled as a {kind.kind}: "
                f"strict decoding error: {', '.join(unknown)}"
            )
        if invalid:
            raise _invalid(kind, obj["metadata"]["name"], invalid)
        # Pruning keeps the server's metadata; admission returns fresh containers, so re-attach ours.
        stored["metadata"] = obj["metadata"]
        return stored, tuple(unknown) if field_validation == WARN else ()

    def _without_spec_validation(self, kind: ResourceType) -> Mapping[str, Any]:
        assert kind.crd is not None
        crd = copy.deepcopy(dict(kind.crd))
        for version in crd["spec"]["versions"]:
            properties = version["schema"]["openAPIV3Schema"].get("properties", {})
            if "spec" in properties:
                properties["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        self._spec_unchanged_crds[kind.key] = crd
        return crd

    def _prepare_builtin(self, kind: ResourceType, obj: Object) -> None:
        if kind == PODS:
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        elif kind == NAMESPACES:
            obj.setdefault("status", {})["phase"] = "Active"
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]

    def _replace(
        self,
        kind: ResourceType,
        current: Object,
        new: Object,
        wanted_version: Any,
        *,
        subresource: str | None,
        field_validation: str,
        dry_run: bool = False,
    ) -> Written:
        metadata = current["metadata"]
        name = metadata["name"]
        if wanted_version is not None and str(wanted_version) != metadata["resourceVersion"]:
            raise _conflict(kind, name)
        self._check_identity(kind, new)
        new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        if subresource == "status":
            status = new.get("status")
            new = {k: v for k, v in current.items() if k != "status"}
            if status is not None:
                new["status"] = status
        elif kind.status_subresource:
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in current:
                new["status"] = current["status"]
        new_metadata = new.get("metadata")
        new_metadata = dict(new_metadata) if isinstance(new_metadata, dict) else {}
        for key in _SERVER_METADATA:
            if key in metadata:
                new_metadata[key] = metadata[key]
            else:
                new_metadata.pop(key, None)
        new_metadata.pop("managedFields", None)
        new["metadata"] = new_metadata
        if metadata.get("deletionTimestamp"):
            added = set(new_metadata.get("finalizers") or ()) - set(metadata.get("finalizers") or ())
            if added:
                raise _invalid(
                    kind,
                    name,
                    [
                        admission.FieldError(
                            "metadata.finalizers",
                            admission.FORBIDDEN,
                            "no new finalizers can be added if the object is being deleted",
                        )
                    ],
                )
        new, warnings = self._admit(kind, new, current, field_validation)
        if new == current:
            return Written(current, warnings)
        if _spec_part(new) != _spec_part(current):
            new_metadata["generation"] = int(metadata.get("generation", 1)) + 1
        if dry_run:
            return Written(new, warnings)
        self._commit(kind, MODIFIED, new, current)
        if kind == CRDS:
            self._establish(self.get(kind, None, name))
        if new_metadata.get("deletionTimestamp") and not new_metadata.get("finalizers"):
            grace = int(new_metadata.get("deletionGracePeriodSeconds") or 0)
            if grace == 0:
                return Written(self._remove(kind, new), warnings)
        return Written(new, warnings)

    def _commit(self, kind: ResourceType, change_type: str, obj: Object, old: Object | None) -> None:
        self.resource_version = next(self._counter)
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        metadata = obj["metadata"]
        place = (metadata.get("namespace") or "", metadata["name"])
        if change_type == DELETED:
            self._objects[kind.key].pop(place, None)
            self._uids.pop(metadata["uid"], None)
        else:
            self._objects[kind.key][place] = obj
            self._uids[metadata["uid"]] = (kind, place[0], place[1])
        change = Change(self.resource_version, change_type, kind.key, obj, old)
        self._history.append(change)
        for subscription in list(self._subscriptions.get(kind.key, ())):
            event = subscription.translate(change)
            if event is not None:
                subscription.events.put_nowait(event)

    def _remove(self, kind: ResourceType, current: Object) -> Object:
        gone = copy.deepcopy(current)
        self._commit(kind, DELETED, gone, current)
        if kind == CRDS:
            self._unregister(gone)
        self._collect_dependents(gone["metadata"]["uid"])
        namespace = gone["metadata"].get("namespace")
        if namespace:
            self._finish_namespace(namespace)
        return gone

    def _grace_seconds(self, kind: ResourceType, obj: Object, requested: int | None) -> int:
        """Only pods bound to a node terminate gracefully: a kubelet must stop them first."""
        if kind != PODS or not (obj.get("spec") or {}).get("nodeName"):
            return 0
        if obj["status"].get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(0, requested)
        return int((obj.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE_SECONDS))

    def _dependents(self, uid: str) -> list[tuple[ResourceType, Object]]:
        found = []
        for kind in self.kinds():
            for obj in self._objects[kind.key].values():
                references = obj["metadata"].get("ownerReferences") or ()
                if any(reference.get("uid") == uid for reference in references):
                    found.append((kind, obj))
        return found

    def _collect_dependents(self, uid: str) -> None:
        for kind, obj in self._dependents(uid):
            self._collect_if_orphaned(kind, obj)

    def _collect_if_orphaned(self, kind: ResourceType, obj: Object) -> None:
        """The garbage collector's rule: a dependent goes when none of its owners exists any more."""
        references = obj["metadata"].get("ownerReferences") or ()
        if references and not any(reference.get("uid") in self._uids for reference in references):
            metadata = obj["metadata"]
            if not metadata.get("deletionTimestamp"):
                self.delete(kind, metadata.get("namespace"), metadata["name"])

    def _orphan_dependents(self, uid: str) -> None:
        for kind, obj in self._dependents(uid):
            kept = [ref for ref in obj["metadata"]["ownerReferences"] if ref.get("uid") != uid]
            updated = copy.deepcopy(obj)
            updated["metadata"]["ownerReferences"] = kept
            if not kept:
                del updated["metadata"]["ownerReferences"]
            self._commit(kind, MODIFIED, updated, obj)

    def _delete_namespace(self, current: Object) -> Object:
        name = current["metadata"]["name"]
        if not current["metadata"].get("deletionTimestamp"):
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = timestamp(self._clock())
            marked["status"] = {"phase": "Terminating"}
            self._commit(NAMESPACES, MODIFIED, marked, current)
        for kind in self.kinds():
            if kind.namespaced:
                for obj in list(self._objects[kind.key].values()):
                    metadata = obj["metadata"]
                    if metadata.get("namespace") == name and not metadata.get("deletionTimestamp"):
                        self.delete(kind, name, metadata["name"])
        self._finish_namespace(name)
        return self._objects[NAMESPACES.key].get(("", name)) or current

    def _finish_namespace(self, name: str) -> None:
        namespace = self._objects[NAMESPACES.key].get(("", name))
        if namespace is None or not namespace["metadata"].get("deletionTimestamp"):
            return
        for kind in self.kinds():
            if kind.namespaced and any(ns == name for ns, _ in self._objects[kind.key]):
                return
        self._remove(NAMESPACES, namespace)

    def _establish(self, crd: Object) -> None:
        """What the apiextensions controllers do at once: serve the kinds and report them Established."""
        try:
            kinds = from_crd(crd)
        except ValueError as error:
            raise _invalid(
                CRDS, crd["metadata"]["name"], [admission.FieldError("spec", admission.INVALID, str(error))]
            ) from None
        for kind in kinds:
            self.register(kind)
        spec = crd["spec"]
        now = timestamp(self._clock())
        status = {
            "acceptedNames": spec["names"],
            "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
            "conditions": [
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now,
                }
                for kind, reason, message in (
                    ("NamesAccepted", "NoConflicts", "no conflicts found"),
                    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                )
            ],
        }
        if crd.get("status") != status:
            established = copy.deepcopy(crd)
            established["status"] = status
            self._commit(CRDS, MODIFIED, established, crd)

    def _unregister(self, crd: Object) -> None:
        for kind in from_crd(crd):
            for obj in list(self._objects.get(kind.key, {}).values()):
                self._commit(kind, DELETED, copy.deepcopy(obj), obj)
            self._types.pop((kind.group, kind.version, kind.plural), None)


def _spec_part(obj: Object) -> Object:
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}
