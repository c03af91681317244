"""The pod of one attempt: a dispatch's template turned into the pod the operator creates.

`build_pod(ref, spec, template, request, now, settings)` is a pure function from the dispatch, the attempt
and the operator's settings to a v1 Pod (a plain dict, ready to send). It adds to the template what design
section 2 asks for and nothing else:

- The supervisor, as a native sidecar (`initContainers[0]` with `restartPolicy: Always`) running
  `fleetdispatch supervise` with the spec's timeouts and activity as flags (`SupervisorConfig.to_args`).
  It comes before the user's init containers, so it watches from the attempt's start: the time the user's
  init containers take counts against the budget, as the pod's lifetime does for a Job's
  `activeDeadlineSeconds`. Its markers (`--dispatch`, `--attempt`) are flags, never environment variables,
  because the supervisor recognises session processes by those variables and must not count itself. The
  session can read its command line through the shared process namespace, so the command carries no
  secret: the heartbeat token is a file mounted into the supervisor alone.
- The shared state volume (`fleet-state`, an `emptyDir`) at `/var/run/fleet` in the session container and
  the supervisor only; the session protocol's environment, appended after the user's `env` (whose names
  may not start with `FLEET_`; `env` wins over `envFrom`, so a ConfigMap cannot shadow the names the
  operator sets); the session's `terminationMessagePath` at `/var/run/fleet/outcome.json`, so the outcome
  reaches the operator through the pod status (`FallbackToLogsOnError` unless the template chose a policy).
- With `spec.workspace`: the dispatch's claim `<dispatch>-workspace` (the volume `fleet-workspace`) at
  `workspace.mountPath` in the session container alone, in every attempt (`core.workspace` builds the claim).
- The name `<dispatch>-<attempt>`, the dispatch and attempt labels (over any the template sets) and a
  controller owner reference to the dispatch, so pods are found by label and garbage-collected with it.
- Kubernetes expands `$(VAR)` in `command`, `args` and `env` values, and `$$` is a literal `$`: every value
  the operator injects has its `$` doubled, so a resume token or an output path arrives verbatim.
- `restartPolicy: Never` and `shareProcessNamespace: true` (the supervisor watches and signals the session's
  processes); `automountServiceAccountToken: false` unless the template set it, so no credential reaches
  the session by default.
- Security defaults for the Pod Security Standard "restricted", each applied only where the template left
  the field unset: `runAsNonRoot: true` and `seccompProfile: RuntimeDefault` on the pod; the pod's
  `runAsUser` (`settings.default_run_as_user`) when neither the pod nor the session container sets one; on
  every container `allowPrivilegeEscalation: false` and `capabilities.drop: [ALL]` (kept `add`s still
  apply on top of the drop). Another container that sets no `runAsUser` while the session does runs as its
  image's user, which then must not be root unless the template says `runAsNonRoot: false`. Escalation is
  not defaulted off for a container that is `privileged` or adds `SYS_ADMIN`, because the API server
  refuses that combination: a default must never make a valid template invalid. The supervisor runs as
  the session's effective UID and GID (it must read the session's `/proc/PID/io` and signal it) with a
  read-only root filesystem and no capabilities. Its requests and limits are the operator's settings
  (`supervisor_resources`: 10m CPU and 32 MiB requested, 64 MiB limit, by default).
- The optional Lease heartbeat, on when `settings.heartbeat_service_account` is set: the pod runs as that
  account, and a projected token (plus the cluster CA) is mounted read-only into the supervisor alone at
  `/var/run/fleet-token`. The pod's name and namespace go to the supervisor as flags (the name is known
  here, being deterministic), not through the downward API, so the command line says all the supervisor
  does. The template's own choices win: a template that names another service account, or sets
  `automountServiceAccountToken: true` (which would hand the Lease-writing token to the session too), gets
  no heartbeat; the supervisor enforces locally all the same.

`check_template` refuses what a template may not contain because the operator injects it (the `FLEET_*`
variables, the reserved volume and container names, mounts in the state directory, another termination
message path), plus two templates the pod would fail on: `hostPID` (Kubernetes refuses it with a shared
process namespace) and a container that runs as root while `runAsNonRoot` is true (by the operator's
default or the user's own), which the kubelet would refuse to start. Each message names the field and the
fix. `models.parse_spec` already refuses some of these; they are checked again here so that the builder is
safe on any spec it is handed.

Deliberately not here: deciding whether an attempt is due, reading or writing the cluster, reading a clock
(`now` is passed in), and anything the API server checks on its own (images, resource quantities).
`envFrom` is not inspected: its keys are unknown until the pod starts, and `env` wins over it anyway.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
from collections.abc import Mapping
from typing import Any

from fleetdispatch.api import models, names
from fleetdispatch.api.names import ATTEMPT_LABEL, DISPATCH_LABEL
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.session import protocol
from fleetdispatch.session.config import SupervisorConfig

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
SUPERVISOR_REPORT_PATH = "/dev/termination-log"
TOKEN_VOLUME = "fleet-token"

TOKEN_DIR = "/var/run/fleet-token"
TOKEN_FILE = f"{TOKEN_DIR}/token"
CA_FILE = f"{TOKEN_DIR}/ca.crt"
TOKEN_EXPIRATION_SECONDS = 3600
OUTCOME_PATH = f"{names.STATE_DIR}/{protocol.OUTCOME_FILE}"
RESERVED_ENV_PREFIX = "FLEET_"

_TEMPLATE = "spec.template.spec"
_RESERVED_VOLUMES = {
    names.STATE_VOLUME: f"shared state volume at {names.STATE_DIR}",
    TOKEN_VOLUME: f"heartbeat token mounted into the supervisor at {TOKEN_DIR}",
}


@dataclasses.dataclass(frozen=True)
class DispatchRef:
    """The dispatch a pod belongs to, as its owner reference names it."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        """The controller owner reference to the dispatch (its pods, its Delete-policy workspace claim)."""
        return {
            "apiVersion": names.API_VERSION,
            "kind": "FleetDispatch",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclasses.dataclass(frozen=True)
class AttemptRequest:
    """What the lifecycle decided about the attempt the pod runs."""

    attempt: int
    """1-based."""
    resume: bool
    """The attempt continues an earlier one: the session gets `FLEET_RESUME=1`."""
    resume_token: str | None
    """The earlier attempt's token, passed as `FLEET_RESUME_TOKEN` when not None."""


def pod_name(dispatch_name: str, attempt: int) -> str:
    """`<dispatch>-<attempt>`: a dispatch name has at most 63 characters, so this always fits a pod name."""
    if attempt < 1:
        raise ValueError(f"attempts are numbered from 1, got {attempt}")
    return f"{dispatch_name}-{attempt}"


def supervisor_resources(settings: OperatorSettings) -> dict[str, dict[str, str]]:
    """The supervisor sidecar's requests and limits (`settings.supervisor_*`); no CPU limit unless set."""
    limits = {"memory": settings.supervisor_memory_limit}
    if settings.supervisor_cpu_limit is not None:
        limits["cpu"] = settings.supervisor_cpu_limit
    requests = {"cpu": settings.supervisor_cpu_request, "memory": settings.supervisor_memory_request}
    return {"requests": requests, "limits": limits}


def check_template(spec: models.FleetDispatchSpec) -> None:
    """Raise `models.InvalidSpec` when the template collides with what the operator injects into the pod."""
    template = spec.template.model_dump(by_alias=True, exclude_none=True, warnings=False)
    _check(template)


def build_pod(  # noqa: PLR0917 - one argument per input of the pure function, all required
    ref: DispatchRef,
    spec: models.FleetDispatchSpec,
    template: Mapping[str, Any],
    request: AttemptRequest,
    now: float,
    settings: OperatorSettings,
) -> dict[str, Any]:
    """The pod of one attempt. `template` is the raw `spec.template`, `now` epoch seconds; nothing is mutated.

    Raises `models.InvalidSpec` for a template the operator cannot run (see `check_template`).
    """
    check_template(spec)
    models.check_name(ref.name)
    # The raw template is what the pod is built from; it is checked too, in case it says more than the model.
    _check(template)
    _check_workspace(spec, template)
    name = pod_name(ref.name, request.attempt)
    raw = copy.deepcopy(dict(template))
    metadata: dict[str, Any] = raw.get("metadata") or {}
    pod_spec: dict[str, Any] = raw.get("spec") or {}
    containers: list[dict[str, Any]] = pod_spec.get("containers") or []
    session = containers[_session_index(containers)]

    heartbeat_account = _heartbeat_account(pod_spec, settings)
    if heartbeat_account is not None:
        pod_spec["serviceAccountName"] = heartbeat_account
    pod_spec["restartPolicy"] = "Never"
    pod_spec["shareProcessNamespace"] = True
    if pod_spec.get("automountServiceAccountToken") is None:
        pod_spec["automountServiceAccountToken"] = False

    pod_security = dict(pod_spec.get("securityContext") or {})
    session_security: Mapping[str, Any] = session.get("securityContext") or {}
    _default(pod_security, "runAsNonRoot", True)
    _default(pod_security, "seccompProfile", {"type": "RuntimeDefault"})
    if pod_security.get("runAsUser") is None and session_security.get("runAsUser") is None:
        pod_security["runAsUser"] = settings.default_run_as_user
    pod_spec["securityContext"] = pod_security

    state_mount = {"name": names.STATE_VOLUME, "mountPath": names.STATE_DIR}
    session["env"] = [*(session.get("env") or []), *_session_env(ref, spec, request, now)]
    session["volumeMounts"] = [*(session.get("volumeMounts") or []), state_mount, *_workspace_mounts(spec)]
    session["terminationMessagePath"] = OUTCOME_PATH
    _default(session, "terminationMessagePolicy", "FallbackToLogsOnError")

    init_containers: list[dict[str, Any]] = pod_spec.get("initContainers") or []
    for container in [*containers, *init_containers]:
        _harden(container)

    config = _supervisor_config(
        ref, spec, request.attempt, name if heartbeat_account else None, settings.heartbeat_seconds
    )
    supervisor: dict[str, Any] = {
        "name": names.SUPERVISOR_CONTAINER,
        "image": settings.supervisor_image,
        "imagePullPolicy": settings.supervisor_image_pull_policy,
        "restartPolicy": "Always",
        "command": ["fleetdispatch", "supervise", *(_literal(arg) for arg in config.to_args())],
        "resources": supervisor_resources(settings),
        "securityContext": _supervisor_security(pod_security, session_security),
        "volumeMounts": [dict(state_mount)],
        # Its final figures (the extended deadline, the last activity) reach the operator this way.
        "terminationMessagePath": SUPERVISOR_REPORT_PATH,
        "terminationMessagePolicy": "File",
    }
    volumes: list[dict[str, Any]] = [
        *(pod_spec.get("volumes") or []),
        {"name": names.STATE_VOLUME, "emptyDir": {}},
        *_workspace_volumes(ref, spec),
    ]
    if heartbeat_account is not None:
        # The pod's uid is known only once it is created: the downward API hands it to the supervisor.
        supervisor["env"] = [{"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}}]
        volumes.append(_token_volume())
        supervisor["volumeMounts"].append({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True})
    pod_spec["volumes"] = volumes
    pod_spec["initContainers"] = [supervisor, *init_containers]

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ref.namespace,
            "labels": {
                **(metadata.get("labels") or {}),
                DISPATCH_LABEL: ref.name,
                ATTEMPT_LABEL: str(request.attempt),
            },
            # `kubectl logs POD` and `kubectl exec` pick the session, not the supervisor listed first.
            "annotations": {
                DEFAULT_CONTAINER_ANNOTATION: session["name"],
                **(metadata.get("annotations") or {}),
            },
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": pod_spec,
    }


# --- the template's checks ---------------------------------------------------------------------------------


def _check(template: Mapping[str, Any]) -> None:
    problems = _problems(template)
    if problems:
        raise models.InvalidSpec("; ".join(problems))


def _session_index(containers: list[Any]) -> int:
    """Which container is the session (`names.session_container`), or a clear error."""
    index = names.session_container([str(container.get("name")) for container in containers])
    if index is not None:
        return index
    if not containers:
        raise models.InvalidSpec(f"{_TEMPLATE}.containers: the template needs a container, the session")
    raise models.InvalidSpec(
        f"{_TEMPLATE}.containers: with several containers, one must be named "
        f"'{names.SESSION_CONTAINER}' (the process tree the supervisor watches): "
        "rename the session's container"
    )


def _problems(template: Mapping[str, Any]) -> list[str]:
    """One clause per problem, as `models.describe` writes them (so no clause contains "; ")."""
    pod: Mapping[str, Any] = template.get("spec") or {}
    containers: list[Any] = pod.get("containers") or []
    session_index = _session_index(containers)
    problems: list[str] = []
    for index, volume in enumerate(pod.get("volumes") or []):
        name = volume.get("name")
        if name in _RESERVED_VOLUMES:
            problems.append(
                f"{_TEMPLATE}.volumes[{index}].name: the volume name {name!r} is reserved for the "
                f"{_RESERVED_VOLUMES[name]}, so rename the volume and its mounts"
            )
    if pod.get("hostPID") is True:
        problems.append(
            f"{_TEMPLATE}.hostPID: must be false or left out: the session and the supervisor share the pod's "
            "process namespace (shareProcessNamespace), which Kubernetes refuses together with hostPID"
        )
    pod_security: Mapping[str, Any] = pod.get("securityContext") or {}
    for field, items in (("containers", containers), ("initContainers", pod.get("initContainers") or [])):
        for index, container in enumerate(items):
            where = f"{_TEMPLATE}.{field}[{index}]"
            if container.get("name") == names.SUPERVISOR_CONTAINER:
                problems.append(
                    f"{where}.name: the container name '{names.SUPERVISOR_CONTAINER}' is reserved for the "
                    "injected supervisor sidecar, so rename the container"
                )
            problems += _mount_problems(where, container)
            problems += _root_problems(where, container, pod_security)
    session = containers[session_index]
    where = f"{_TEMPLATE}.containers[{session_index}]"
    for index, variable in enumerate(session.get("env") or []):
        name = str(variable.get("name") or "")
        # FLEET_ITEM is the one a template may set: a FleetCampaign writes it into its dispatches.
        if name.startswith(RESERVED_ENV_PREFIX) and name != names.ITEM_ENV:
            problems.append(
                f"{where}.env[{index}].name: {name!r} is reserved: the operator sets the session's "
                f"{RESERVED_ENV_PREFIX}* variables ({protocol.ENV_DISPATCH}, {protocol.ENV_ATTEMPT}, "
                f"{protocol.ENV_STATE_DIR}, ...), so rename the variable"
            )
    path = session.get("terminationMessagePath")
    if path is not None and path != OUTCOME_PATH:
        problems.append(
            f"{where}.terminationMessagePath: must be {OUTCOME_PATH} or left out, because the session's "
            f"outcome reaches the operator through it (got {path!r}), so remove the field"
        )
    return problems


def _mount_problems(where: str, container: Mapping[str, Any]) -> list[str]:
    problems = []
    for index, mount in enumerate(container.get("volumeMounts") or []):
        name = mount.get("name")
        if name in _RESERVED_VOLUMES:
            problems.append(
                f"{where}.volumeMounts[{index}].name: {name!r} is reserved for the "
                f"{_RESERVED_VOLUMES[name]}, which the operator mounts itself, so remove the mount"
            )
        path = str(mount.get("mountPath") or "")
        normal = posixpath.normpath(path) if path else path
        if normal == names.STATE_DIR or normal.startswith(names.STATE_DIR + "/"):
            problems.append(
                f"{where}.volumeMounts[{index}].mountPath: {path!r} is inside {names.STATE_DIR}, the shared "
                "state directory the operator mounts, so mount the volume elsewhere"
            )
    return problems


def _root_problems(where: str, container: Mapping[str, Any], pod_security: Mapping[str, Any]) -> list[str]:
    """A container that would run as UID 0 while `runAsNonRoot` is true: the kubelet refuses to start it."""
    security: Mapping[str, Any] = container.get("securityContext") or {}
    if security.get("runAsUser") is not None:
        uid, uid_field = security["runAsUser"], f"{where}.securityContext.runAsUser"
    else:
        uid, uid_field = pod_security.get("runAsUser"), f"{_TEMPLATE}.securityContext.runAsUser"
    if uid != 0:
        return []
    if security.get("runAsNonRoot") is not None:
        non_root, why = security["runAsNonRoot"], f"{where}.securityContext.runAsNonRoot is true"
    elif pod_security.get("runAsNonRoot") is not None:
        non_root, why = pod_security["runAsNonRoot"], f"{_TEMPLATE}.securityContext.runAsNonRoot is true"
    else:
        non_root, why = (
            True,
            "the operator defaults runAsNonRoot to true (Pod Security Standard 'restricted')",
        )
    if non_root is not True:
        return []
    return [
        f"{uid_field}: 0 (root) for {where} conflicts with runAsNonRoot ({why}), so the container could not "
        "start: set a non-zero runAsUser, or set runAsNonRoot: false explicitly to run as root"
    ]


def _check_workspace(spec: models.FleetDispatchSpec, template: Mapping[str, Any]) -> None:
    """The workspace's volume name and mountPath are free in the raw template (`models` checks the model)."""
    if spec.workspace is None:
        return
    pod: Mapping[str, Any] = template.get("spec") or {}
    containers: list[Any] = pod.get("containers") or []
    session = containers[_session_index(containers)]
    path = spec.workspace.mount_path
    if any(v.get("name") == names.WORKSPACE_VOLUME for v in pod.get("volumes") or []):
        raise models.InvalidSpec(
            f"{_TEMPLATE}.volumes: the volume name '{names.WORKSPACE_VOLUME}' is reserved for the workspace "
            "claim when spec.workspace is set, so rename the volume and its mounts"
        )
    if any(m.get("mountPath") in (path, path + "/") for m in session.get("volumeMounts") or []):
        raise models.InvalidSpec(
            "spec.workspace.mountPath: already a volumeMount of the session container in the template; "
            "choose another mountPath or remove that volumeMount"
        )


# --- the pod's parts ---------------------------------------------------------------------------------------


def _workspace_mounts(spec: models.FleetDispatchSpec) -> list[dict[str, Any]]:
    if spec.workspace is None:
        return []
    return [{"name": names.WORKSPACE_VOLUME, "mountPath": spec.workspace.mount_path}]


def _workspace_volumes(ref: DispatchRef, spec: models.FleetDispatchSpec) -> list[dict[str, Any]]:
    """The dispatch's claim (`<dispatch>-workspace`, created by the operator before the first attempt)."""
    if spec.workspace is None:
        return []
    claim = ref.name + names.WORKSPACE_SUFFIX
    return [{"name": names.WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}]


def _default(mapping: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` unless the template set it (an explicit null counts as unset, as the API server reads it)."""
    if mapping.get(key) is None:
        mapping[key] = value


def _literal(value: str) -> str:
    """`value` escaped from Kubernetes' `$(VAR)` expansion in `command`, `args` and `env` values."""
    return value.replace("$", "$$")


def _session_env(
    ref: DispatchRef, spec: models.FleetDispatchSpec, request: AttemptRequest, now: float
) -> list[dict[str, str]]:
    values = [
        (protocol.ENV_DISPATCH, f"{ref.namespace}/{ref.name}"),
        (protocol.ENV_ATTEMPT, str(request.attempt)),
        (protocol.ENV_SESSION_DEADLINE, str(int(now + spec.timeouts.deadline_seconds))),
        (protocol.ENV_STATE_DIR, names.STATE_DIR),
    ]
    if request.resume:
        values.append((protocol.ENV_RESUME, "1"))
    if request.resume_token is not None:
        values.append((protocol.ENV_RESUME_TOKEN, request.resume_token))
    return [{"name": name, "value": _literal(value)} for name, value in values]


def _heartbeat_account(pod_spec: Mapping[str, Any], settings: OperatorSettings) -> str | None:
    """The service account that renews the Lease, or None when the heartbeat is off for this pod."""
    account = settings.heartbeat_service_account
    if not account:
        return None
    own = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount")
    if own and own != account:
        return None  # the template's own account wins; it may not be allowed to write Leases
    if pod_spec.get("automountServiceAccountToken") is True:
        return None  # the session would get the Lease-writing token through the automount
    return account


def _token_volume() -> dict[str, Any]:
    return {
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_SECONDS}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ]
        },
    }


def _supervisor_config(
    ref: DispatchRef,
    spec: models.FleetDispatchSpec,
    attempt: int,
    heartbeat_pod: str | None,
    heartbeat_seconds: float = SupervisorConfig.heartbeat_seconds,
) -> SupervisorConfig:
    timeouts, activity = spec.timeouts, spec.activity
    config = SupervisorConfig(
        deadline_seconds=timeouts.deadline_seconds,
        max_extension_seconds=timeouts.max_extension_seconds,
        idle_output_seconds=timeouts.idle_output_seconds,
        kill_grace_seconds=timeouts.kill_grace_seconds,
        poll_seconds=activity.poll_seconds,
        cpu_percent_threshold=activity.cpu_percent_threshold,
        api_endpoints=tuple(activity.api_endpoints),
        output_paths=tuple(activity.output_paths),
        state_dir=names.STATE_DIR,
        dispatch=f"{ref.namespace}/{ref.name}",
        attempt=str(attempt),
        report_file=SUPERVISOR_REPORT_PATH,
        # The pod is built with shareProcessNamespace: every process in it but PID 1 is the session's.
        pid_namespace="pod",
    )
    if heartbeat_pod is None:
        return config
    return dataclasses.replace(
        config,
        pod_name=heartbeat_pod,
        namespace=ref.namespace,
        token_file=TOKEN_FILE,
        ca_file=CA_FILE,
        heartbeat_seconds=heartbeat_seconds,
    )


def _harden(container: dict[str, Any]) -> None:
    """The restricted defaults of one container, where the template left them unset."""
    security = dict(container.get("securityContext") or {})
    capabilities = dict(security.get("capabilities") or {})
    _default(capabilities, "drop", ["ALL"])
    security["capabilities"] = capabilities
    added = {str(name).upper().removeprefix("CAP_") for name in capabilities.get("add") or []}
    # The API server refuses allowPrivilegeEscalation: false with privileged: true or an added SYS_ADMIN.
    if security.get("privileged") is not True and "SYS_ADMIN" not in added:
        _default(security, "allowPrivilegeEscalation", False)
    container["securityContext"] = security


def _supervisor_security(
    pod_security: Mapping[str, Any], session_security: Mapping[str, Any]
) -> dict[str, Any]:
    """The session's effective identity, nothing more: same UID to read its `/proc` and signal it."""

    def effective(key: str) -> Any:
        value = session_security.get(key)
        return pod_security.get(key) if value is None else value

    security: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": effective("runAsNonRoot"),
        "runAsUser": effective("runAsUser"),
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    group = effective("runAsGroup")
    if group is not None:
        security["runAsGroup"] = group
    return security
