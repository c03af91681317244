"""How an attempt ended, and what that means: the failure classification of design section 5.

`judge(policy, pod)` reads a pod's view and returns an `Outcome` once the attempt is over (None while it
runs). An outcome carries the reason (the session's or the supervisor's `outcome.json` reason, else one
derived from the pod), its failure class and the action the lifecycle takes:

| outcome                                                   | class          | action   |
|-----------------------------------------------------------|----------------|----------|
| exit 0 / `Completed`                                      | (none)         | Succeed  |
| `QuotaExhausted` (outcome file, or exit 75)               | Quota          | Requeue  |
| `DeadlineExceeded`, `IdleTimeout`                         | Timeout        | Resume   |
| `Evicted`, a disruption, `PodDeleted`, `SupervisorLost`,  | Infrastructure | Ignore   |
| `StartTimeout`                                            |                |          |
| any other failure (non-zero exit, `Failed`, `OOMKilled`)  | Logic          | Retry    |

`Ignore` is the Job controller's word: retry without spending `maxAttempts`. `spec.failurePolicy.rules` are
tried first, in order, on every attempt that did not succeed; the first match decides the action, and the
class follows the action (Retry: Logic, Resume: Timeout, Requeue: Quota, Ignore: Infrastructure; Fail keeps
the default class). `onExitCodes` matches the session container's exit code, never 0; `onOutcome` matches
the reason, including the operator's own (`Evicted`, `PodDeleted`, `SupervisorLost`, `StartTimeout`,
`OOMKilled`).

Where the outcome comes from: the session container's termination message is the `outcome.json` a session or
the supervisor wrote (its `terminationMessagePath`); the supervisor's own termination message is read when the
session's is missing. The supervisor's termination message also carries its final figures (the deadline as
extended, the last activity and output), which fill in what the outcome does not say: a session that completes
on its own writes no deadline, but its status should show how far it was extended. It carries the last resume
token the session wrote too, which every outcome without a token of its own takes, `PodDeleted` and
disruptions included: that is how the token of an attempt whose supervisor was TERMed reaches the next. So an
attempt whose session has ended is judged once its supervisor has ended too (the kubelet stops a native
sidecar as soon as the session exits). A message that is not an outcome (the log tail `FallbackToLogsOnError`
gives, or JSON whose `reason` is not a CamelCase reason of at most 64 characters, which the status and its
conditions could not hold) is kept as the outcome's message. A `resetAt` is read whatever the reason, so a
custom reason a rule requeues waits for its reset too. A pod being deleted by someone else is `PodDeleted` at
once, whatever its containers report afterwards: the TERM they get then says nothing about the session. A
disruption (a kubelet eviction, or a `DisruptionTarget` condition: preemption, the eviction API, the taint
manager, which then delete the pod) is reported under its own reason, which says more than `PodDeleted`.

Deliberately not here: what happens next (counters, backoff, phases: `lifecycle`), and any I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from fleetdispatch.api.models import OUTCOME_REASON, FailureClass, FailurePolicy
from fleetdispatch.core.podstatus import PodView, Termination
from fleetdispatch.session import protocol
from fleetdispatch.session.protocol import parse_time

Action = Literal["Succeed", "Fail", "Retry", "Resume", "Requeue", "Ignore"]

QUOTA_EXIT_CODE = protocol.QUOTA_EXIT_CODE
POD_DELETED = "PodDeleted"
SUPERVISOR_LOST = "SupervisorLost"
START_TIMEOUT = "StartTimeout"
EVICTED = "Evicted"
OOM_KILLED = "OOMKilled"
# Whatever the kubelet reports about a container it could not start or lost track of.
CONTAINER_LOST = frozenset({"ContainerStatusUnknown", "ContainerCannotRun", "StartError"})

_DEFAULTS: dict[str, tuple[FailureClass, Action]] = {
    protocol.QUOTA_EXHAUSTED: ("Quota", "Requeue"),
    protocol.DEADLINE_EXCEEDED: ("Timeout", "Resume"),
    protocol.IDLE_TIMEOUT: ("Timeout", "Resume"),
    EVICTED: ("Infrastructure", "Ignore"),
    POD_DELETED: ("Infrastructure", "Ignore"),
    SUPERVISOR_LOST: ("Infrastructure", "Ignore"),
    START_TIMEOUT: ("Infrastructure", "Ignore"),
}
_CLASS_OF_ACTION: dict[str, FailureClass] = {
    "Retry": "Logic",
    "Resume": "Timeout",
    "Requeue": "Quota",
    "Ignore": "Infrastructure",
}
MAX_MESSAGE = 1024
MAX_REASON = 64
_REASON = re.compile(OUTCOME_REASON)


@dataclass(frozen=True)
class Outcome:
    reason: str
    verdict: Action
    failure_class: FailureClass | None = None
    exit_code: int | None = None
    message: str = ""
    reset_at: datetime | None = None
    resume_token: str | None = None
    report: dict[str, str] = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.verdict == "Succeed"


def read_outcome(message: str | None) -> dict[str, Any] | None:
    """An `outcome.json` from a termination message, or None when the message is not one."""
    if not message:
        return None
    try:
        value = json.loads(message)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("reason"), str):
        return None
    if len(value["reason"]) > MAX_REASON or not _REASON.match(value["reason"]):
        return None
    return value


def _text(value: Any) -> str:
    return value[:MAX_MESSAGE] if isinstance(value, str) else ""


def lost(reason: str, message: str) -> Outcome:
    """An attempt the operator ends or finds gone (`PodDeleted`, `SupervisorLost`), before any policy."""
    failure_class, verdict = _DEFAULTS.get(reason, ("Infrastructure", "Ignore"))
    return Outcome(reason=reason, verdict=verdict, failure_class=failure_class, message=message)


def _default(termination: Termination | None, written: dict[str, Any] | None) -> Outcome:
    """The outcome before `failurePolicy`: what the session (or supervisor) wrote, else the exit code."""
    exit_code = termination.exit_code if termination else None
    report = protocol.read_report(written)
    common: dict[str, Any] = {
        "exit_code": exit_code,
        "reset_at": parse_time((written or {}).get("resetAt")),
        "resume_token": _text((written or {}).get("resumeToken")) or None,
        "report": report,
    }
    reason = (written or {}).get("reason")
    message = _text((written or {}).get("message"))
    if written is None and termination is not None and termination.message:
        message = _text(termination.message)  # a log tail: worth showing, not an outcome
    if reason in _DEFAULTS:
        failure_class, verdict = _DEFAULTS[reason]
        return Outcome(reason, verdict, failure_class, message=message, **common)
    if exit_code == 0 and reason in (None, protocol.COMPLETED):
        return Outcome(protocol.COMPLETED, "Succeed", message=message, **common)
    if exit_code == QUOTA_EXIT_CODE and reason is None:
        return Outcome(protocol.QUOTA_EXHAUSTED, "Requeue", "Quota", message=message, **common)
    if termination is not None and termination.reason == OOM_KILLED:
        message = message or "the session container ran out of memory; raise its memory limit"
        return Outcome(OOM_KILLED, "Retry", "Logic", message=message, **common)
    if termination is not None and termination.reason in CONTAINER_LOST and reason is None:
        return Outcome(termination.reason, "Ignore", "Infrastructure", message=message, **common)
    if reason is None or reason == protocol.COMPLETED:
        reason = protocol.FAILED
        message = message or f"the session exited with code {exit_code}"
    return Outcome(reason, "Retry", "Logic", message=message, **common)


def apply_policy(policy: FailurePolicy | None, outcome: Outcome) -> Outcome:
    """The first `failurePolicy` rule that matches a failed outcome decides its action."""
    if outcome.succeeded or policy is None:
        return outcome
    for rule in policy.rules:
        if rule.on_exit_codes is not None:
            code = outcome.exit_code
            if code is None or code == 0:
                continue
            inside = code in rule.on_exit_codes.values
            if inside != (rule.on_exit_codes.operator == "In"):
                continue
        elif rule.on_outcome is not None and outcome.reason not in rule.on_outcome.reasons:
            continue
        if rule.action == "Fail":
            return _replace(outcome, verdict="Fail", failure_class=outcome.failure_class or "Logic")
        return _replace(outcome, verdict=rule.action, failure_class=_CLASS_OF_ACTION[rule.action])
    return outcome


def _replace(outcome: Outcome, **changes: Any) -> Outcome:
    values = {**outcome.__dict__, **changes}
    return Outcome(**values)


def judge(policy: FailurePolicy | None, pod: PodView) -> Outcome | None:
    """The attempt's outcome, or None while the session is still running and the pod is not disrupted."""
    if pod.disruption is not None and (pod.session is None or pod.session.exit_code != 0):
        message = pod.disruption_message or f"pod {pod.name} was disrupted ({pod.disruption})"
        outcome = Outcome(EVICTED, "Ignore", "Infrastructure", message=_text(message))
        if pod.disruption != EVICTED:
            outcome = _replace(outcome, reason=pod.disruption)
        return apply_policy(policy, _with_reported_token(outcome, pod))
    if pod.deleting and (pod.session is None or pod.session.exit_code != 0):
        deleted = lost(POD_DELETED, f"pod {pod.name} was deleted while the session ran")
        return apply_policy(policy, _with_reported_token(deleted, pod))
    if pod.session is None:
        if pod.live:
            return None
        # Finished without the session ever terminating (it never started, or its status is lost).
        message = f"pod {pod.name} finished ({pod.phase}) without a session container status"
        return apply_policy(policy, lost("ContainerStatusUnknown", message))
    if pod.live and pod.supervisor_running and not pod.deleting:
        return None  # the supervisor is stopping (the kubelet TERMs it now); its final figures follow
    written = read_outcome(pod.session.message) or read_outcome(pod.supervisor_message)
    outcome = _default(pod.session, written)
    final = read_report(pod.supervisor_message)
    if final:  # the supervisor's last figures, under whatever the outcome itself reported
        outcome = _replace(outcome, report={**final, **outcome.report})
    return apply_policy(policy, _with_reported_token(outcome, pod))


def _with_reported_token(outcome: Outcome, pod: PodView) -> Outcome:
    """The outcome, with the supervisor's last resume token when the outcome itself names none: a
    supervisor TERMed (suspend, pod deletion) reports the token the session wrote last."""
    if outcome.resume_token is not None:
        return outcome
    token = read_resume_token(pod.supervisor_message)
    return outcome if token is None else _replace(outcome, resume_token=token)


def read_resume_token(message: str | None) -> str | None:
    """The resume token in the supervisor's termination message (`resumeToken`), if it has one."""
    if not message:
        return None
    try:
        return protocol.read_report_resume_token(json.loads(message))
    except ValueError:
        return None


def read_report(message: str | None) -> dict[str, str]:
    """The supervisor's final figures (its termination message: deadline, last activity, ...), if any."""
    if not message:
        return {}
    try:
        return protocol.read_report(json.loads(message))
    except ValueError:
        return {}
