"""The pod builder over template variations and a restricted Pod Security check: a template in, a pod dict
out (tests/cluster/test_podspec_admitted.py runs a built pod for real)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from fleetdispatch.api import models, names
from fleetdispatch.api.models import FleetDispatchSpec, InvalidSpec
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.core import podspec
from fleetdispatch.core.podspec import AttemptRequest, DispatchRef
from fleetdispatch.session import protocol
from fleetdispatch.session.config import SupervisorConfig

NOW = 1_700_000_000.75
SETTINGS = OperatorSettings()
HEARTBEAT = OperatorSettings(heartbeat_service_account="fleet-heartbeat")
REF = DispatchRef(name="review", namespace="team-a", uid="0b1c2d3e")
FIRST = AttemptRequest(attempt=1, resume=False, resume_token=None)
OUTCOME = "/var/run/fleet/outcome.json"

Pod = dict[str, Any]


def container(name: str = "session", **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "example/agent:1", "command": ["agent"], **fields}


def template_of(*containers: dict[str, Any], **pod_fields: Any) -> dict[str, Any]:
    return {"spec": {"containers": list(containers), **pod_fields}}


def parsed(template: dict[str, Any], **spec: Any) -> FleetDispatchSpec:
    return models.parse_spec({"template": copy.deepcopy(template), **spec})


def build(
    template: dict[str, Any],
    request: AttemptRequest = FIRST,
    settings: OperatorSettings = SETTINGS,
    **spec: Any,
) -> Pod:
    return podspec.build_pod(REF, parsed(template, **spec), template, request, NOW, settings)


def unchecked(template: dict[str, Any]) -> FleetDispatchSpec:
    """A spec that skipped `models.parse_spec`, as a caller could hand over with `model_construct`."""
    pod = models.PodSpec.model_construct(**template["spec"])
    return FleetDispatchSpec.model_construct(template=models.PodTemplate.model_construct(spec=pod))


def named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = [item for item in items if item["name"] == name]
    return found


def session_of(pod: Pod, name: str = "session") -> dict[str, Any]:
    return named(pod["spec"]["containers"], name)


def supervisor_of(pod: Pod) -> dict[str, Any]:
    supervisor: dict[str, Any] = pod["spec"]["initContainers"][0]
    assert supervisor["name"] == names.SUPERVISOR_CONTAINER
    return supervisor


def env_of(item: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable.get("value", "") for variable in item.get("env") or []}


def fleet_env(item: dict[str, Any]) -> dict[str, str]:
    return {name: value for name, value in env_of(item).items() if name.startswith("FLEET_")}


def expand(text: str) -> str:
    """What Kubernetes makes of an escaped value: `$$` is one `$` (no variable is referenced)."""
    return text.replace("$$", "$")


# --- a restricted Pod Security Standard check -------------------------------------------------------------

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def restricted_violations(pod: Pod) -> list[str]:
    """What keeps `pod` from the "restricted" Pod Security Standard (the checks a template can fail)."""
    spec = pod["spec"]
    pod_security = spec.get("securityContext") or {}
    violations = [key for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    for volume in spec.get("volumes") or []:
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            violations.append(f"volume {volume['name']}: type not allowed")
    if pod_security.get("runAsUser") == 0:
        violations.append("pod runs as UID 0")
    for item in [*(spec.get("initContainers") or []), *spec["containers"]]:
        security = item.get("securityContext") or {}
        name = item["name"]
        if security.get("privileged"):
            violations.append(f"{name}: privileged")
        if security.get("allowPrivilegeEscalation") is not False:
            violations.append(f"{name}: allowPrivilegeEscalation is not false")
        capabilities = security.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            violations.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            violations.append(f"{name}: adds capabilities")
        non_root = security.get("runAsNonRoot")
        if (pod_security.get("runAsNonRoot") if non_root is None else non_root) is not True:
            violations.append(f"{name}: runAsNonRoot is not true")
        if security.get("runAsUser") == 0:
            violations.append(f"{name}: runs as UID 0")
        seccomp = security.get("seccompProfile") or pod_security.get("seccompProfile") or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            violations.append(f"{name}: seccomp profile not RuntimeDefault or Localhost")
    return violations


# --- which container is the session -----------------------------------------------------------------------


def test_the_only_container_is_the_session_whatever_its_name() -> None:
    pod = build(template_of(container("claude", env=[{"name": "MODEL", "value": "opus"}])))
    session = session_of(pod, "claude")
    assert env_of(session) == {
        "MODEL": "opus",
        "FLEET_DISPATCH": "team-a/review",
        "FLEET_ATTEMPT": "1",
        "FLEET_SESSION_DEADLINE": str(int(NOW + 3600)),
        "FLEET_STATE_DIR": "/var/run/fleet",
    }
    assert session["env"][0]["name"] == "MODEL"  # the user's env comes first
    assert session["volumeMounts"] == [{"name": "fleet-state", "mountPath": "/var/run/fleet"}]
    assert session["terminationMessagePath"] == OUTCOME
    assert session["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_the_container_named_session_is_the_session_among_several() -> None:
    proxy = container("proxy", env=[{"name": "PORT", "value": "8080"}])
    pod = build(template_of(proxy, container("session")))
    session, other = session_of(pod), session_of(pod, "proxy")
    assert fleet_env(session)["FLEET_DISPATCH"] == "team-a/review"
    assert session["terminationMessagePath"] == OUTCOME
    assert env_of(other) == {"PORT": "8080"}
    assert "volumeMounts" not in other and "terminationMessagePath" not in other
    assert [c["name"] for c in pod["spec"]["containers"]] == ["proxy", "session"]


def test_several_containers_without_a_session_are_refused_with_a_clear_message() -> None:
    template = template_of(container("agent"), container("proxy"))
    with pytest.raises(InvalidSpec, match=r"spec\.template\.spec.*containers.*named 'session'"):
        parsed(template)
    # A spec that skipped parse_spec gets the same kind of error, not a StopIteration or IndexError.
    spec = unchecked(template)
    with pytest.raises(InvalidSpec, match=r"spec\.template\.spec\.containers: .*named 'session'"):
        podspec.check_template(spec)
    with pytest.raises(InvalidSpec, match="named 'session'"):
        podspec.build_pod(REF, spec, template, FIRST, NOW, SETTINGS)
    with pytest.raises(InvalidSpec, match=r"containers: the template needs a container"):
        podspec.check_template(unchecked(template_of()))


# --- collisions with what the operator injects ------------------------------------------------------------

COLLISIONS = [
    pytest.param(
        template_of(container(env=[{"name": "A", "value": "1"}, {"name": "FLEET_DISPATCH", "value": "x"}])),
        r"spec\.template\.spec\.containers\[0\]\.env\[1\]\.name: 'FLEET_DISPATCH' is reserved",
        id="session-env-protocol-name",
    ),
    pytest.param(
        template_of(container("proxy"), container(env=[{"name": "FLEET_MINE", "value": "x"}])),
        r"containers\[1\]\.env\[0\]\.name: 'FLEET_MINE' is reserved.*rename the variable",
        id="session-env-fleet-prefix",
    ),
    pytest.param(
        template_of(container(), volumes=[{"name": "fleet-token", "emptyDir": {}}]),
        r"spec\.template\.spec\.volumes\[0\]\.name: the volume name 'fleet-token' is reserved",
        id="volume-fleet-token",
    ),
    pytest.param(
        template_of(container(), volumes=[{"name": "data", "emptyDir": {}}, {"name": "fleet-state"}]),
        r"volumes\[1\]\.name: the volume name 'fleet-state' is reserved.*rename",
        id="volume-fleet-state",
    ),
    pytest.param(
        template_of(
            container(volumeMounts=[{"name": "data", "mountPath": "/var/run/fleet"}]),
            volumes=[{"name": "data", "emptyDir": {}}],
        ),
        r"containers\[0\]\.volumeMounts\[0\]\.mountPath: '/var/run/fleet' is inside .*elsewhere",
        id="mount-at-state-dir",
    ),
    pytest.param(
        template_of(
            container(),
            container("proxy", volumeMounts=[{"name": "data", "mountPath": "/var/run/fleet/cache/"}]),
            volumes=[{"name": "data", "emptyDir": {}}],
        ),
        r"containers\[1\]\.volumeMounts\[0\]\.mountPath: '/var/run/fleet/cache/' is inside",
        id="mount-below-state-dir-in-a-sidecar",
    ),
    pytest.param(
        template_of(
            container(volumeMounts=[{"name": "data", "mountPath": "/var/run/other/../fleet/x"}]),
            volumes=[{"name": "data", "emptyDir": {}}],
        ),
        r"volumeMounts\[0\]\.mountPath: '/var/run/other/\.\./fleet/x' is inside",
        id="mount-below-state-dir-unnormalised",
    ),
    pytest.param(
        template_of(
            container(),
            initContainers=[container("setup", volumeMounts=[{"name": "fleet-token", "mountPath": "/t"}])],
        ),
        r"initContainers\[0\]\.volumeMounts\[0\]\.name: 'fleet-token' is reserved",
        id="mount-named-fleet-token",
    ),
    pytest.param(
        template_of(container(volumeMounts=[{"name": "fleet-state", "mountPath": "/state"}])),
        r"containers\[0\]\.volumeMounts\[0\]\.name: 'fleet-state' is reserved",
        id="mount-named-fleet-state",
    ),
    pytest.param(
        template_of(container(terminationMessagePath="/dev/termination-log")),
        r"containers\[0\]\.terminationMessagePath: must be /var/run/fleet/outcome\.json or left out",
        id="termination-message-path",
    ),
    pytest.param(
        template_of(container(), initContainers=[container("fleet-supervisor")]),
        r"initContainers\[0\]\.name: the container name 'fleet-supervisor' is reserved",
        id="init-container-fleet-supervisor",
    ),
    pytest.param(
        template_of(container(), hostPID=True),
        r"spec\.template\.spec\.hostPID: must be false or left out",
        id="host-pid",
    ),
    pytest.param(
        template_of(container(), securityContext={"runAsUser": 0}),
        r"spec\.template\.spec\.securityContext\.runAsUser: 0 \(root\) for spec\.template\.spec\.containers"
        r"\[0\] conflicts with runAsNonRoot \(the operator defaults",
        id="root-with-default-non-root",
    ),
    pytest.param(
        template_of(
            container(securityContext={"runAsUser": 0, "runAsNonRoot": True}),
            securityContext={"runAsNonRoot": False},
        ),
        r"containers\[0\]\.securityContext\.runAsUser: 0 \(root\) .* \(spec\.template\.spec\.containers\[0\]"
        r"\.securityContext\.runAsNonRoot is true\)",
        id="root-with-explicit-non-root",
    ),
]


@pytest.mark.parametrize(("template", "message"), COLLISIONS)
def test_a_collision_with_the_injected_parts_is_refused_naming_the_field(
    template: dict[str, Any], message: str
) -> None:
    try:
        spec = parsed(template)
    except InvalidSpec:
        spec = unchecked(template)  # api refuses this one too; the builder must not rely on that
    before = copy.deepcopy(template)
    with pytest.raises(InvalidSpec, match=message) as checked:
        podspec.check_template(spec)
    with pytest.raises(InvalidSpec) as built:
        podspec.build_pod(REF, spec, template, FIRST, NOW, SETTINGS)
    assert str(built.value) == str(checked.value)
    assert template == before


def test_the_raw_template_is_checked_too_when_it_says_more_than_the_model() -> None:
    spec = parsed(template_of(container()))
    raw = template_of(container(env=[{"name": "FLEET_ATTEMPT", "value": "9"}]))
    with pytest.raises(InvalidSpec, match=r"env\[0\]\.name: 'FLEET_ATTEMPT' is reserved"):
        podspec.build_pod(REF, spec, raw, FIRST, NOW, SETTINGS)


def test_several_problems_are_reported_at_once() -> None:
    template = template_of(
        container(env=[{"name": "FLEET_X"}], terminationMessagePath="/tmp/out"),
        volumes=[{"name": "fleet-token", "emptyDir": {}}],
    )
    with pytest.raises(InvalidSpec) as error:
        podspec.check_template(parsed(template))
    assert [clause.split(":")[0] for clause in str(error.value).split("; ")] == [
        "spec.template.spec.volumes[0].name",
        "spec.template.spec.containers[0].env[0].name",
        "spec.template.spec.containers[0].terminationMessagePath",
    ]


@pytest.mark.parametrize(
    "template",
    [
        pytest.param(
            template_of(container(), container("proxy", env=[{"name": "FLEET_X"}])), id="sidecar-env"
        ),
        pytest.param(
            template_of(
                container(volumeMounts=[{"name": "d", "mountPath": "/var/run/fleetx"}]),
                volumes=[{"name": "d", "emptyDir": {}}],
            ),
            id="mount-beside-state-dir",
        ),
        pytest.param(
            template_of(
                container(volumeMounts=[{"name": "d", "mountPath": "/var/run"}]),
                volumes=[{"name": "d", "emptyDir": {}}],
            ),
            id="mount-above-state-dir",
        ),
        pytest.param(template_of(container(terminationMessagePath=OUTCOME)), id="outcome-path-repeated"),
        pytest.param(
            template_of(container(), container("proxy", terminationMessagePath="/dev/termination-log")),
            id="sidecar-termination-path",
        ),
        pytest.param(
            template_of(container(), securityContext={"runAsUser": 0, "runAsNonRoot": False}),
            id="root-allowed",
        ),
        pytest.param(
            template_of(container(securityContext={"runAsUser": 1000}), securityContext={"runAsUser": 0}),
            id="root-pod-overridden-by-session",
        ),
    ],
)
def test_templates_near_the_reserved_names_are_accepted(template: dict[str, Any]) -> None:
    podspec.check_template(parsed(template))
    build(template)


# --- metadata and pod-level fields ------------------------------------------------------------------------


def test_metadata_names_labels_and_owns_the_pod() -> None:
    template = template_of(container())
    template["metadata"] = {
        "labels": {"team": "a", podspec.ATTEMPT_LABEL: "7", podspec.DISPATCH_LABEL: "x"},
        "annotations": {"note": "kept"},
    }
    pod = build(template, request=AttemptRequest(attempt=3, resume=False, resume_token=None))
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert pod["metadata"] == {
        "name": "review-3",
        "namespace": "team-a",
        "labels": {"team": "a", podspec.DISPATCH_LABEL: "review", podspec.ATTEMPT_LABEL: "3"},
        "annotations": {"note": "kept", podspec.DEFAULT_CONTAINER_ANNOTATION: "session"},
        "ownerReferences": [
            {
                "apiVersion": "fleet.dispatch.dev/v1alpha1",
                "kind": "FleetDispatch",
                "name": "review",
                "uid": "0b1c2d3e",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def test_pod_names_are_deterministic_and_fit() -> None:
    assert podspec.pod_name("review", 12) == "review-12"
    longest = "a" * models.MAX_DISPATCH_NAME
    assert len(podspec.pod_name(longest, 10_000)) <= 253
    with pytest.raises(ValueError, match="from 1"):
        podspec.pod_name("review", 0)
    with pytest.raises(InvalidSpec, match=r"metadata\.name"):
        podspec.build_pod(
            DispatchRef("a" * 64, "ns", "u"),
            parsed(template_of(container())),
            template_of(container()),
            FIRST,
            NOW,
            SETTINGS,
        )


def test_pod_level_fields_are_set_and_the_state_volume_added() -> None:
    volumes = [{"name": "work", "persistentVolumeClaim": {"claimName": "work"}}]
    pod = build(template_of(container(), volumes=volumes, restartPolicy="Never", nodeSelector={"a": "b"}))
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["shareProcessNamespace"] is True
    # ... and the supervisor is told so: every process of the pod but PID 1 is then the session's.
    assert "--pid-namespace=pod" in supervisor_of(pod)["command"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"a": "b"}
    assert spec["volumes"] == [*volumes, {"name": "fleet-state", "emptyDir": {}}]
    assert "serviceAccountName" not in spec


def test_an_explicit_automount_choice_is_kept() -> None:
    assert build(template_of(container(), automountServiceAccountToken=True))["spec"][
        "automountServiceAccountToken"
    ]


def test_a_user_termination_message_policy_is_kept() -> None:
    pod = build(template_of(container(terminationMessagePolicy="File")))
    assert session_of(pod)["terminationMessagePolicy"] == "File"


# --- the session's environment ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (AttemptRequest(1, False, None), {}),
        (AttemptRequest(2, True, None), {"FLEET_RESUME": "1"}),
        (AttemptRequest(3, True, "sess-42"), {"FLEET_RESUME": "1", "FLEET_RESUME_TOKEN": "sess-42"}),
        (AttemptRequest(4, False, "sess-43"), {"FLEET_RESUME_TOKEN": "sess-43"}),
        (AttemptRequest(5, True, ""), {"FLEET_RESUME": "1", "FLEET_RESUME_TOKEN": ""}),
    ],
)
def test_resume_variables_only_when_asked(request_: AttemptRequest, expected: dict[str, str]) -> None:
    pod = build(template_of(container()), request=request_, timeouts={"deadlineSeconds": 90})
    env = fleet_env(session_of(pod))
    assert env == {
        "FLEET_DISPATCH": "team-a/review",
        "FLEET_ATTEMPT": str(request_.attempt),
        "FLEET_SESSION_DEADLINE": str(int(NOW) + 90),
        "FLEET_STATE_DIR": "/var/run/fleet",
        **expected,
    }
    assert set(env) <= {
        protocol.ENV_DISPATCH,
        protocol.ENV_ATTEMPT,
        protocol.ENV_SESSION_DEADLINE,
        protocol.ENV_STATE_DIR,
        protocol.ENV_RESUME,
        protocol.ENV_RESUME_TOKEN,
    }


def test_a_resume_token_is_escaped_from_kubernetes_variable_expansion() -> None:
    token = "id-$(FLEET_DISPATCH)-$$-$HOME"
    pod = build(template_of(container()), request=AttemptRequest(2, True, token))
    value = fleet_env(session_of(pod))["FLEET_RESUME_TOKEN"]
    assert value == "id-$$(FLEET_DISPATCH)-$$$$-$$HOME"
    assert expand(value) == token


# --- security ---------------------------------------------------------------------------------------------


def test_a_plain_template_gets_the_restricted_defaults() -> None:
    template = template_of(container(), container("proxy"), initContainers=[container("setup")])
    pod = build(template)
    assert restricted_violations(pod) == []
    assert pod["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": SETTINGS.default_run_as_user,
    }
    for item in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]:
        assert item["securityContext"]["allowPrivilegeEscalation"] is False, item["name"]
        assert item["securityContext"]["capabilities"]["drop"] == ["ALL"], item["name"]


def test_the_heartbeat_pod_is_restricted_too() -> None:
    assert restricted_violations(build(template_of(container()), settings=HEARTBEAT)) == []


def test_the_checker_sees_what_the_user_chose_to_allow() -> None:
    template = template_of(container(securityContext={"allowPrivilegeEscalation": True}))
    assert restricted_violations(build(template)) == ["session: allowPrivilegeEscalation is not false"]


@pytest.mark.parametrize(
    ("pod_security", "session_security", "uid", "pod_uid"),
    [
        pytest.param({}, {}, SETTINGS.default_run_as_user, SETTINGS.default_run_as_user, id="default"),
        pytest.param({"runAsUser": 1000}, {}, 1000, 1000, id="pod-level"),
        pytest.param({}, {"runAsUser": 2000}, 2000, None, id="container-level"),
        pytest.param({"runAsUser": 1000}, {"runAsUser": 3000}, 3000, 1000, id="container-overrides-pod"),
    ],
)
def test_the_supervisor_runs_as_the_sessions_effective_uid(
    pod_security: dict[str, Any], session_security: dict[str, Any], uid: int, pod_uid: int | None
) -> None:
    template = template_of(
        container(securityContext=dict(session_security)), securityContext=dict(pod_security)
    )
    pod = build(template)
    assert supervisor_of(pod)["securityContext"]["runAsUser"] == uid
    assert pod["spec"]["securityContext"].get("runAsUser") == pod_uid
    assert session_of(pod)["securityContext"].get("runAsUser") == session_security.get("runAsUser")
    assert restricted_violations(pod) == []


@pytest.mark.parametrize(
    ("pod_security", "session_security", "gid"),
    [
        ({}, {}, None),
        ({"runAsGroup": 55}, {}, 55),
        ({}, {"runAsGroup": 44}, 44),
        ({"runAsGroup": 55}, {"runAsGroup": 44}, 44),
    ],
)
def test_the_supervisor_runs_in_the_sessions_effective_group(
    pod_security: dict[str, Any], session_security: dict[str, Any], gid: int | None
) -> None:
    template = template_of(
        container(securityContext=dict(session_security)), securityContext=dict(pod_security)
    )
    assert supervisor_of(build(template))["securityContext"].get("runAsGroup") == gid


def test_the_supervisor_is_locked_down() -> None:
    security = supervisor_of(build(template_of(container())))["securityContext"]
    assert security == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": SETTINGS.default_run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def test_user_security_choices_are_kept() -> None:
    session_security = {
        "allowPrivilegeEscalation": True,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["NET_RAW"]},
        "runAsUser": 1234,
        "readOnlyRootFilesystem": False,
    }
    pod_security = {
        "runAsNonRoot": False,
        "seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"},
    }
    template = template_of(
        container(securityContext=copy.deepcopy(session_security)),
        container("proxy", securityContext={"capabilities": {"add": ["NET_BIND_SERVICE"]}}),
        container("debug", securityContext={"privileged": True}),
        container("mount", securityContext={"capabilities": {"add": ["SYS_ADMIN"]}}),
        securityContext=copy.deepcopy(pod_security),
    )
    pod = build(template)
    assert session_of(pod)["securityContext"] == session_security
    assert pod["spec"]["securityContext"] == pod_security  # no default UID: the session set one
    # An add without a drop gets the drop, and adds apply on top of it.
    assert session_of(pod, "proxy")["securityContext"] == {
        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        "allowPrivilegeEscalation": False,
    }
    # The API server refuses allowPrivilegeEscalation: false with privileged or SYS_ADMIN: not defaulted.
    assert "allowPrivilegeEscalation" not in session_of(pod, "debug")["securityContext"]
    assert "allowPrivilegeEscalation" not in session_of(pod, "mount")["securityContext"]
    supervisor = supervisor_of(pod)["securityContext"]
    assert (supervisor["runAsUser"], supervisor["runAsNonRoot"]) == (1234, False)


def test_a_session_allowed_to_run_as_root_gets_a_root_supervisor() -> None:
    pod = build(template_of(container(), securityContext={"runAsUser": 0, "runAsNonRoot": False}))
    supervisor = supervisor_of(pod)["securityContext"]
    assert (supervisor["runAsUser"], supervisor["runAsNonRoot"]) == (0, False)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is False


# --- the supervisor ---------------------------------------------------------------------------------------

NON_DEFAULT: dict[str, Any] = {
    "timeouts": {
        "deadlineSeconds": 900,
        "maxExtensionSeconds": 1800,
        "idleOutputSeconds": 120,
        "killGraceSeconds": 7,
    },
    "activity": {
        "pollSeconds": 15,
        "cpuPercentThreshold": 25,
        "apiEndpoints": ["models.anthropic.com:443", "[::1]:8443", ":8080"],
        "outputPaths": ["transcript.jsonl", "logs/agent.log"],
    },
}


def expected_config(attempt: int, **heartbeat: Any) -> SupervisorConfig:
    return SupervisorConfig(
        deadline_seconds=900,
        max_extension_seconds=1800,
        idle_output_seconds=120,
        kill_grace_seconds=7,
        poll_seconds=15,
        cpu_percent_threshold=25,
        api_endpoints=("models.anthropic.com:443", "[::1]:8443", ":8080"),
        output_paths=("transcript.jsonl", "logs/agent.log"),
        state_dir="/var/run/fleet",
        dispatch="team-a/review",
        attempt=str(attempt),
        report_file="/dev/termination-log",
        pid_namespace="pod",
        **heartbeat,
    )


def test_the_supervisor_command_round_trips_to_the_spec() -> None:
    request = AttemptRequest(4, True, None)
    command = supervisor_of(build(template_of(container()), request=request, **NON_DEFAULT))["command"]
    assert command[:2] == ["fleetdispatch", "supervise"]
    assert SupervisorConfig.parse(command[2:], environ={}) == expected_config(4)


def test_the_supervisor_command_round_trips_with_the_heartbeat() -> None:
    pod = build(template_of(container()), settings=HEARTBEAT, **NON_DEFAULT)
    command = supervisor_of(pod)["command"]
    assert SupervisorConfig.parse(command[2:], environ={}) == expected_config(
        1,
        pod_name="review-1",
        namespace="team-a",
        token_file="/var/run/fleet-token/token",
        ca_file="/var/run/fleet-token/ca.crt",
        heartbeat_seconds=HEARTBEAT.heartbeat_seconds,
    )


def test_supervisor_arguments_are_escaped_from_kubernetes_variable_expansion() -> None:
    spec: dict[str, Any] = {"activity": {"outputPaths": ["out/$(HOME)$$.log"]}}
    command = supervisor_of(build(template_of(container()), **spec))["command"]
    config = SupervisorConfig.parse([expand(arg) for arg in command[2:]], environ={})
    assert config.output_paths == ("out/$(HOME)$$.log",)


def test_the_supervisor_is_the_first_init_container_and_a_native_sidecar() -> None:
    settings = OperatorSettings(
        supervisor_image="registry.local/fd:dev", supervisor_image_pull_policy="Always"
    )
    template = template_of(
        container(), initContainers=[container("setup"), container("mesh", restartPolicy="Always")]
    )
    pod = build(template, settings=settings)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["fleet-supervisor", "setup", "mesh"]
    supervisor = supervisor_of(pod)
    assert supervisor["restartPolicy"] == "Always"
    assert supervisor["image"] == "registry.local/fd:dev"
    assert supervisor["imagePullPolicy"] == "Always"
    assert supervisor["resources"] == {
        "requests": {"cpu": "10m", "memory": "32Mi"},
        "limits": {"memory": "64Mi"},
    }
    assert supervisor["volumeMounts"] == [{"name": "fleet-state", "mountPath": "/var/run/fleet"}]
    assert "env" not in supervisor  # its markers are flags: it must not look like a session process
    for name in ("setup", "mesh"):
        item = named(pod["spec"]["initContainers"], name)
        assert "volumeMounts" not in item and "env" not in item


# --- the heartbeat ----------------------------------------------------------------------------------------


def token_mounts(pod: Pod) -> dict[str, list[dict[str, Any]]]:
    return {
        item["name"]: [m for m in item.get("volumeMounts") or [] if m["name"] == podspec.TOKEN_VOLUME]
        for item in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]
    }


def test_without_a_heartbeat_account_no_token_reaches_the_pod() -> None:
    pod = build(template_of(container()))
    assert not any(token_mounts(pod).values())
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["fleet-state"]
    assert not [
        arg for arg in supervisor_of(pod)["command"] if arg.startswith(("--token-file", "--pod-name"))
    ]


def test_the_heartbeat_token_is_mounted_into_the_supervisor_only() -> None:
    pod = build(template_of(container(), container("proxy")), settings=HEARTBEAT)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "fleet-heartbeat"
    assert spec["automountServiceAccountToken"] is False
    # Its pod's uid, for the Lease's owner reference (the Lease goes with the pod).
    assert supervisor_of(pod)["env"] == [
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}
    ]
    assert token_mounts(pod) == {
        "fleet-supervisor": [{"name": "fleet-token", "mountPath": "/var/run/fleet-token", "readOnly": True}],
        "session": [],
        "proxy": [],
    }
    assert session_of(pod)["volumeMounts"] == [{"name": "fleet-state", "mountPath": "/var/run/fleet"}]
    assert named(spec["volumes"], "fleet-token") == {
        "name": "fleet-token",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ]
        },
    }


@pytest.mark.parametrize(
    ("pod_fields", "on"),
    [
        pytest.param({"serviceAccountName": "fleet-heartbeat"}, True, id="same-account"),
        pytest.param({"serviceAccountName": "builder"}, False, id="own-account-wins"),
        pytest.param({"serviceAccount": "builder"}, False, id="own-deprecated-account-wins"),
        pytest.param({"automountServiceAccountToken": True}, False, id="automount-would-leak-the-token"),
        pytest.param({"automountServiceAccountToken": False}, True, id="automount-off-explicitly"),
    ],
)
def test_the_templates_own_account_choices_win_over_the_heartbeat(
    pod_fields: dict[str, Any], on: bool
) -> None:
    pod = build(template_of(container(), **pod_fields), settings=HEARTBEAT)
    assert any(token_mounts(pod).values()) is on
    assert ("fleet-token" in [v["name"] for v in pod["spec"]["volumes"]]) is on
    assert (
        pod["spec"].get("serviceAccountName") == "fleet-heartbeat"
    ) is on or "serviceAccountName" in pod_fields
    for key, value in pod_fields.items():
        assert pod["spec"][key] == value


# --- purity -----------------------------------------------------------------------------------------------


def rich_template() -> dict[str, Any]:
    return {
        "metadata": {"labels": {"team": "a"}, "annotations": {"note": "x"}},
        "spec": {
            "containers": [
                container("session", env=[{"name": "A", "value": "1"}], securityContext={"runAsUser": 5}),
                container("proxy", volumeMounts=[{"name": "work", "mountPath": "/work"}]),
            ],
            "initContainers": [container("setup")],
            "volumes": [{"name": "work", "emptyDir": {}}],
            "securityContext": {"fsGroup": 5},
        },
    }


@pytest.mark.parametrize("settings", [SETTINGS, HEARTBEAT], ids=["plain", "heartbeat"])
def test_the_template_is_never_mutated_nor_shared(settings: OperatorSettings) -> None:
    template = rich_template()
    before = copy.deepcopy(template)
    pod = build(template, request=AttemptRequest(2, True, "t"), settings=settings, **NON_DEFAULT)
    assert template == before
    session_of(pod)["env"].append({"name": "B"})
    session_of(pod, "proxy")["volumeMounts"].clear()
    pod["spec"]["volumes"].clear()
    pod["spec"]["securityContext"]["fsGroup"] = 6
    pod["metadata"]["labels"]["team"] = "b"
    pod["metadata"]["annotations"].clear()
    assert template == before


def test_the_same_inputs_build_the_same_pod() -> None:
    first = build(rich_template(), request=AttemptRequest(2, True, "t"), settings=HEARTBEAT, **NON_DEFAULT)
    second = build(rich_template(), request=AttemptRequest(2, True, "t"), settings=HEARTBEAT, **NON_DEFAULT)
    assert first == second
    assert json.dumps(first) == json.dumps(second)  # key order too


# --- for real, in the dev cluster -------------------------------------------------------------------------
