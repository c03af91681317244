"""The lifecycle of a FleetDispatch: from what the cluster holds now, the next status and actions.

`reconcile(dispatch, pods, now, limits) -> Decision` is the operator's whole judgement, as a pure function:
the dispatch (spec, or why its spec is invalid, and status), the views of its pods, and the time. The
decision is the status to write, at most one pod to create, pods to delete, when to look again, and the
Events that explain each transition. The kopf shell only feeds it and carries the decision out.

Phases (design section 1): `Pending` (an attempt is about to start or its pod is starting), `Running` (the
session container started), `Backoff` (waiting before a retry), `Requeued` (waiting for a quota reset),
`Suspended`, and the terminal `Succeeded` and `Failed`, which nothing leaves.

Rules that make it safe to run again at any moment (after an operator restart, on a stale cache):
- It is level-triggered: the decision depends only on its inputs, so running it twice on the same inputs
  decides the same thing, and the second status write is empty.
- At most one live pod per dispatch: a new attempt's pod is created only when no pod of the dispatch is
  live (a pod being deleted still runs processes), and a live pod that is not the current attempt's is
  deleted. Pod names are `<dispatch>-<attempt>`, so a create repeated after a crash finds the same pod.
- The status that names a new attempt is stored before its pod is created (the reconciler writes it first,
  with the resourceVersion this decision was made on), so the stored status always records every attempt
  that has a pod. A pod of a later attempt than the status knows (created by an operator version that
  created first) is still adopted as the current attempt; if the current attempt's pod is over, its end is
  decided first, so its counters and its history record are not lost.
- The pod cache may lag behind the status the operator wrote: a current attempt's pod that is missing
  while the attempt is `Pending` and its session was never seen running is asked for again (same name, so the
  API server answers AlreadyExists when it exists), never taken for deleted. Once its session was seen
  running, a missing pod was deleted (`PodDeleted`).
- The status says when to continue: `requeueAt` is when the next attempt may start (a quota reset plus
  jitter, or the end of a backoff), so a restarted operator computes the same wake-up.
- Counters never pass their limits: a failure that would is the terminal one instead.
- Every status it decides is admissible (`bound`): what it repeats from a pod (a kubelet's reason or
  message, of any length) is cut to the CRD's bounds, a reason that is no condition reason is not made one,
  and time arithmetic on a pod's dates (year 9999) stops at `LAST_TIME` instead of raising.

An attempt ends when `classify.judge` says so, when its pod is gone (`PodDeleted`), or when the backstop
deletes it: a pod still running `killGraceSeconds + backstop margin` past its supervisor's cap
(`start + deadlineSeconds + maxExtensionSeconds`) means the supervisor did not stop the session, whatever
the pod reports (`SupervisorLost`).
While the session runs, the supervisor's Lease (`Dispatch.heartbeat`, judged by `live`) is followed when
the operator watches Leases: the status mirrors its deadline, last activity and its reason, and last output,
at most once per write interval (a figure due later is a wake-up), and a Lease the supervisor no longer
renews (`live.lost_at`) deletes the pod as `SupervisorLost` long before the backstop would. A Lease that is
not the current pod's supervisor's own (`live.distrust`) is ignored; without a Lease, nothing changes.
A pod whose session has not started `timeouts.startSeconds` after the pod's creation (unschedulable, an
image that cannot be pulled, a supervisor that never starts) is deleted too (`StartTimeout`, with the pod's
waiting reason). Infrastructure failures (the `Ignore` action) are counted in `infrastructureFailures`;
one past `retry.maxInfrastructureFailures` fails the dispatch (`InfrastructureLimitExceeded`).

A pod the API server refused (`Dispatch.create_refused`, from the shell) is not created: the attempt waits
`Pending` with reason `FailedCreate`, the API server's message, a `FailedCreate` Event and the
`PodCreateFailed` condition; the next decision asks for the same attempt's pod again (the shell backs off).

Suspending deletes the running attempt's pod (its session gets TERM and the pod's grace period) without
counting it as a failure, and the next attempt resumes it (`FLEET_RESUME=1` with the last resume token).
The attempt is recorded `Suspended` at once; the resume token its supervisor reports on TERM is taken from
the pod's final status when a later decision sees it (until the next attempt starts). A pod removed before
any decision saw its final status takes that token with it: the status keeps the one it had.
Attempts after a quota requeue, a timeout or an infrastructure failure resume too; a retry after a logic
failure starts afresh, and forgets the resume token, which belongs to the line of attempts it ends.

A live pod whose session has ended is never deleted, in any phase: it stops on its own, and deleting it
would only lose its logs (the succeeded attempt's, typically, while its supervisor sidecar stops).

A dispatch in a QuotaPool gets a `quota.Gate` with its inputs: while the pool is exhausted its next attempt
waits `Requeued` (reason `QuotaPoolExhausted`) until the pool's reset, and while the pool's `maxConcurrent`
slots are taken it waits `Pending` (reason `QuotaPoolFull`); its own quota stop reports the reset for the pool
(`Decision.pool_exhausted_until`). A reset further away than `Limits.max_quota_wait_seconds` is waited for
that long only. The `requeueAt` of a pool's member is paced (`quota.resume_at`): the first second from its
reset plus jitter that fewer than the pool's `resumesPerSecond` other members hold.

Events: one per transition the operator decides (a pod created, a retry, a requeue, a suspension, the end).
Pending to Running is mirrored from the pod and has none, because the kubelet's own `Started` event on the
pod already says so, and a write saved per dispatch is a write saved per campaign member.

Clean-up. The pods of earlier attempts are deleted once their end is recorded in `status.attempts` (or
their record has aged out of that bounded history) and the current attempt is past `Pending`; the last
attempt's pod stays, for its logs. With
`spec.ttlSecondsAfterFinished`, a finished dispatch is deleted that long after its `completionTime`
(`Decision.delete_dispatch`; its pods and an owned workspace claim go with it through the garbage
collector): decided only on a stored terminal status, so the status and Events of the end are written
first, and a restart computes the same moment (`expires_at`).

Retry in place. A new value of the `fleet.dispatch.dev/retry` annotation (`Dispatch.retry_request`) on a
`Failed` dispatch starts a new line of attempts: every spending counter starts over, the history, the
attempt numbers and the start time go on, Event `Retried`; the next attempt resumes or starts afresh as
after the last attempt's end. The value is recorded (`status.retryHandled`, see `retry_mark`) whatever the
phase, so a value retries once, and a value set on a dispatch that is not `Failed` is ignored with a
`RetryIgnored` Event: it does not wait to retry an attempt that fails hours later. A dispatch created with
the annotation records it silently (it asks for nothing yet). A retry takes precedence over the ttl.

Usage and budgets (`usage`). An ended attempt's usage (its supervisor's report, else the report its pod's
DELETED event carried, else its Lease's latest figures) is recorded in its `attempts[]` entry and added to
`status.usage` once, in the decision that ends it (a suspended attempt's, when its final report shows).
`spec.budget`: once a budget is spent, no new attempt starts; an attempt that ends without succeeding
fails the dispatch at once instead of backing off or requeueing; a running attempt is stopped (its pod
deleted, with its grace, outcome `BudgetExceeded`) once `totalSeconds` has run out since `startTime`, or
once the totals plus its Lease's figures reach `tokens` or `cost`; and a wait (a requeue, a backoff) that
would end at or after `totalSeconds` fails at once rather than waiting. Each ends `Failed`, reason
`BudgetExceeded`, its message naming the budget.

Deliberately not here: reading outcomes (`classify`), backoff arithmetic (`backoff`), building the pod
(`podspec`), any I/O or clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from fleetdispatch.api.models import AttemptRecord, FleetDispatchSpec, FleetDispatchStatus, Phase, Usage
from fleetdispatch.api.names import RETRY_ANNOTATION
from fleetdispatch.core import backoff, classify, conditions, live, quota, usage
from fleetdispatch.core.classify import Outcome
from fleetdispatch.core.podspec import AttemptRequest, pod_name
from fleetdispatch.core.podstatus import PodView
from fleetdispatch.core.quota import Gate
from fleetdispatch.session import protocol
from fleetdispatch.session.protocol import format_time, parse_time

TERMINAL: frozenset[Phase] = frozenset({"Succeeded", "Failed"})
IN_FLIGHT: frozenset[Phase] = frozenset({"Pending", "Running"})
WAITING: frozenset[Phase] = frozenset({"Backoff", "Requeued"})

INVALID_SPEC = "InvalidSpec"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
RESUME_LIMIT_EXCEEDED = "ResumeLimitExceeded"
REQUEUE_LIMIT_EXCEEDED = "RequeueLimitExceeded"
INFRASTRUCTURE_LIMIT_EXCEEDED = "InfrastructureLimitExceeded"
FAILED_CREATE = "FailedCreate"
SUSPENDED = "Suspended"
QUOTA_EXHAUSTED = "QuotaExhausted"
QUOTA_POOL_EXHAUSTED = "QuotaPoolExhausted"
QUOTA_POOL_FULL = "QuotaPoolFull"
BUDGET_EXCEEDED = "BudgetExceeded"
RETRIED = "Retried"
STARTED = "Started"  # the Event of an attempt seen running
QUOTA_POOL_MISSING = "QuotaPoolMissing"  # an attempt started without the pool it names
RETRY_IGNORED = "RetryIgnored"
# status.retryHandled holds an annotation value up to this long as it is, a longer one as its digest.
MAX_RETRY_MARK = 253
# Waiting reasons every pod goes through; only the others (ImagePullBackOff, ...) are worth a status write.
ROUTINE_WAITING = ("ContainerCreating", "PodInitializing")
RESUMING_CLASSES = frozenset({"Quota", "Timeout", "Infrastructure"})
LAST_TIME = datetime.max.replace(microsecond=0, tzinfo=UTC)
# The CRD's bounds on what the status repeats from a pod (a kubelet's reason or message can be any length).
MAX_REASON = 128
MAX_MESSAGE = 32768
MAX_RECORD_MESSAGE = 1024
# metav1.Condition's reason pattern and length: a status reason that does not fit is not a condition's.
CONDITION_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
MAX_CONDITION_REASON = 1024


@dataclass(frozen=True)
class Dispatch:
    """One FleetDispatch as the lifecycle sees it: `spec` is None exactly when `invalid` says why."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: FleetDispatchSpec | None
    status: FleetDispatchStatus
    invalid: str | None = None
    # Set when the spec names a QuotaPool: whether the pool lets this dispatch start an attempt now.
    gate: Gate | None = None
    # The API server's message when it has just refused the pod this decision asks for (a ResourceQuota,
    # Pod Security, a webhook): decided again with it, the attempt waits `FailedCreate` instead.
    create_refused: str | None = None
    # The supervisor's heartbeat, when the operator follows Leases (`live`): the running attempt's status
    # mirrors its figures, and a Lease no longer renewed ends the attempt (`SupervisorLost`).
    heartbeat: live.Live | None = None
    # The supervisor's last report of a pod that is gone (pod name, termination message), from its DELETED
    # event: a suspended attempt's pod may be removed before a reconcile reads its final status.
    gone_pod_report: tuple[str, str] | None = None
    # The value of its `fleet.dispatch.dev/retry` annotation, if any.
    retry_request: str | None = None


@dataclass(frozen=True)
class Limits:
    history_limit: int = 10
    backstop_margin_seconds: int = 60
    max_quota_wait_seconds: int = 86400


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Decision:
    status: FleetDispatchStatus
    create: AttemptRequest | None = None
    delete: tuple[str, ...] = ()
    wake_at: datetime | None = None
    events: tuple[Event, ...] = ()
    outcomes: tuple[Outcome, ...] = ()
    # The reset an attempt reported, for the dispatch's QuotaPool (`status.exhaustedUntil`).
    pool_exhausted_until: datetime | None = None
    # Its ttlSecondsAfterFinished has passed: delete the dispatch itself.
    delete_dispatch: bool = False


def retry_mark(value: str) -> str:
    """What `status.retryHandled` records of a retry annotation's value: the value itself, or the digest of
    one too long for the status (any two values differ in what is recorded, as they would as values)."""
    if len(value) <= MAX_RETRY_MARK:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def finished_at(status: FleetDispatchStatus) -> datetime | None:
    """When a finished dispatch finished: its `completionTime`, else (a status written without one) the
    last transition of the condition its end set; None while it has not finished."""
    if status.phase not in TERMINAL:
        return None
    if status.completion_time is not None:
        return status.completion_time
    type_ = conditions.READY if status.phase == "Succeeded" else conditions.STALLED
    condition = conditions.find(status.conditions, type_)
    return condition.last_transition_time if condition is not None and condition.status == "True" else None


def expires_at(spec: FleetDispatchSpec | None, status: FleetDispatchStatus) -> datetime | None:
    """When a finished dispatch is deleted (`spec.ttlSecondsAfterFinished` after it finished); None when it
    is kept: no ttl, not finished, or its spec cannot be read."""
    finished = finished_at(status)
    if spec is None or spec.ttl_seconds_after_finished is None or finished is None:
        return None
    return later(finished, spec.ttl_seconds_after_finished)


def later(moment: datetime, seconds: float) -> datetime:
    """`seconds` after `moment`, or the last representable second when that is past year 9999: a kubelet
    (or a clock) may report any date, and a time arithmetic error would fail every reconcile."""
    try:
        return moment + timedelta(seconds=seconds)
    except OverflowError:
        return LAST_TIME


def backstop_at(spec: FleetDispatchSpec, started: datetime, margin_seconds: int) -> datetime:
    """When a pod whose supervision started at `started` must have stopped, or be deleted."""
    t = spec.timeouts
    seconds = t.deadline_seconds + t.max_extension_seconds + t.kill_grace_seconds + margin_seconds
    return later(started, seconds)


@dataclass
class _Reconcile:
    dispatch: Dispatch
    pods: Sequence[PodView]
    now: datetime
    limits: Limits
    status: FleetDispatchStatus
    create: AttemptRequest | None = None
    delete: list[str] = field(default_factory=list)
    wakes: list[datetime] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    pool_exhausted_until: datetime | None = None
    delete_dispatch: bool = False

    @property
    def spec(self) -> FleetDispatchSpec:
        assert self.dispatch.spec is not None
        return self.dispatch.spec

    # --- transitions ------------------------------------------------------------------------------------

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def finish(self, phase: Phase, reason: str, message: str) -> None:
        s = self.status
        s.phase, s.reason, s.message = phase, reason, message
        s.completion_time = self.now
        s.requeue_at = None
        kind: Literal["Normal", "Warning"] = "Normal" if phase == "Succeeded" else "Warning"
        self.event(kind, reason if phase == "Failed" else phase, message)

    def delete_pod(self, pod: PodView) -> None:
        if not pod.deleting and pod.name not in self.delete:
            self.delete.append(pod.name)

    def wait_until(self, phase: Phase, until: datetime, reason: str, message: str) -> None:
        s = self.status
        limit = usage.time_limit(self.spec.budget, s.start_time)
        if limit is not None and until >= limit:
            # The attempt it waits for could not start anyway: fail now rather than at the reset.
            assert self.spec.budget is not None
            why = usage.wait_message(self.spec.budget, limit, until)
            self.finish("Failed", BUDGET_EXCEEDED, f"{message}; {why}")
            return
        s.phase, s.reason, s.message, s.requeue_at = phase, reason, message, until
        self.event(
            "Normal" if phase == "Requeued" else "Warning",
            "Requeued" if phase == "Requeued" else "BackOff",
            message,
        )

    # --- the steps --------------------------------------------------------------------------------------

    def run(self) -> None:
        s, d = self.status, self.dispatch
        s.observed_generation = d.generation
        self.take_retry_request()
        if d.invalid is not None:
            if s.phase not in TERMINAL:
                s.failure_class = None
                self.finish("Failed", INVALID_SPEC, d.invalid)
            self.stop_others(None)
            return
        if s.phase in TERMINAL:
            self.stop_others(None)
            return
        if s.phase is None:
            s.phase = "Pending"
        self.adopt()
        current = self.current_pod()
        self.stop_others(current)
        if s.phase in IN_FLIGHT and s.pod_name is not None:
            self.follow(current)
        if s.phase in TERMINAL:
            return
        self.take_suspended_token()
        if self.spec.suspend:
            self.suspend(current)
            return
        if s.phase == "Suspended":
            self.unsuspend()
        if s.phase in WAITING or (s.phase == "Pending" and s.pod_name is None):
            self.start_next()

    def take_retry_request(self) -> None:
        """A new `fleet.dispatch.dev/retry` value: a Failed dispatch starts a new line of attempts; in any
        other phase it is recorded and ignored."""
        s, d = self.status, self.dispatch
        if d.retry_request is None:
            return
        mark = retry_mark(d.retry_request)
        if mark == s.retry_handled:
            return
        s.retry_handled = mark
        shown = d.retry_request if len(d.retry_request) <= 64 else d.retry_request[:61] + "..."
        if s.phase is None:
            return  # created with the annotation: it asks for nothing yet
        if s.phase != "Failed" or d.invalid is not None:
            why = "its spec is invalid" if d.invalid is not None else f"it is {s.phase}, not Failed"
            self.event(
                "Warning",
                RETRY_IGNORED,
                f"{RETRY_ANNOTATION}={shown} ignored: {why}; only a Failed dispatch is retried",
            )
            return
        s.failures = s.resumes = s.requeues = s.infrastructure_failures = 0
        s.phase, s.pod_name, s.requeue_at, s.completion_time = "Pending", None, None, None
        s.deadline = s.deadline_cap = None
        s.reason = RETRIED
        s.message = (
            f"retried ({RETRY_ANNOTATION}={shown}): a new line of attempts from attempt {s.attempt + 1}, "
            "its counters started over"
        )
        self.event("Normal", RETRIED, s.message)

    def expire(self) -> None:
        """`spec.ttlSecondsAfterFinished`: delete the dispatch once it has passed, wake up when it will.
        Only a finish already stored is acted upon, so its status and Events are written first."""
        expiry = expires_at(self.dispatch.spec, self.status)
        if expiry is None:
            return
        if self.now >= expiry and self.dispatch.status.phase in TERMINAL:
            self.delete_dispatch = True
        else:
            self.wakes.append(expiry)

    def remove_earlier_pods(self) -> None:
        """The pods of attempts before the last, once their end is recorded: the status holds what they
        said; the last attempt's pod stays for its logs."""
        s = self.status
        if s.phase == "Pending" and s.pod_name is not None:
            # Its attempt is starting: the clean-up waits until it runs (or ends), so that many attempts
            # starting at once (a pool's members after a reset) do not wait for deletes too.
            return
        ended = {record.attempt for record in s.attempts if record.outcome is not None}
        # The history is bounded, oldest first: an attempt older than its oldest record was recorded.
        oldest = min((record.attempt for record in s.attempts), default=None)
        for pod in self.pods:
            n = pod.attempt
            if n is None or n >= s.attempt:
                continue
            if n in ended or (oldest is not None and n < oldest):
                self.delete_pod(pod)

    def stop_others(self, current: PodView | None) -> None:
        for pod in self.pods:
            # A pod whose session already ended stops on its own; deleting it would only lose its logs.
            if pod.live and pod is not current and pod.session is None:
                self.delete_pod(pod)

    def adopt(self) -> None:
        """A pod of a later attempt than the status records was created just before a restart: follow it."""
        s = self.status
        later = [p for p in self.pods if p.attempt is not None and p.attempt > s.attempt]
        if not later:
            return
        ending = self.current_pod()
        outcome = classify.judge(self.spec.failure_policy, ending) if ending is not None else None
        if outcome is not None:
            # The decision that created the later pod ended this attempt too, but its status was lost.
            self.end_attempt(outcome, ending)
            if s.phase in TERMINAL:
                return
        pod = max(later, key=lambda p: p.attempt or 0)
        s.attempt, s.pod_name = pod.attempt or 0, pod.name
        if s.phase not in IN_FLIGHT:
            s.phase = "Pending"
        s.requeue_at = None
        s.deadline = s.deadline_cap = None
        s.reason, s.message = "Adopted", f"adopted pod {pod.name} of attempt {s.attempt}"

    def current_pod(self) -> PodView | None:
        s = self.status
        if s.phase not in IN_FLIGHT or s.pod_name is None:
            return None
        return next((p for p in self.pods if p.name == s.pod_name), None)

    def follow(self, pod: PodView | None) -> None:
        """The current attempt: mirror its progress, end it when it is over, enforce the backstop."""
        s, policy = self.status, self.spec.failure_policy
        if pod is None and s.phase == "Pending" and s.deadline is None:
            # Created but not in the cache yet, or deleted before it started: ask for it again.
            if not self.spec.suspend and not any(p.live for p in self.pods):
                self.create = self.request(s.attempt)
                if s.reason == FAILED_CREATE and self.dispatch.create_refused is None:
                    s.reason, s.message = "Created", f"created pod {s.pod_name} for attempt {s.attempt}"
                    self.event("Normal", "Created", s.message)
                self.refuse_create()
            return
        if pod is None:
            message = f"pod {s.pod_name} disappeared before its session finished (deleted by someone?)"
            self.end_attempt(
                classify.apply_policy(policy, classify.lost(classify.POD_DELETED, message)), None
            )
            return
        outcome = classify.judge(policy, pod)
        if outcome is not None:
            self.end_attempt(outcome, pod)
            return
        if self.stop_over_budget(pod, None):
            return
        started = pod.supervision_started_at
        t = self.spec.timeouts
        if started is not None:
            limit = backstop_at(self.spec, started, self.limits.backstop_margin_seconds)
            if self.now >= limit:
                self.delete_pod(pod)
                late = t.kill_grace_seconds + self.limits.backstop_margin_seconds
                message = (
                    f"pod {pod.name} was still running {late} s after its deadline cap: the supervisor did "
                    "not stop the session, so the pod was deleted"
                )
                lost = classify.lost(classify.SUPERVISOR_LOST, message)
                self.end_attempt(classify.apply_policy(policy, lost), pod)
                return
            self.wakes.append(limit)
        if pod.session_started_at is None and pod.created_at is not None:
            start_limit = later(pod.created_at, t.start_seconds)
            if self.now >= start_limit:
                self.delete_pod(pod)
                self.end_attempt(classify.apply_policy(policy, self.start_timeout(pod)), pod)
                return
            self.wakes.append(start_limit)
        if pod.session_started_at is not None and s.phase == "Pending":
            # One status write for the whole transition: the phase, and the budget it runs on.
            s.phase, s.reason, s.message = "Running", "Running", f"session running in pod {pod.name}"
            # The attempt's one Event before its end: its pod's creation is told here, not as an Event of
            # its own (one API write fewer per attempt; an attempt over before it was seen running tells
            # it in its end's Event, and the status and the pod itself say it meanwhile).
            created = f", created {_when(pod.created_at)}" if pod.created_at is not None else ""
            self.event("Normal", STARTED, f"attempt {s.attempt} running in pod {pod.name}{created}")
            supervised = started or pod.session_started_at
            if s.start_time is None:
                s.start_time = supervised
                if (budget_end := usage.time_limit(self.spec.budget, s.start_time)) is not None:
                    self.wakes.append(budget_end)  # budget.totalSeconds counts from here
            if s.deadline is None:
                s.deadline = later(supervised, t.deadline_seconds)
                s.deadline_cap = later(s.deadline, t.max_extension_seconds)
            self.follow_lease(pod)
        elif s.phase == "Running":
            self.follow_lease(pod)
        elif s.phase == "Pending" and pod.waiting_reason not in (None, *ROUTINE_WAITING):
            s.reason = pod.waiting_reason
            s.message = f"pod {pod.name}: {pod.waiting_reason}" + (
                f": {pod.waiting_message}" if pod.waiting_message else ""
            )

    def follow_lease(self, pod: PodView) -> None:
        """The running attempt's heartbeat: mirror the supervisor's figures (at most once per write
        interval), and end the attempt when its Lease is no longer renewed while the session runs."""
        s, heartbeat = self.status, self.dispatch.heartbeat
        if heartbeat is None or heartbeat.lease is None or pod.session is not None or pod.deleting:
            return
        lease = heartbeat.lease
        if live.distrust(lease, pod, self.dispatch.name, s.attempt) is not None:
            return  # not the supervisor's own Lease: ignored
        lost = live.lost_at(heartbeat, lease)
        if self.now < lost:
            self.wakes.append(lost)
        elif pod.phase == "Running":
            self.delete_pod(pod)
            message = live.lost_message(heartbeat, lease, self.now)
            outcome = classify.lost(classify.SUPERVISOR_LOST, message)
            self.end_attempt(classify.apply_policy(self.spec.failure_policy, outcome), pod)
            return
        if lease.usage is not None and self.stop_over_budget(pod, lease.usage):
            return
        changed = live.changes(lease, {key: getattr(s, key) for key in live.LIVE_FIELDS.values()})
        if not changed:
            return
        due = live.write_at(heartbeat, self.now)
        if due > self.now:
            self.wakes.append(due)
            return
        for key, value in changed.items():
            setattr(s, key, value)

    def start_timeout(self, pod: PodView) -> Outcome:
        """The attempt whose session did not start within `timeouts.startSeconds`, and why it waits."""
        why = pod.waiting_reason or pod.unschedulable or f"pod phase {pod.phase}"
        detail = pod.waiting_message if pod.waiting_reason else pod.unschedulable_message
        message = (
            f"the session in pod {pod.name} did not start within {self.spec.timeouts.start_seconds} s "
            f"(timeouts.startSeconds): {why}" + (f": {detail}" if detail else "")
        )
        return classify.lost(classify.START_TIMEOUT, message[: classify.MAX_MESSAGE])

    def refuse_create(self) -> None:
        """The API server refused the pod just asked for: no create; the attempt waits, and says why."""
        refused = self.dispatch.create_refused
        if refused is None or self.create is None:
            return
        self.create = None
        s = self.status
        s.reason, s.message = FAILED_CREATE, refused
        self.event("Warning", FAILED_CREATE, refused)

    def end_attempt(self, outcome: Outcome, pod: PodView | None) -> None:
        s, retry = self.status, self.spec.retry
        self.outcomes.append(outcome)
        started = pod.session_started_at or pod.pod_started_at if pod is not None else None
        record = AttemptRecord(
            attempt=s.attempt,
            pod_name=s.pod_name,
            start_time=started,
            end_time=self.now,
            outcome=outcome.reason,
            exit_code=outcome.exit_code,
            failure_class=outcome.failure_class,
            message=outcome.message or None,
            usage=self.attempt_usage(pod),
        )
        s.attempts = [*s.attempts, record][-self.limits.history_limit :]
        s.usage = usage.add(s.usage, record.usage)
        self.mirror_report(outcome)
        if outcome.resume_token:
            s.resume_token = outcome.resume_token
        s.failure_class = outcome.failure_class
        what = f"attempt {s.attempt} ended: {outcome.reason}" + (
            f": {outcome.message}" if outcome.message else ""
        )
        if outcome.verdict not in ("Succeed", "Fail"):
            spent = usage.spent(self.spec.budget, s.usage, s.start_time, self.now)
            if spent is not None:  # no attempt may follow: fail now rather than after a wait
                self.finish("Failed", BUDGET_EXCEEDED, f"{what}; {spent}")
                return
        match outcome.verdict:
            case "Succeed":
                self.finish("Succeeded", outcome.reason, f"attempt {s.attempt} completed")
            case "Fail":
                self.finish("Failed", outcome.reason, what)
            case "Retry":
                s.failures += 1
                s.resumes = 0
                if s.failures >= retry.max_attempts:
                    self.finish(
                        "Failed",
                        BACKOFF_LIMIT_EXCEEDED,
                        f"{s.failures} attempts failed (retry.maxAttempts: {retry.max_attempts}); {what}",
                    )
                else:
                    self.back_off(s.failures, what)
            case "Ignore":
                s.infrastructure_failures += 1
                if s.infrastructure_failures > retry.max_infrastructure_failures:
                    self.finish(
                        "Failed",
                        INFRASTRUCTURE_LIMIT_EXCEEDED,
                        f"{s.infrastructure_failures} infrastructure failures "
                        f"(retry.maxInfrastructureFailures: {retry.max_infrastructure_failures}); {what}",
                    )
                    return
                streak = 0
                for past in reversed(s.attempts):
                    if past.failure_class != "Infrastructure":
                        break
                    streak += 1
                self.back_off(max(streak, 1), what)
            case "Resume":
                if s.resumes >= retry.max_resumes:
                    self.finish(
                        "Failed",
                        RESUME_LIMIT_EXCEEDED,
                        f"{s.resumes + 1} timeouts in a row (retry.maxResumes: {retry.max_resumes}); {what}",
                    )
                else:
                    s.resumes += 1
                    s.phase, s.pod_name, s.requeue_at = "Pending", None, None
                    s.reason, s.message = outcome.reason, f"{what}; resuming"
                    self.event("Normal", "Resuming", s.message)
            case "Requeue":
                if s.requeues >= retry.max_requeues:
                    self.finish(
                        "Failed",
                        REQUEUE_LIMIT_EXCEEDED,
                        f"{s.requeues + 1} quota stops (retry.maxRequeues: {retry.max_requeues}); {what}",
                    )
                    return
                s.requeues += 1
                s.resumes = 0
                seed = f"{self.dispatch.uid}/{s.attempt}"
                if outcome.reset_at is not None:
                    reset = outcome.reset_at.replace(microsecond=0)
                    longest = self.now + timedelta(seconds=self.limits.max_quota_wait_seconds)
                    base = min(max(reset, self.now), longest)
                    until = base + timedelta(seconds=backoff.requeue_jitter(retry.backoff, seed))
                    gate = self.dispatch.gate
                    if gate is not None and not gate.missing:
                        until = quota.resume_at(gate, until)  # paced: the pool's members share the reset
                    when = f"the quota resets at {reset.isoformat()}"
                    if reset > longest:
                        # A reset that far away is more often a misread than a real quota: look again then.
                        when += (
                            f", more than the operator's longest quota wait "
                            f"({self.limits.max_quota_wait_seconds} s) away"
                        )
                    if gate is not None and not gate.missing:
                        self.pool_exhausted_until = base
                else:
                    until = self.now + timedelta(seconds=backoff.delay(retry.backoff, s.requeues, seed))
                    when = "the quota reset time is unknown"
                self.wait_until(
                    "Requeued", until, QUOTA_EXHAUSTED, f"{what}; {when}; next attempt at {until.isoformat()}"
                )

    def attempt_usage(self, pod: PodView | None) -> Usage | None:
        """What the ending attempt spent: its supervisor's final report, else the report its pod's DELETED
        event carried, else the latest figures of its (trusted) Lease: a pod the operator deletes ends
        its attempt before its supervisor reports."""
        s = self.status
        found = usage.from_report(pod.supervisor_message) if pod is not None else None
        gone = self.dispatch.gone_pod_report
        if found is None and gone is not None and gone[0] == s.pod_name:
            found = usage.from_report(gone[1])
        heartbeat = self.dispatch.heartbeat
        lease = heartbeat.lease if heartbeat is not None else None
        trusted = (
            pod is not None
            and lease is not None
            and live.distrust(lease, pod, self.dispatch.name, s.attempt) is None
        )
        if found is None and trusted and lease is not None:
            found = lease.usage
        return found

    def stop_over_budget(self, pod: PodView, running: Usage | None) -> bool:
        """Stop the current attempt when a budget is spent, its usage so far (`running`, from its Lease)
        counted: its pod is deleted (the session gets TERM and the pod's grace), and the dispatch fails."""
        s, budget = self.status, self.spec.budget
        if budget is None or pod.session is not None or pod.deleting:
            return False
        spent = usage.spent(budget, usage.add(s.usage, running), s.start_time, self.now)
        if spent is None:
            limit = usage.time_limit(budget, s.start_time)
            if limit is not None:
                self.wakes.append(limit)
            return False
        self.delete_pod(pod)
        message = f"{spent}, so pod {pod.name} was deleted"
        self.end_attempt(Outcome(BUDGET_EXCEEDED, "Fail", message=message[: classify.MAX_MESSAGE]), pod)
        return True

    def back_off(self, failures: int, what: str) -> None:
        s = self.status
        seconds = backoff.delay(self.spec.retry.backoff, failures, f"{self.dispatch.uid}/{s.attempt}")
        until = self.now + timedelta(seconds=seconds)
        self.wait_until("Backoff", until, "BackOff", f"{what}; next attempt in {seconds} s")

    def mirror_report(self, outcome: Outcome) -> None:
        s, report = self.status, outcome.report
        for key, attribute in (
            (protocol.REPORT_DEADLINE, "deadline"),
            (protocol.REPORT_DEADLINE_CAP, "deadline_cap"),
            (protocol.REPORT_LAST_ACTIVITY, "last_activity_time"),
            (protocol.REPORT_LAST_OUTPUT, "last_output_time"),
        ):
            value = parse_time(report.get(key))
            if value is not None:
                setattr(s, attribute, value.replace(microsecond=0))
        if report.get(protocol.REPORT_ACTIVITY_REASON) in protocol.ACTIVITY_REASONS:
            s.activity_reason = report[protocol.REPORT_ACTIVITY_REASON]  # type: ignore[assignment]

    def suspend(self, current: PodView | None) -> None:
        s = self.status
        if s.phase in IN_FLIGHT and s.pod_name is not None:
            if current is not None:
                self.delete_pod(current)
            record = AttemptRecord(
                attempt=s.attempt,
                pod_name=s.pod_name,
                start_time=(current.session_started_at if current is not None else None),
                end_time=self.now,
                outcome=SUSPENDED,
                message="suspended (spec.suspend); the next attempt resumes it",
            )
            s.attempts = [*s.attempts, record][-self.limits.history_limit :]
        if s.phase != "Suspended":
            s.phase, s.reason, s.message = "Suspended", SUSPENDED, "spec.suspend is true"
            self.event("Normal", SUSPENDED, "spec.suspend is true: no attempt runs until it is false")

    def take_suspended_token(self) -> None:
        """The resume token the suspended attempt's supervisor reported on TERM, once its pod shows it:
        the attempt was recorded `Suspended` when its pod was deleted, before that report existed."""
        s = self.status
        last = s.attempts[-1] if s.attempts else None
        if last is None or last.outcome != SUSPENDED or last.attempt != s.attempt:
            return  # no suspension, or a later attempt already started
        pod = next((p for p in self.pods if p.name == last.pod_name), None)
        message = pod.supervisor_message if pod is not None else None
        gone = self.dispatch.gone_pod_report
        if message is None and gone is not None and gone[0] == last.pod_name:
            message = gone[1]
        token = classify.read_resume_token(message)
        if token is not None:
            s.resume_token = token
        if last.usage is None and (found := usage.from_report(message)) is not None:
            last.usage = found  # recorded once, so added to the totals once
            s.usage = usage.add(s.usage, found)

    def unsuspend(self) -> None:
        s = self.status
        last = s.attempts[-1] if s.attempts else None
        if s.requeue_at is not None and self.now < s.requeue_at:
            s.phase = "Requeued" if last is not None and last.failure_class == "Quota" else "Backoff"
        else:
            s.phase, s.pod_name, s.requeue_at = "Pending", None, None
        s.reason, s.message = "Resumed", "spec.suspend is false"
        self.event("Normal", "Resumed", "spec.suspend is false: attempts continue")

    def start_next(self) -> None:
        s, retry = self.status, self.spec.retry
        spent = usage.spent(self.spec.budget, s.usage, s.start_time, self.now)
        limit = usage.time_limit(self.spec.budget, s.start_time)
        if spent is not None:
            self.finish("Failed", BUDGET_EXCEEDED, f"no further attempt: {spent}")
            return
        if s.requeue_at is not None and self.now < s.requeue_at:
            if limit is not None and s.requeue_at >= limit:  # the budget was lowered while waiting
                assert self.spec.budget is not None
                wait = usage.wait_message(self.spec.budget, limit, s.requeue_at)
                self.finish("Failed", BUDGET_EXCEEDED, f"no further attempt: {wait}")
                return
            self.wakes.append(s.requeue_at)
            return
        if any(p.live for p in self.pods):
            return  # the last pod is still stopping; its deletion wakes us
        if s.failures >= retry.max_attempts:  # the limit was lowered while waiting
            self.finish(
                "Failed",
                BACKOFF_LIMIT_EXCEEDED,
                f"{s.failures} attempts failed (spec.retry.maxAttempts is {retry.max_attempts})",
            )
            return
        if s.infrastructure_failures > retry.max_infrastructure_failures:  # lowered while waiting, too
            self.finish(
                "Failed",
                INFRASTRUCTURE_LIMIT_EXCEEDED,
                f"{s.infrastructure_failures} infrastructure failures "
                f"(spec.retry.maxInfrastructureFailures is {retry.max_infrastructure_failures})",
            )
            return
        gate = self.dispatch.gate
        if gate is not None and not self.pool_allows(gate):
            return
        attempt = s.attempt + 1
        self.create = self.request(attempt)
        resume = self.create.resume
        if not resume:
            s.resume_token = None
        s.attempt, s.pod_name = attempt, pod_name(self.dispatch.name, attempt)
        s.phase, s.requeue_at = "Pending", None
        s.deadline = s.deadline_cap = None
        s.reason = "Created"
        s.message = f"created pod {s.pod_name} for attempt {attempt}" + (" (resuming)" if resume else "")
        if gate is not None and gate.missing:
            s.message += f" (its QuotaPool {gate.pool!r} does not exist: the attempt is not held back)"
            self.event("Warning", QUOTA_POOL_MISSING, s.message)
        self.refuse_create()

    def pool_allows(self, gate: Gate) -> bool:
        """Whether the dispatch's QuotaPool lets it start now; if not, wait as the pool says."""
        s = self.status
        if gate.exhausted_until is not None:
            seed = f"{self.dispatch.uid}/{s.attempt}/pool"
            earliest = later(gate.exhausted_until, backoff.requeue_jitter(self.spec.retry.backoff, seed))
            # Reached only once any requeueAt of its own has passed (`start_next`): a new second, paced.
            until = quota.resume_at(gate, earliest)
            message = (
                f"quota pool {gate.pool!r} is exhausted until {gate.exhausted_until.isoformat()}; "
                f"next attempt at {until.isoformat()}"
            )
            self.wait_until("Requeued", until, QUOTA_POOL_EXHAUSTED, message)
            self.wakes.append(until)
            return False
        if gate.full:
            if (s.phase, s.reason) != ("Pending", QUOTA_POOL_FULL):
                s.phase, s.pod_name, s.requeue_at, s.reason = "Pending", None, None, QUOTA_POOL_FULL
                s.message = (
                    f"waiting for a free slot in quota pool {gate.pool!r} "
                    f"(maxConcurrent {gate.max_concurrent}; admitted in creation order)"
                )
                self.event("Normal", QUOTA_POOL_FULL, s.message)
            return False
        return True

    def request(self, attempt: int) -> AttemptRequest:
        s = self.status
        last = s.attempts[-1] if s.attempts else None
        resume = last is not None and (last.failure_class in RESUMING_CLASSES or last.outcome == SUSPENDED)
        return AttemptRequest(attempt=attempt, resume=resume, resume_token=s.resume_token if resume else None)

    def set_conditions(self) -> None:
        s, generation, now = self.status, self.dispatch.generation, self.now
        phase = s.phase or "Pending"
        reason, message = s.reason or phase, s.message or ""
        table: list[tuple[str, bool, str]] = [
            (conditions.READY, phase == "Succeeded", "Succeeded" if phase == "Succeeded" else phase),
            (conditions.RECONCILING, phase in IN_FLIGHT | WAITING, phase),
            (
                conditions.STALLED,
                phase == "Failed",
                condition_reason(reason, phase) if phase == "Failed" else phase,
            ),
            (
                conditions.REQUEUED,
                phase == "Requeued",
                condition_reason(reason, phase) if phase == "Requeued" else phase,
            ),
            (conditions.SUSPENDED, phase == "Suspended", phase),
        ]
        result = list(s.conditions)
        for type_, true, why in table:
            result = conditions.set_condition(
                result,
                type_,
                status="True" if true else "False",
                reason=why,
                # A false condition has nothing to explain beyond its reason, except Ready: why not yet.
                message=message if true or type_ == conditions.READY else "",
                generation=generation,
                now=now,
            )
        refused = conditions.find(result, conditions.POD_CREATE_FAILED)
        if s.reason == FAILED_CREATE or refused is not None:
            # Only once a create was refused: while it is, and that it no longer is.
            failing = s.reason == FAILED_CREATE
            result = conditions.set_condition(
                result,
                conditions.POD_CREATE_FAILED,
                status="True" if failing else "False",
                reason=FAILED_CREATE if failing else "Created",
                message=message if failing else "",
                generation=generation,
                now=now,
            )
        s.conditions = result


def bound(status: FleetDispatchStatus) -> None:
    """Cut what the status repeats from pods and sessions to the CRD's bounds, so every write is admitted
    (a refused status write would leave the dispatch where it was, forever)."""
    if status.reason is not None:
        status.reason = status.reason[:MAX_REASON]
    if status.message is not None:
        status.message = status.message[:MAX_MESSAGE]
    for record in status.attempts:
        if record.outcome is not None:
            record.outcome = record.outcome[:MAX_REASON]
        if record.message is not None:
            record.message = record.message[:MAX_RECORD_MESSAGE]


def _when(moment: datetime) -> str:
    """`moment` as Kubernetes writes it, or as it came when it has no UTC form (a pod's creationTimestamp
    of year 9999 at -14:00 is year 10000 in UTC): an Event's message never stops a reconcile."""
    try:
        return format_time(moment)
    except (ValueError, OverflowError, OSError):
        return moment.isoformat()


def condition_reason(reason: str, phase: Phase) -> str:
    """`reason` as a condition's reason when it is one (CamelCase, as the operator's own are), else the
    phase: a kubelet's or a disruption's reason may be any text."""
    fits = len(reason) <= MAX_CONDITION_REASON and CONDITION_REASON.match(reason)
    return reason if fits else phase


def reconcile(
    dispatch: Dispatch, pods: Sequence[PodView], now: datetime, limits: Limits = Limits()
) -> Decision:
    """The next status and actions for `dispatch`, whose pods (every one labelled with it) are `pods`."""
    # The working copy the steps change: validating a dump is about 7 times cheaper than a deep copy of the
    # model (bench/README.md, [scale]), and gives the same status.
    working = FleetDispatchStatus.model_validate(dispatch.status.model_dump(round_trip=True))
    run = _Reconcile(dispatch, pods, now.replace(microsecond=0), limits, working)
    run.run()
    run.remove_earlier_pods()
    run.expire()
    bound(run.status)
    run.set_conditions()
    return Decision(
        status=run.status,
        create=run.create,
        delete=tuple(run.delete),
        wake_at=min(run.wakes) if run.wakes else None,
        events=tuple(run.events),
        outcomes=tuple(run.outcomes),
        pool_exhausted_until=run.pool_exhausted_until,
        delete_dispatch=run.delete_dispatch,
    )
