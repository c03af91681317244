"""spec.workspace without a cluster: the pod of every attempt mounts the dispatch's claim into the session
container alone, the claim the operator creates is owned (Delete) or only labelled (Retain), and a claim of
that name that is not the dispatch's own is recognised. tests/cluster/test_workspace.py runs it for real."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.api import models, names
from fleetdispatch.api.models import InvalidSpec
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.core import podspec, workspace
from fleetdispatch.core.podspec import AttemptRequest, DispatchRef
from fleetdispatch.validation import manifests

NOW = 1_700_000_000.0
REF = DispatchRef(name="review", namespace="team-a", uid="0b1c2d3e")
CLAIM_SPEC = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}


def claim_template(**fields: Any) -> dict[str, Any]:
    return {"volumeClaimTemplate": {"spec": copy.deepcopy(CLAIM_SPEC)}, **fields}


def container(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "example/agent:1", "command": ["agent"], **fields}


def build(
    template: dict[str, Any], request: AttemptRequest, settings: OperatorSettings | None = None, **ws: Any
) -> dict[str, Any]:
    spec = models.parse_spec({"template": copy.deepcopy(template), "workspace": claim_template(**ws)})
    return podspec.build_pod(REF, spec, template, request, NOW, settings or OperatorSettings())


def mounts_of(item: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["name"], m["mountPath"]) for m in item.get("volumeMounts") or []]


def workspace_mounts(item: dict[str, Any]) -> list[str]:
    return [path for name, path in mounts_of(item) if name == names.WORKSPACE_VOLUME]


other_names = st.lists(st.sampled_from(["proxy", "cache", "logger", "helper"]), max_size=3, unique=True)
mount_paths = st.sampled_from(["/workspace", "/work", "/home/agent/repo", "/var/run/fleet-data", "/w"])
requests = st.builds(
    AttemptRequest,
    attempt=st.integers(1, 1000),
    resume=st.booleans(),
    resume_token=st.none() | st.sampled_from(["tok", "a$b"]),
)


@given(
    others=other_names,
    inits=st.lists(st.sampled_from(["setup", "fetch"]), max_size=2, unique=True),
    session_first=st.booleans(),
    path=mount_paths,
    request=requests,
    heartbeat=st.booleans(),
)
def test_every_attempt_mounts_the_workspace_into_the_session_container_only(  # noqa: PLR0917
    others: list[str],
    inits: list[str],
    session_first: bool,
    path: str,
    request: AttemptRequest,
    heartbeat: bool,
) -> None:
    session = container("session", volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}])
    rest = [container(name) for name in others]
    containers = [session, *rest] if session_first else [*rest, session]
    template = {
        "spec": {
            "containers": containers,
            "initContainers": [container(name) for name in inits],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        }
    }
    settings = OperatorSettings(heartbeat_service_account="fleet-heartbeat" if heartbeat else None)
    pod = build(template, request, settings, mountPath=path)
    spec = pod["spec"]
    claims = [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [
        {"name": names.WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": "review-workspace"}}
    ]
    by_name = {c["name"]: c for c in [*spec["containers"], *spec["initContainers"]]}
    assert workspace_mounts(by_name["session"]) == [path]
    # The template's own mounts are kept, before the injected ones.
    assert mounts_of(by_name["session"])[0] == ("scratch", "/scratch")
    for name, item in by_name.items():
        if name != "session":
            assert workspace_mounts(item) == [], name
    assert workspace_mounts(by_name[names.SUPERVISOR_CONTAINER]) == []


def test_the_only_container_is_the_session_whatever_its_name() -> None:
    pod = build({"spec": {"containers": [container("agent")]}}, AttemptRequest(3, True, "t"))
    [agent] = pod["spec"]["containers"]
    assert workspace_mounts(agent) == ["/workspace"]


def test_without_a_workspace_there_is_no_claim_volume() -> None:
    template = {"spec": {"containers": [container("session")]}}
    spec = models.parse_spec({"template": copy.deepcopy(template)})
    pod = podspec.build_pod(REF, spec, template, AttemptRequest(1, False, None), NOW, OperatorSettings())
    assert not [v for v in pod["spec"]["volumes"] if v["name"] == names.WORKSPACE_VOLUME]


def test_the_raw_template_is_checked_for_the_workspace_too() -> None:
    # The model refuses it; a raw template that says more than the model is refused by the builder too.
    model = {"spec": {"containers": [container("session")]}}
    raw = {
        "spec": {
            "containers": [container("session", volumeMounts=[{"name": "x", "mountPath": "/workspace/"}])]
        }
    }
    spec = models.parse_spec({"template": model, "workspace": claim_template()})
    with pytest.raises(InvalidSpec, match=r"spec.workspace.mountPath: already a volumeMount"):
        podspec.build_pod(REF, spec, raw, AttemptRequest(1, False, None), NOW, OperatorSettings())
    raw = {"spec": {"containers": [container("session")], "volumes": [{"name": "fleet-workspace"}]}}
    with pytest.raises(InvalidSpec, match="'fleet-workspace' is reserved"):
        podspec.build_pod(REF, spec, raw, AttemptRequest(1, False, None), NOW, OperatorSettings())


def parsed_workspace(**fields: Any) -> models.Workspace:
    return models.Workspace.model_validate(claim_template(**fields))


def test_a_delete_claim_is_owned_by_its_dispatch_and_labelled() -> None:
    ws = models.Workspace.model_validate(
        {
            "volumeClaimTemplate": {
                "metadata": {
                    "labels": {"team": "a", names.DISPATCH_LABEL: "spoof"},
                    "annotations": {"x": "y"},
                },
                "spec": {**CLAIM_SPEC, "storageClassName": "fast", "selector": {"matchLabels": {"k": "v"}}},
            }
        }
    )
    claim = workspace.build_claim(REF, ws)
    assert claim["metadata"] == {
        "name": "review-workspace",
        "namespace": "team-a",
        "labels": {"team": "a", names.DISPATCH_LABEL: "review"},
        "annotations": {"x": "y"},
        "ownerReferences": [
            {
                "apiVersion": names.API_VERSION,
                "kind": "FleetDispatch",
                "name": "review",
                "uid": "0b1c2d3e",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    # The claim spec as written, fields the model does not declare included.
    assert claim["spec"] == {
        **CLAIM_SPEC,
        "storageClassName": "fast",
        "selector": {"matchLabels": {"k": "v"}},
    }
    assert workspace.foreign(claim, REF, ws) is None


def test_a_retain_claim_has_no_owner_and_is_found_by_its_label() -> None:
    ws = parsed_workspace(reclaimPolicy="Retain")
    claim = workspace.build_claim(REF, ws)
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["labels"] == {names.DISPATCH_LABEL: "review"}
    assert workspace.foreign(claim, REF, ws) is None
    # A dispatch created again under the name takes up the retained workspace.
    again = DispatchRef(REF.name, REF.namespace, "another-uid")
    assert workspace.foreign(claim, again, ws) is None


@pytest.mark.parametrize(
    ("metadata", "policy", "expected"),
    [
        ({"name": "review-workspace"}, "Delete", "not created by fleet-dispatch"),
        ({"name": "review-workspace"}, "Retain", "not created by fleet-dispatch"),
        (
            {"name": "review-workspace", "labels": {names.DISPATCH_LABEL: "other"}},
            "Retain",
            "label is 'other'",
        ),
        (
            {
                "name": "review-workspace",
                "ownerReferences": [{"kind": "StatefulSet", "name": "db", "uid": "u", "controller": True}],
            },
            "Delete",
            "controlled by StatefulSet db",
        ),
        (
            {
                "name": "review-workspace",
                "labels": {names.DISPATCH_LABEL: "review"},
                "ownerReferences": [
                    {"kind": "FleetDispatch", "name": "review", "uid": "old", "controller": True}
                ],
            },
            "Delete",
            "earlier FleetDispatch of the same name",
        ),
        (
            {"name": "review-workspace", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "Delete",
            "being deleted",
        ),
    ],
)
def test_a_claim_that_is_not_the_dispatchs_own_is_recognised(
    metadata: dict[str, Any], policy: str, expected: str
) -> None:
    problem = workspace.foreign({"metadata": metadata}, REF, parsed_workspace(reclaimPolicy=policy))
    assert problem is not None and expected in problem


def test_the_workspace_defaults() -> None:
    ws = parsed_workspace()
    assert (ws.mount_path, ws.reclaim_policy) == ("/workspace", "Delete")
    assert models.Workspace.model_validate(claim_template(mountPath="/w")).mount_path == "/w"
    # An integer size is a quantity too, as in any PersistentVolumeClaim.
    sized = {"volumeClaimTemplate": {"spec": {**CLAIM_SPEC, "resources": {"requests": {"storage": 1024}}}}}
    assert (
        models.Workspace.model_validate(sized).volume_claim_template.spec.resources.requests.storage == 1024
    )


# The API server (the CRD's schema and CEL rules, as `admission` emulates them) and the operator's models
# agree on which workspaces are valid, around every rule's edge.
session_mounts = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.sampled_from(["a", "b"]),
            "mountPath": st.sampled_from(["/workspace", "/workspace/", "/w", "/x"]),
        }
    ),
    max_size=2,
)
workspaces = st.fixed_dictionaries(
    {},
    optional={
        "mountPath": st.sampled_from(
            [
                "/workspace",
                "/w",
                "w",
                "/",
                "/w/",
                "//w",
                "/a//b",
                "/a/./b",
                "/a/../b",
                "/..",
                "/a..b",
                "/.x",
                "/var/run/fleet",
                "/var/run/fleet/x",
                "/var/run/fleetx",
                "/var/run",
                "x" * 1025,
            ]
        ),
        "reclaimPolicy": st.sampled_from(["Delete", "Retain", "Keep", ""]),
        "volumeClaimTemplate": st.fixed_dictionaries(
            {},
            optional={
                "metadata": st.fixed_dictionaries(
                    {}, optional={"labels": st.sampled_from([{}, {"a": "b"}, {"a": "x" * 64}])}
                ),
                "spec": st.fixed_dictionaries(
                    {},
                    optional={
                        "accessModes": st.lists(
                            st.sampled_from(
                                [
                                    "ReadWriteOnce",
                                    "ReadOnlyMany",
                                    "ReadWriteMany",
                                    "ReadWriteOncePod",
                                    "Sometimes",
                                ]
                            ),
                            max_size=3,
                        ),
                        "resources": st.fixed_dictionaries(
                            {},
                            optional={
                                "requests": st.fixed_dictionaries(
                                    {},
                                    optional={
                                        "storage": st.sampled_from(
                                            ["1Gi", "500M", "1.5Gi", "1e3", 1024, "lots", "1 Gi", ""]
                                        )
                                    },
                                ),
                                "limits": st.just({"storage": "2Gi"}),
                            },
                        ),
                        "storageClassName": st.sampled_from(["fleet-local", "", "x" * 254]),
                        "volumeMode": st.sampled_from(["Filesystem", "Block", "Raw"]),
                        "selector": st.just({"matchLabels": {"k": "v"}}),
                    },
                ),
            },
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(
    ws=workspaces,
    mounts=session_mounts,
    volumes=st.lists(st.sampled_from(["fleet-workspace", "cache"]), max_size=2, unique=True),
)
def test_api_server_and_operator_agree_on_which_workspaces_are_valid(
    ws: dict[str, Any], mounts: list[dict[str, str]], volumes: list[str]
) -> None:
    session = container("session", **({"volumeMounts": mounts} if mounts else {}))
    pod: dict[str, Any] = {"containers": [session]}
    if volumes:
        pod["volumes"] = [{"name": name, "emptyDir": {}} for name in volumes]
    manifest = {
        "apiVersion": names.API_VERSION,
        "kind": "FleetDispatch",
        "metadata": {"name": "ok"},
        "spec": {"template": {"spec": pod}, "workspace": ws},
    }
    verdict = manifests.check(manifest)
    assert bool(verdict.api_errors) == (verdict.model_error is not None), (
        f"API server says {[str(e) for e in verdict.api_errors]}, operator says {verdict.model_error}"
    )
