"""The operator's own configuration: one model, its defaults, and where each value comes from.

Everything a cluster admin tunes about the operator (not about one dispatch: that is the CRD) lives in
`OperatorSettings`. Each field is read from an environment variable named `FLEETDISPATCH_<FIELD>` (upper
case), which is how the Helm chart and `fleetdispatch operator` flags set it; the README's operator table is
generated from this model and a test keeps them equal.

Deliberately not here: kopf's own settings (the shell derives them from these) and anything per dispatch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetdispatch import __version__

ENV_PREFIX = "FLEETDISPATCH_"
DEFAULT_IMAGE = f"ghcr.io/fleet-dispatch/fleet-dispatch:{__version__}"
# A Kubernetes resource quantity as a container's resources take it (decimal or binary suffix, or none).
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
_QUANTITY_SUFFIXES = {
    "m": Decimal("0.001"),
    **{suffix: Decimal(1000) ** power for power, suffix in enumerate(("", "k", "M", "G", "T", "P", "E"))},
    **{f"{suffix}i": Decimal(1024) ** power for power, suffix in enumerate("KMGTPE", start=1)},
}


def quantity(text: str) -> Decimal:
    """A resource quantity (`QUANTITY`: `100m`, `64Mi`, `1.5`) as a number, to compare two."""
    number = text.rstrip("kKMGTPEim")
    return Decimal(number) * _QUANTITY_SUFFIXES[text[len(number) :]]


class SettingsError(ValueError):
    """An operator setting that cannot be used; the message names the variable."""


class OperatorSettings(BaseModel):
    """How the operator runs. Field docs are the README's operator configuration table."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    supervisor_image: Annotated[str, Field(min_length=1)] = DEFAULT_IMAGE
    """Image of the injected supervisor sidecar (it runs `fleetdispatch supervise`): the operator's own."""

    supervisor_image_pull_policy: Annotated[str, Field(pattern="^(Always|IfNotPresent|Never)$")] = (
        "IfNotPresent"
    )
    """Pull policy of the supervisor image."""

    supervisor_cpu_request: Annotated[str, Field(pattern=QUANTITY)] = "10m"
    """CPU request of the supervisor sidecar (it polls the session every few seconds)."""

    supervisor_memory_request: Annotated[str, Field(pattern=QUANTITY)] = "32Mi"
    """Memory request of the supervisor sidecar (its peak is about 25 MiB)."""

    supervisor_memory_limit: Annotated[str, Field(pattern=QUANTITY)] = "64Mi"
    """Memory limit of the supervisor sidecar, at least its request."""

    supervisor_cpu_limit: Annotated[str | None, Field(pattern=QUANTITY)] = None
    """CPU limit of the supervisor sidecar, at least its request (default none: throttled, it acts late)."""

    default_run_as_user: Annotated[int, Field(ge=1)] = 65532
    """UID for session and supervisor when the template sets none (they must share one UID)."""

    heartbeat_service_account: str | None = None
    """A service account allowed to write Leases; when set, supervisors renew a Lease per pod."""

    heartbeat_seconds: Annotated[int, Field(ge=1, le=3600)] = 15
    """Supervisors renew their Lease this often; one not renewed for 3 periods + skew is `SupervisorLost`."""

    clock_tolerance_seconds: Annotated[float, Field(ge=0, le=3600)] = 5.0
    """Allowed skew of a node's clock (Leases' `renewTime`) from the operator's, added to those 3 periods."""

    live_status_interval_seconds: Annotated[int, Field(ge=0, le=3600)] = 15
    """At most one live status write (deadline, last activity, last output) per dispatch per this long."""

    backstop_margin_seconds: Annotated[int, Field(ge=0)] = 60
    """Past cap + kill grace + this margin, a pod still running is deleted (`SupervisorLost`)."""

    max_quota_wait_seconds: Annotated[int, Field(ge=60)] = 86400
    """A quota reset further away than this is waited for this long only, then the session tries again."""

    history_limit: Annotated[int, Field(ge=1, le=20)] = 10
    """How many attempts `status.attempts` keeps (the newest; the CRD allows at most 20)."""

    workers: Annotated[int, Field(ge=1, le=256)] = 16
    """Dispatches reconciled concurrently."""

    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    """Port of the Prometheus `/metrics` endpoint (0: off)."""

    health_port: Annotated[int, Field(ge=0, le=65535)] = 8081
    """Port of the liveness endpoint `/healthz` (0: off)."""

    watch_timeout_seconds: Annotated[int, Field(ge=10)] = 300
    """Server-side timeout of each watch request, so a silently stalled watch is replaced."""

    campaign_status_interval_seconds: Annotated[float, Field(ge=0.1, le=300)] = 5.0
    """A FleetCampaign's status is written at most once per this many seconds (a phase change at once)."""

    leader_election: bool = False
    """Act only while holding a coordination.k8s.io Lease, so that replicas stand by (the chart: on)."""

    leader_election_lease: Annotated[str, Field(min_length=1, max_length=253)] = "fleet-dispatch"
    """Name of the leader election's Lease."""

    leader_election_namespace: str | None = None
    """Namespace of the Lease (default: the operator's own, from its service account or kubeconfig)."""

    leader_election_lease_duration_seconds: Annotated[float, Field(ge=1)] = 15.0
    """How long a standby waits, from when it sees the Lease last renewed, before taking it over."""

    leader_election_renew_deadline_seconds: Annotated[float, Field(gt=0)] = 10.0
    """A leader that cannot renew the Lease within this long stops and exits (less than the duration)."""

    leader_election_retry_period_seconds: Annotated[float, Field(gt=0)] = 2.0
    """How often the leader renews and a standby tries to acquire the Lease."""

    @model_validator(mode="after")
    def _supervisor_limits_not_below_requests(self) -> OperatorSettings:
        # The API server refuses a container whose request exceeds its limit: every pod would be refused.
        for kind, request, limit in (
            ("MEMORY", self.supervisor_memory_request, self.supervisor_memory_limit),
            ("CPU", self.supervisor_cpu_request, self.supervisor_cpu_limit),
        ):
            if limit is not None and quantity(request) > quantity(limit):
                raise ValueError(
                    f"{ENV_PREFIX}SUPERVISOR_{kind}_LIMIT: {limit} is less than "
                    f"{ENV_PREFIX}SUPERVISOR_{kind}_REQUEST {request} (the API server would refuse every pod)"
                )
        return self

    @model_validator(mode="after")
    def _leader_election_durations(self) -> OperatorSettings:
        # client-go's constraints (core.leadership explains why the first keeps one leader at a time).
        problems = []
        if self.leader_election_renew_deadline_seconds >= self.leader_election_lease_duration_seconds:
            problems.append("the renew deadline must be shorter than the lease duration")
        if self.leader_election_retry_period_seconds * 1.2 >= self.leader_election_renew_deadline_seconds:
            problems.append("the renew deadline must be longer than 1.2 retry periods")
        if problems:
            raise ValueError(f"{ENV_PREFIX}LEADER_ELECTION_*_SECONDS: {'; '.join(problems)}")
        return self

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> OperatorSettings:
        """Settings from `FLEETDISPATCH_*` variables, then `overrides` (command-line flags) on top."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls.model_validate(values, strict=False)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in item['loc']).upper()}: {item['msg']}"
                if item["loc"]
                else str(item["msg"]).removeprefix("Value error, ")  # a rule across settings names them
                for item in error.errors(include_url=False)
            )
            raise SettingsError(problems) from None
