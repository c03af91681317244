"""The FleetDispatch and QuotaPool APIs as pydantic models: the only way the operator reads a spec.

The CRDs in `crds/` are the source of truth for users (the API server defaults and validates with them);
these models mirror them field for field, with the same names, types, bounds and defaults, and a test walks
both so they cannot drift apart. The models also repeat the CRDs' CEL rules as validators, because a spec
can still reach the operator invalid (a cluster too old for CEL rules, a CRD installed without them, a
stored object from before a rule existed): `parse_spec` turns any such spec into one readable message that
names the field and the fix, which the operator reports as `Stalled` instead of crashing.

Deliberately not here: how a spec is acted upon (lifecycle, classification, pod building live in their own
modules) and anything that does I/O.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import WithJsonSchema

from fleetdispatch.api import names
from fleetdispatch.api.names import (
    SESSION_CONTAINER,
    STATE_DIR,
    STATE_VOLUME,
    SUPERVISOR_CONTAINER,
    WORKSPACE_VOLUME,
)

# A dispatch name becomes a label value on its pods, and label values are at most 63 characters.
MAX_DISPATCH_NAME = 63

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
API_ENDPOINT = r"^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])?:" + _PORT + "$"
OUTCOME_REASON = r"^[A-Z][A-Za-z0-9]*$"
_PARENT_SEGMENT = re.compile(r"(^|/)[.][.](/|$)")

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Requeued", "Backoff", "Suspended"]
FailureClass = Literal["Logic", "Infrastructure", "Timeout", "Quota"]
ActivityReason = Literal["cpu", "api-connection", "output"]
Action = Literal["Fail", "Retry", "Resume", "Requeue", "Ignore"]
ConditionStatus = Literal["True", "False", "Unknown"]

DnsLabel = Annotated[str, StringConstraints(max_length=63, pattern=DNS_LABEL)]
ApiEndpoint = Annotated[str, StringConstraints(max_length=261, pattern=API_ENDPOINT)]
OutputPath = Annotated[str, StringConstraints(min_length=1, max_length=255)]
OutcomeReason = Annotated[str, StringConstraints(max_length=64, pattern=OUTCOME_REASON)]
ExitCode = Annotated[int, Field(ge=1, le=255)]
MAX_INT32 = 2147483647


class _Spec(BaseModel):
    """A spec part: camelCase on the wire, unknown fields refused, immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True
    )


class _Status(BaseModel):
    """A status part: camelCase on the wire; unknown fields ignored so that operator versions can mix."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


def _unique(values: list[Any], what: str) -> list[Any]:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)
    return values


# --- The pod template -------------------------------------------------------------------------------------


Argument = Annotated[str, StringConstraints(max_length=32768)]


class EnvVar(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, strict=True
    )

    name: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    value: Argument | None = None
    value_from: dict[str, Any] | None = None


class Container(BaseModel):
    """A container of the template. What the session runs is checked (and, in the CRD, immutable); every
    other container field is kept as written, for the API server to check when the pod is created."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True, strict=True
    )

    name: DnsLabel
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    command: Annotated[list[Argument], Field(max_length=256)] | None = None
    args: Annotated[list[Argument], Field(max_length=256)] | None = None
    working_dir: Annotated[str, StringConstraints(max_length=4096)] | None = None
    env: Annotated[list[EnvVar], Field(max_length=256)] | None = None
    volume_mounts: Annotated[list[VolumeMount], Field(max_length=64)] | None = None


class Volume(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    name: DnsLabel


class VolumeMount(BaseModel):
    """A container's volumeMount: its name and path are declared (spec.workspace must not clash with one)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True, strict=True
    )

    name: Annotated[str, StringConstraints(max_length=63)]
    mount_path: Annotated[str, StringConstraints(max_length=4096)]


class PodSpec(BaseModel):
    """A pod spec: the parts the operator relies on are checked, the rest is kept for the API server."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True, strict=True
    )

    containers: Annotated[list[Container], Field(min_length=1, max_length=16)]
    init_containers: Annotated[list[Container], Field(max_length=16)] = []
    volumes: Annotated[list[Volume], Field(max_length=64)] = []
    restart_policy: Annotated[str, StringConstraints(max_length=16)] | None = None
    share_process_namespace: bool | None = None
    active_deadline_seconds: int | None = None

    @model_validator(mode="after")
    def _operator_owned_fields(self) -> PodSpec:
        for field, items in (("containers", self.containers), ("initContainers", self.init_containers)):
            _unique([c.name for c in items], f"{field} name")
            if any(c.name == SUPERVISOR_CONTAINER for c in items):
                raise ValueError(
                    f"{field}: the container name '{SUPERVISOR_CONTAINER}' is reserved for the injected "
                    "supervisor sidecar"
                )
        _unique([v.name for v in self.volumes], "volume name")
        if any(v.name == STATE_VOLUME for v in self.volumes):
            raise ValueError(
                f"volumes: the volume name '{STATE_VOLUME}' is reserved for the shared state volume at "
                f"{STATE_DIR}"
            )
        if self.containers and names.session_container([c.name for c in self.containers]) is None:
            raise ValueError(
                f"containers: with several containers, one must be named '{SESSION_CONTAINER}': it is the "
                "process tree the supervisor watches"
            )
        if self.active_deadline_seconds is not None:
            raise ValueError(
                "activeDeadlineSeconds: use spec.timeouts instead: a pod's activeDeadlineSeconds cannot be "
                "extended while the session is active"
            )
        if self.restart_policy not in (None, "Never"):
            raise ValueError(
                "restartPolicy must be Never (or left out): every attempt is a new pod, and the operator "
                "decides whether to retry"
            )
        if self.share_process_namespace is False:
            raise ValueError(
                "shareProcessNamespace must be true (or left out): the supervisor watches the session's "
                "processes"
            )
        return self

    @property
    def session_container(self) -> Container:
        """The container the supervisor watches (`names.session_container`; validation made sure of it)."""
        index = names.session_container([c.name for c in self.containers])
        assert index is not None, "validated: the template has a session container"
        return self.containers[index]


class TemplateMetadata(_Spec):
    labels: Annotated[dict[str, Annotated[str, StringConstraints(max_length=63)]], Field(max_length=64)] = {}
    annotations: Annotated[
        dict[str, Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=64)
    ] = {}


class PodTemplate(_Spec):
    metadata: TemplateMetadata = TemplateMetadata()
    spec: PodSpec


# --- Supervision and retries ------------------------------------------------------------------------------


class Timeouts(_Spec):
    deadline_seconds: Annotated[int, Field(ge=1, le=604800)] = 3600
    max_extension_seconds: Annotated[int, Field(ge=0, le=604800)] = 7200
    idle_output_seconds: Annotated[int, Field(ge=0, le=604800)] = 1800
    kill_grace_seconds: Annotated[int, Field(ge=0, le=3600)] = 30
    start_seconds: Annotated[int, Field(ge=1, le=604800)] = 600


class Activity(_Spec):
    poll_seconds: Annotated[int, Field(ge=1, le=3600)] = 10
    cpu_percent_threshold: Annotated[int, Field(ge=1, le=10000)] = 10
    api_endpoints: Annotated[list[ApiEndpoint], Field(max_length=32)] = [":443"]
    output_paths: Annotated[list[OutputPath], Field(max_length=16)] = []

    @field_validator("api_endpoints")
    @classmethod
    def _unique_endpoints(cls, value: list[str]) -> list[str]:
        return _unique(value, "apiEndpoints entry")

    @field_validator("output_paths")
    @classmethod
    def _relative_output_paths(cls, value: list[str]) -> list[str]:
        for path in value:
            if path.startswith("/") or _PARENT_SEGMENT.search(path):
                raise ValueError(
                    f"outputPaths entries are relative to {STATE_DIR} and may not contain '..': {path!r}"
                )
        return _unique(value, "outputPaths entry")


class Backoff(_Spec):
    base_seconds: Annotated[int, Field(ge=1, le=3600)] = 10
    max_seconds: Annotated[int, Field(ge=1, le=86400)] = 600
    jitter_percent: Annotated[int, Field(ge=0, le=100)] = 20

    @model_validator(mode="after")
    def _max_not_below_base(self) -> Backoff:
        if self.max_seconds < self.base_seconds:
            raise ValueError("backoff.maxSeconds must be at least backoff.baseSeconds")
        return self


class Retry(_Spec):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    max_resumes: Annotated[int, Field(ge=0, le=100)] = 3
    max_requeues: Annotated[int, Field(ge=0, le=1000)] = 10
    max_infrastructure_failures: Annotated[int, Field(ge=0, le=1000)] = 10
    backoff: Backoff = Backoff()


class OnExitCodes(_Spec):
    operator: Literal["In", "NotIn"]
    values: Annotated[list[ExitCode], Field(min_length=1, max_length=255)]

    @field_validator("values")
    @classmethod
    def _unique_codes(cls, value: list[int]) -> list[int]:
        return _unique(value, "exit code")


class OnOutcome(_Spec):
    reasons: Annotated[list[OutcomeReason], Field(min_length=1, max_length=32)]

    @field_validator("reasons")
    @classmethod
    def _unique_reasons(cls, value: list[str]) -> list[str]:
        return _unique(value, "reason")


class FailurePolicyRule(_Spec):
    action: Action
    on_exit_codes: OnExitCodes | None = None
    on_outcome: OnOutcome | None = None

    @model_validator(mode="after")
    def _exactly_one_matcher(self) -> FailurePolicyRule:
        if (self.on_exit_codes is None) == (self.on_outcome is None):
            raise ValueError("a failurePolicy rule matches on exactly one of onExitCodes or onOutcome")
        return self


class FailurePolicy(_Spec):
    rules: Annotated[list[FailurePolicyRule], Field(max_length=20)] = []


# A budget's cost: a decimal string (the status's cost has the same form: `session.usage.COST_PATTERN`).
BUDGET_COST = r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,12})?$"
_ZERO_COST = re.compile(r"^0(\.0+)?$")


class Budget(_Spec):
    """What the whole dispatch may spend, across all its attempts; each is optional."""

    total_seconds: Annotated[int, Field(ge=1, le=315360000)] | None = None
    tokens: Annotated[int, Field(ge=1, le=10**15)] | None = None
    cost: Annotated[str, StringConstraints(max_length=25, pattern=BUDGET_COST)] | None = None

    @field_validator("cost")
    @classmethod
    def _positive_cost(cls, value: str | None) -> str | None:
        if value is not None and _ZERO_COST.match(value):
            raise ValueError("budget.cost must be greater than 0 (leave it out for no cost budget)")
        return value


# --- The workspace ---------------------------------------------------------------------------------------

AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
# A resource.Quantity, as the API server's own OpenAPI pattern for quantities says.
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY)
_DOT_SEGMENT = re.compile(r"(^|/)[.][.]?(/|$)")


def _quantity(value: int | str) -> int | str:
    if isinstance(value, str) and (len(value) > 64 or not _QUANTITY.fullmatch(value)):
        raise ValueError(f"storage must be a quantity such as 1Gi, got {value!r}")
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema({"x-kubernetes-int-or-string": True, "maxLength": 64, "pattern": QUANTITY}),
]


class _Kept(BaseModel):
    """A part of a Kubernetes object checked where the operator relies on it, the rest kept as written."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", frozen=True, strict=True
    )


class ClaimRequests(_Kept):
    storage: Quantity


class ClaimResources(_Kept):
    requests: ClaimRequests


class ClaimSpec(_Kept):
    """A PersistentVolumeClaim spec (selector, dataSource, ... are kept for the API server to check)."""

    access_modes: Annotated[list[AccessMode], Field(min_length=1, max_length=4)]
    resources: ClaimResources
    storage_class_name: Annotated[str, StringConstraints(max_length=253)] | None = None
    volume_mode: Literal["Filesystem", "Block"] | None = None

    @field_validator("access_modes")
    @classmethod
    def _writable(cls, value: list[str]) -> list[str]:
        _unique(value, "access mode")
        if all(mode == "ReadOnlyMany" for mode in value):
            raise ValueError(
                "the session writes its workspace: accessModes needs ReadWriteOnce, ReadWriteOncePod or "
                "ReadWriteMany"
            )
        return value

    @field_validator("volume_mode")
    @classmethod
    def _filesystem(cls, value: str | None) -> str | None:
        if value not in (None, "Filesystem"):
            raise ValueError(
                "volumeMode must be Filesystem (or left out): the workspace is mounted as a directory"
            )
        return value


class ClaimTemplate(_Spec):
    metadata: TemplateMetadata = TemplateMetadata()
    spec: ClaimSpec


class Workspace(_Spec):
    """`spec.workspace`: the dispatch's claim, mounted into the session container of every attempt."""

    mount_path: Annotated[str, StringConstraints(min_length=2, max_length=1024)] = "/workspace"
    reclaim_policy: Literal["Delete", "Retain"] = "Delete"
    volume_claim_template: ClaimTemplate

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if (
            not path.startswith("/")
            or path.endswith("/")
            or "//" in path
            or _DOT_SEGMENT.search(path) is not None
        ):
            raise ValueError(
                "mountPath must be an absolute path such as /workspace, without a trailing '/', '//' or "
                "'.' and '..' segments"
            )
        if path == STATE_DIR or path.startswith(STATE_DIR + "/"):
            raise ValueError(
                f"mountPath may not be {STATE_DIR} or inside it: that is the shared state directory the "
                "operator mounts"
            )
        return path


class FleetDispatchSpec(_Spec):
    template: PodTemplate
    timeouts: Timeouts = Timeouts()
    activity: Activity = Activity()
    retry: Retry = Retry()
    failure_policy: FailurePolicy | None = None
    quota_pool: Annotated[str, StringConstraints(max_length=253, pattern=DNS_SUBDOMAIN)] | None = None
    suspend: bool = False
    workspace: Workspace | None = None
    budget: Budget | None = None
    # A Job's ttlSecondsAfterFinished: the finished dispatch is deleted that long after; None keeps it.
    ttl_seconds_after_finished: Annotated[int, Field(ge=0, le=MAX_INT32)] | None = None

    @model_validator(mode="after")
    def _workspace_fits_the_template(self) -> FleetDispatchSpec:
        if self.workspace is None:
            return self
        pod = self.template.spec
        if any(v.name == WORKSPACE_VOLUME for v in pod.volumes):
            raise ValueError(
                f"template.spec.volumes: the volume name '{WORKSPACE_VOLUME}' is reserved for the workspace "
                "claim when spec.workspace is set, so rename the volume and its mounts"
            )
        path = self.workspace.mount_path
        mounts = pod.session_container.volume_mounts or []
        if any(m.mount_path in (path, path + "/") for m in mounts):
            raise ValueError(
                "workspace.mountPath is already a volumeMount of the session container in the template; "
                "choose another mountPath or remove that volumeMount"
            )
        return self

    @model_validator(mode="after")
    def _idle_output_measurable(self) -> FleetDispatchSpec:
        idle, poll = self.timeouts.idle_output_seconds, self.activity.poll_seconds
        if idle != 0 and idle < poll:
            raise ValueError(
                f"timeouts.idleOutputSeconds ({idle}) must be 0 (disabled) or at least "
                f"activity.pollSeconds ({poll}), because output growth is measured once per poll"
            )
        return self


# --- Status -----------------------------------------------------------------------------------------------


class Condition(_Status):
    """A metav1.Condition."""

    type: str
    status: ConditionStatus
    observed_generation: int | None = None
    last_transition_time: datetime
    reason: str
    message: str = ""


class Usage(_Status):
    """What a session reported it spent (`session.usage`): one attempt's, or the sum over attempts."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cost: str | None = None
    currency: str | None = None
    model: str | None = None


class AttemptRecord(_Status):
    attempt: int
    pod_name: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    outcome: str | None = None
    exit_code: int | None = None
    failure_class: FailureClass | None = None
    message: str | None = None
    usage: Usage | None = None


class FleetDispatchStatus(_Status):
    observed_generation: int | None = None
    phase: Phase | None = None
    attempt: int = 0
    failures: int = 0
    resumes: int = 0
    requeues: int = 0
    infrastructure_failures: int = 0
    pod_name: str | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    deadline: datetime | None = None
    deadline_cap: datetime | None = None
    last_activity_time: datetime | None = None
    activity_reason: ActivityReason | None = None
    last_output_time: datetime | None = None
    requeue_at: datetime | None = None
    resume_token: str | None = None
    failure_class: FailureClass | None = None
    reason: str | None = None
    message: str | None = None
    usage: Usage | None = None
    attempts: list[AttemptRecord] = []
    conditions: list[Condition] = []
    # The last fleet.dispatch.dev/retry annotation value the operator handled (`lifecycle.retry_mark`).
    retry_handled: str | None = None


class QuotaPoolSpec(_Spec):
    max_concurrent: Annotated[int, Field(ge=1, le=100000)] | None = None
    resumes_per_second: Annotated[int, Field(ge=1, le=1000)] = 20
    description: Annotated[str, StringConstraints(max_length=1024)] | None = None


class QuotaPoolStatus(_Status):
    observed_generation: int | None = None
    exhausted_until: datetime | None = None
    exhausted_by: str | None = None
    running: int = 0
    waiting: int = 0
    requeued: int = 0
    conditions: list[Condition] = []


# --- FleetCampaign ----------------------------------------------------------------------------------------

# An item's variables: C identifiers, like a container's env names in practice; FLEET_* is the operator's.
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
PERCENT = r"^(100|[1-9]?[0-9])%$"
MAX_CAMPAIGN_ITEMS = 5000


class CampaignItem(_Spec):
    name: DnsLabel
    env: Annotated[
        dict[
            Annotated[str, StringConstraints(max_length=256, pattern=ENV_NAME)],
            Annotated[str, StringConstraints(max_length=32768)],
        ],
        Field(max_length=64),
    ] = {}

    @field_validator("env")
    @classmethod
    def _no_fleet_names(cls, env: dict[str, str]) -> dict[str, str]:
        reserved = sorted(name for name in env if name.startswith("FLEET_"))
        if reserved:
            raise ValueError(
                f"env names starting with FLEET_ are set by the operator ({', '.join(reserved)}); "
                "use another name"
            )
        return env


class CampaignTemplate(_Spec):
    """A FleetDispatch's metadata and spec. The spec is kept as written, to be created as written; it is
    parsed (`FleetDispatchSpec`) only to be checked."""

    metadata: TemplateMetadata = TemplateMetadata()
    spec: dict[str, Any]

    @field_validator("spec")
    @classmethod
    def _valid_dispatch_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            FleetDispatchSpec.model_validate(spec)
        except ValidationError as error:
            clauses = describe(error, "").split("; ")
            raise ValueError("; ".join(c.removeprefix(": ").removeprefix(".") for c in clauses)) from None
        if "ttlSecondsAfterFinished" in spec:
            raise ValueError(
                "ttlSecondsAfterFinished: not in a campaign: the campaign counts its dispatches and would "
                "create a deleted one again; deleting the campaign deletes them"
            )
        return spec


class FleetCampaignSpec(_Spec):
    template: CampaignTemplate | None = None
    items: Annotated[list[CampaignItem], Field(max_length=MAX_CAMPAIGN_ITEMS)] = []
    parallelism: Annotated[int, Field(ge=1, le=100000)] | None = None
    max_failed: int | str | None = None
    suspend: bool = False

    @field_validator("max_failed")
    @classmethod
    def _count_or_percentage(cls, value: int | str | None) -> int | str | None:
        if value is None:
            return None
        valid = 0 <= value <= 1000000 if isinstance(value, int) else re.fullmatch(PERCENT, value) is not None
        if not valid:
            raise ValueError("maxFailed is a count (0 or more) or a percentage from 0% to 100%")
        return value

    @field_validator("items")
    @classmethod
    def _unique_items(cls, items: list[CampaignItem]) -> list[CampaignItem]:
        _unique([item.name for item in items], "item name")
        return items

    @model_validator(mode="after")
    def _template_for_items(self) -> FleetCampaignSpec:
        if self.items and self.template is None:
            raise ValueError(
                "template is required when there are items: it is what each item's dispatch runs"
            )
        return self

    def failure_limit(self, total: int) -> int | None:
        """How many failed dispatches the campaign tolerates: `maxFailed`, or its percentage of `total`
        rounded down; None when there is no limit."""
        if self.max_failed is None:
            return None
        if isinstance(self.max_failed, int):
            return self.max_failed
        return int(self.max_failed.removesuffix("%")) * total // 100


class CampaignCounts(_Status):
    total: int = 0
    pending: int = 0
    running: int = 0
    backoff: int = 0
    requeued: int = 0
    suspended: int = 0
    succeeded: int = 0
    failed: int = 0


CampaignPhase = Literal["Running", "Suspended", "Succeeded", "Failed"]


class FleetCampaignStatus(_Status):
    observed_generation: int | None = None
    phase: CampaignPhase | None = None
    counts: CampaignCounts = CampaignCounts()
    start_time: datetime | None = None
    completion_time: datetime | None = None
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = []


# --- Reading a spec ---------------------------------------------------------------------------------------


class InvalidSpec(ValueError):
    """A spec the operator cannot act on; its message names the fields and the fix (for `Stalled`)."""


def describe(error: ValidationError, prefix: str = "spec") -> str:
    """One clause per problem, each naming the field as `kubectl explain` would (`spec.timeouts`)."""
    lines = []
    for item in error.errors(include_url=False):
        path = prefix
        for part in item["loc"]:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field; check its spelling and the API reference"
        lines.append(f"{path}: {message}")
    return "; ".join(lines)


def parse_spec(raw: Any) -> FleetDispatchSpec:
    """The spec of a FleetDispatch as the operator uses it, or `InvalidSpec` with a readable message."""
    try:
        return FleetDispatchSpec.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(describe(error)) from None


def parse_campaign_spec(raw: Any) -> FleetCampaignSpec:
    """The spec of a FleetCampaign, or `InvalidSpec` naming the fields (for the campaign's `Stalled`)."""
    try:
        return FleetCampaignSpec.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpec(describe(error)) from None


def parse_quota_pool_spec(raw: Any) -> QuotaPoolSpec:
    try:
        return QuotaPoolSpec.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        raise InvalidSpec(describe(error)) from None


def check_name(name: str) -> None:
    """The one rule on a dispatch's metadata: its name must fit in a label value."""
    if len(name) > MAX_DISPATCH_NAME:
        raise InvalidSpec(
            f"metadata.name: a FleetDispatch name is at most {MAX_DISPATCH_NAME} characters, because it is "
            "used as a label value on the dispatch's pods"
        )


def check_campaign_names(name: str, spec: FleetCampaignSpec) -> None:
    """The CRD's rule on a campaign's metadata: each item's dispatch name fits in a label value."""
    long = [item.name for item in spec.items if len(name) + 1 + len(item.name) > MAX_DISPATCH_NAME]
    if long:
        raise InvalidSpec(
            f"spec.items: each item's dispatch is named <campaign>-<item name>, at most {MAX_DISPATCH_NAME} "
            f"characters (it is a label value on its pods): shorten the campaign's name or the item's "
            f"({', '.join(long[:3])}{', ...' if len(long) > 3 else ''})"
        )


IMMUTABLE_FIELDS = ("template", "timeouts", "activity", "failure_policy", "quota_pool", "workspace")


def check_update(old: FleetDispatchSpec, new: FleetDispatchSpec) -> None:
    """The CRD's `oldSelf` rules: only `suspend`, `retry`, `budget` and `ttl_seconds_after_finished` may
    change after creation."""
    changed = [name for name in IMMUTABLE_FIELDS if getattr(old, name) != getattr(new, name)]
    if changed:
        fields = ", ".join(f"spec.{to_camel(name)}" for name in changed)
        raise InvalidSpec(
            f"{fields}: immutable after creation (only spec.suspend, spec.retry, spec.budget and "
            "spec.ttlSecondsAfterFinished may change); create a new FleetDispatch (a new name) to run a "
            "different session"
        )
