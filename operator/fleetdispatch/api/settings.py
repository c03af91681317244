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
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetdispatch import __version__

ENV_PREFIX = "FLEETDISPATCH_"
DEFAULT_IMAGE = f"ghcr.io/fleet-dispatch/fleet-dispatch:{__version__}"


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

    default_run_as_user: Annotated[int, Field(ge=1)] = 65532
    """UID for session and supervisor when the template sets none (they must share one UID)."""

    heartbeat_service_account: str | None = None
    """A service account allowed to write Leases; when set, supervisors renew a Lease per pod."""

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
                for item in error.errors(include_url=False)
            )
            raise SettingsError(problems) from None
