"""The dev cluster's store: the API server semantics clients observe, without a socket."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from fleetdispatch import validation
from fleetdispatch.devcluster import patches
from fleetdispatch.devcluster.resources import CRDS, NAMESPACES, PODS, ResourceType
from fleetdispatch.devcluster.selectors import SelectorError, labels_matcher, object_matcher
from fleetdispatch.devcluster.store import ADDED, DELETED, IGNORE, MODIFIED, WARN, ApiError, Store

EVERYTHING = object_matcher(None, None)


def _store() -> tuple[Store, ResourceType]:
    store = Store(clock=lambda: datetime.datetime(2026, 11, 24, 12, 0, tzinfo=datetime.UTC))
    for crd in validation.crds().values():
        store.create(CRDS, None, crd)
    kind = store.kind("fleet.dispatch.dev", "v1alpha1", "fleetdispatches")
    assert kind is not None
    return store, kind


def _dispatch(name: str = "demo", **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "metadata": {"name": name, **metadata},
        "spec": {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}},
    }


def _pod(name: str = "p", **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **metadata}, "spec": {"containers": [{"name": "c", "image": "x"}]}}


def _error(call: Any, *args: Any, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_create_fills_server_metadata_and_defaults() -> None:
    store, kind = _store()
    obj = store.create(kind, "default", _dispatch()).obj
    metadata = obj["metadata"]
    assert metadata["namespace"] == "default"
    assert metadata["generation"] == 1
    assert metadata["creationTimestamp"] == "2026-11-24T12:00:00Z"
    assert len(metadata["uid"]) == 36
    assert int(metadata["resourceVersion"]) == store.resource_version
    assert obj["spec"]["timeouts"]["deadlineSeconds"] == 3600  # the CRD's default
    assert store.get(kind, "default", "demo") == obj


def test_generate_name_gives_distinct_names() -> None:
    store, kind = _store()
    names = {
        store.create(kind, "default", {**_dispatch(), "metadata": {"generateName": "run-"}}).obj["metadata"][
            "name"
        ]
        for _ in range(5)
    }
    assert len(names) == 5
    assert all(name.startswith("run-") for name in names)


def test_create_conflicts_and_missing_names() -> None:
    store, kind = _store()
    store.create(kind, "default", _dispatch())
    assert _error(store.create, kind, "default", _dispatch()).code == 409
    assert _error(store.create, kind, "default", {**_dispatch(), "metadata": {}}).code == 422
    assert _error(store.create, kind, "nowhere", _dispatch()).code == 404


def test_generation_moves_on_spec_changes_only_and_no_op_writes_change_nothing() -> None:
    store, kind = _store()
    store.create(kind, "default", _dispatch())
    before = store.resource_version
    labelled = store.patch(kind, "default", "demo", patches.MERGE, {"metadata": {"labels": {"a": "b"}}}).obj
    assert labelled["metadata"]["generation"] == 1
    assert store.resource_version == before + 1
    resumed = store.patch(kind, "default", "demo", patches.MERGE, {"spec": {"suspend": True}}).obj
    assert resumed["metadata"]["generation"] == 2
    version = store.resource_version
    same = store.patch(kind, "default", "demo", patches.MERGE, {"spec": {"suspend": True}}).obj
    assert same["metadata"]["resourceVersion"] == str(version)
    assert store.resource_version == version


def test_resource_version_preconditions() -> None:
    store, kind = _store()
    obj = store.create(kind, "default", _dispatch()).obj
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"suspend": True}}
    assert _error(store.patch, kind, "default", "demo", patches.MERGE, stale).code == 409
    fresh = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "spec": {"suspend": True}}
    assert store.patch(kind, "default", "demo", patches.MERGE, fresh).obj["spec"]["suspend"] is True
    assert _error(store.update, kind, "default", "demo", obj).code == 409  # the PUT body's version is stale


def test_json_patch_test_failure_is_422() -> None:
    store, kind = _store()
    store.create(kind, "default", _dispatch())
    failing = [
        {"op": "test", "path": "/spec/suspend", "value": True},
        {"op": "remove", "path": "/spec/retry"},
    ]
    error = _error(store.patch, kind, "default", "demo", patches.JSON, failing)
    assert (error.code, error.reason) == (422, "Invalid")
    passing = [
        {"op": "test", "path": "/spec/suspend", "value": False},
        {"op": "add", "path": "/spec/suspend", "value": True},
    ]
    assert store.patch(kind, "default", "demo", patches.JSON, passing).obj["spec"]["suspend"] is True


def test_status_subresource_is_isolated_both_ways() -> None:
    store, kind = _store()
    store.create(kind, "default", {**_dispatch(), "status": {"phase": "Running"}})
    assert "status" not in store.get(kind, "default", "demo")
    store.patch(
        kind, "default", "demo", patches.MERGE, {"status": {"phase": "Running"}, "spec": {"suspend": True}}
    )
    assert "status" not in store.get(kind, "default", "demo")  # the main resource ignores status
    written = store.patch(
        kind,
        "default",
        "demo",
        patches.MERGE,
        {"status": {"phase": "Pending"}, "spec": {"suspend": False}},
        subresource="status",
    ).obj
    assert written["status"] == {"phase": "Pending"}
    assert written["spec"]["suspend"] is True  # the status subresource ignores spec
    assert written["metadata"]["generation"] == 2


def test_invalid_custom_resources_get_a_422_with_causes() -> None:
    store, kind = _store()
    bad = _dispatch()
    bad["spec"]["timeouts"] = {"deadlineSeconds": 0}
    error = _error(store.create, kind, "default", bad)
    assert error.code == 422
    assert error.message.startswith(
        'FleetDispatch.fleet.dispatch.dev "demo" is invalid: spec.timeouts.deadlineSeconds'
    )
    assert error.details["causes"][0]["field"] == "spec.timeouts.deadlineSeconds"
    store.create(kind, "default", _dispatch())
    changed = {"spec": {"timeouts": {"deadlineSeconds": 60}}}
    immutable = _error(store.patch, kind, "default", "demo", patches.MERGE, changed)
    assert immutable.code == 422
    assert "immutable" in immutable.message


def test_unknown_fields_follow_field_validation() -> None:
    store, kind = _store()
    strange = _dispatch()
    strange["spec"]["timeout"] = 5
    error = _error(store.create, kind, "default", strange)
    assert error.code == 400
    assert 'unknown field "spec.timeout"' in error.message
    warned = store.create(kind, "default", strange, field_validation=WARN)
    assert warned.warnings == ('unknown field "spec.timeout"',)
    assert "timeout" not in warned.obj["spec"]
    ignored = store.create(
        kind, "default", {**strange, "metadata": {"name": "other"}}, field_validation=IGNORE
    )
    assert ignored.warnings == ()


def test_finalizers_hold_deletion_until_removed() -> None:
    store, kind = _store()
    store.create(kind, "default", _dispatch(finalizers=["example.com/hold"]))
    marked = store.delete(kind, "default", "demo")
    assert marked["metadata"]["deletionTimestamp"] == "2026-11-24T12:00:00Z"
    error = _error(
        store.patch,
        kind,
        "default",
        "demo",
        patches.MERGE,
        {"metadata": {"finalizers": ["example.com/hold", "x/y"]}},
    )
    assert "no new finalizers" in error.message
    store.patch(kind, "default", "demo", patches.MERGE, {"metadata": {"finalizers": None}})
    assert _error(store.get, kind, "default", "demo").code == 404


def _owned_pod(store: Store, owner: dict[str, Any], name: str = "demo-1") -> dict[str, Any]:
    reference = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    return store.create(PODS, "default", _pod(name, ownerReferences=[reference])).obj


def test_garbage_collection_deletes_dependents_of_a_deleted_owner() -> None:
    store, kind = _store()
    owner = store.create(kind, "default", _dispatch()).obj
    _owned_pod(store, owner)
    store.delete(kind, "default", "demo")
    assert store.select(PODS, "default", EVERYTHING) == []


def test_orphan_propagation_keeps_dependents() -> None:
    store, kind = _store()
    owner = store.create(kind, "default", _dispatch()).obj
    _owned_pod(store, owner)
    store.delete(kind, "default", "demo", propagation="Orphan")
    [pod] = store.select(PODS, "default", EVERYTHING)
    assert "ownerReferences" not in pod["metadata"]


def test_a_dependent_created_after_its_owner_is_gone_is_collected() -> None:
    store, kind = _store()
    owner = store.create(kind, "default", _dispatch()).obj
    store.delete(kind, "default", "demo")
    _owned_pod(store, owner)
    assert store.select(PODS, "default", EVERYTHING) == []


def test_bound_pods_terminate_gracefully_and_unbound_ones_at_once() -> None:
    store, _ = _store()
    store.create(PODS, "default", _pod("unbound"))
    store.delete(PODS, "default", "unbound")
    assert _error(store.get, PODS, "default", "unbound").code == 404
    store.create(PODS, "default", {**_pod("bound"), "spec": {"nodeName": "n", "containers": [{"name": "c"}]}})
    marked = store.delete(PODS, "default", "bound")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    assert marked["metadata"]["deletionTimestamp"] == "2026-11-24T12:00:30Z"
    assert store.delete(PODS, "default", "bound") == marked  # a second delete changes nothing
    store.delete(PODS, "default", "bound", grace_seconds=0)  # what the kubelet sends when done
    assert _error(store.get, PODS, "default", "bound").code == 404


def test_pods_need_containers() -> None:
    store, _ = _store()
    assert _error(store.create, PODS, "default", {"metadata": {"name": "empty"}, "spec": {}}).code == 422


def test_deleting_a_namespace_deletes_its_contents_then_itself() -> None:
    store, kind = _store()
    store.create(NAMESPACES, None, {"metadata": {"name": "team"}})
    store.create(kind, "team", _dispatch())
    store.create(PODS, "team", _pod())
    store.delete(NAMESPACES, None, "team")
    assert store.select(kind, "team", EVERYTHING) == []
    assert _error(store.get, NAMESPACES, None, "team").code == 404


def test_a_terminating_namespace_refuses_new_content() -> None:
    store, _ = _store()
    store.create(NAMESPACES, None, {"metadata": {"name": "team"}})
    store.create(PODS, "team", {**_pod(), "spec": {"nodeName": "n", "containers": [{"name": "c"}]}})
    store.delete(NAMESPACES, None, "team")  # the bound pod is terminating, so the namespace stays
    assert store.get(NAMESPACES, None, "team")["status"]["phase"] == "Terminating"
    assert _error(store.create, PODS, "team", _pod("late")).code == 403
    store.delete(PODS, "team", "p", grace_seconds=0)
    assert _error(store.get, NAMESPACES, None, "team").code == 404


def test_creating_a_crd_serves_its_kinds_and_deleting_it_removes_them() -> None:
    store, kind = _store()
    crd = store.get(CRDS, None, "fleetdispatches.fleet.dispatch.dev")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    store.create(kind, "default", _dispatch())
    store.delete(CRDS, None, "fleetdispatches.fleet.dispatch.dev")
    assert store.kind("fleet.dispatch.dev", "v1alpha1", "fleetdispatches") is None


def test_watch_replays_changes_after_a_resource_version() -> None:
    store, kind = _store()
    store.create(kind, "default", _dispatch("a"))
    since = store.resource_version
    store.create(kind, "default", _dispatch("b"))
    store.patch(kind, "default", "a", patches.MERGE, {"metadata": {"labels": {"x": "y"}}})
    initial, _ = store.subscribe(kind, "default", EVERYTHING, since)
    assert [(event, obj["metadata"]["name"]) for event, obj in initial] == [(ADDED, "b"), (MODIFIED, "a")]
    fresh, _ = store.subscribe(kind, "default", EVERYTHING, None)
    assert sorted(obj["metadata"]["name"] for _, obj in fresh) == ["a", "b"]


def test_watch_from_a_version_the_history_no_longer_holds_is_410() -> None:
    store = Store(history=3)
    for index in range(6):
        store.create(PODS, "default", _pod(f"p{index}"))
    error = _error(store.subscribe, PODS, "default", EVERYTHING, 1)
    assert (error.code, error.reason) == (410, "Expired")


def test_watchers_see_selector_transitions() -> None:
    store, kind = _store()
    store.create(kind, "default", _dispatch())
    _, subscription = store.subscribe(kind, None, object_matcher("team=a", None), None)
    store.patch(kind, "default", "demo", patches.MERGE, {"metadata": {"labels": {"team": "a"}}})
    store.patch(kind, "default", "demo", patches.MERGE, {"metadata": {"labels": {"team": "b"}}})
    store.delete(kind, "default", "demo")
    seen = []
    while not subscription.events.empty():
        seen.append(subscription.events.get_nowait()[0])
    assert seen == [ADDED, DELETED]  # entering the selector, leaving it; the final delete is not ours


def test_label_selectors() -> None:
    labels = {"app": "web", "tier": "front"}
    assert labels_matcher("app=web,tier")(labels)
    assert labels_matcher("app in (web, api),!missing")(labels)
    assert not labels_matcher("app notin (web)")(labels)
    assert not labels_matcher("tier!=front")(labels)
    with pytest.raises(SelectorError):
        labels_matcher("bad key=1")


def test_strategic_merge_merges_named_lists() -> None:
    target = {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]}
    patch = {
        "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
        "containers": [{"name": "b", "image": "2"}],
    }
    assert patches.apply(patches.STRATEGIC, target, patch) == {
        "containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]
    }


def test_status_writes_are_validated_against_the_status_schema() -> None:
    store, kind = _store()
    store.create(kind, "default", _dispatch())
    error = _error(
        store.patch,
        kind,
        "default",
        "demo",
        patches.MERGE,
        {"status": {"phase": "Bogus"}},
        subresource="status",
    )
    assert error.code == 422
    assert 'status.phase: Unsupported value: "Bogus"' in error.message
