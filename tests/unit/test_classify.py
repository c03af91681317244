"""`classify`: design section 5 row by row, then `failurePolicy`, from pods fed through `observe`."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.api.models import FailurePolicy
from fleetdispatch.core import classify
from fleetdispatch.core.classify import Outcome, apply_policy, judge, lost, read_outcome
from fleetdispatch.core.podstatus import observe
from pods import T0, make_pod, outcome, running, supervisor_report, terminated, waiting

RESET = "2025-03-01T17:00:00Z"
REPORT = {
    "deadline": "2025-03-01T13:00:00Z",
    "deadlineCap": "2025-03-01T15:00:00Z",
    "lastActivityTime": "2025-03-01T12:58:10Z",
    "activityReason": "cpu",
    "lastOutputTime": "2025-03-01T12:40:00Z",
}


def ended(
    exit_code: int,
    message: str | None = None,
    *,
    reason: str | None = None,
    supervisor_message: str | None = None,
    **pod: Any,
) -> Outcome | None:
    """The judgement of a pod whose session exited, with the supervisor stopped after it."""
    return judge(
        None,
        observe(
            make_pod(
                phase=pod.pop("phase", "Succeeded" if exit_code == 0 else "Failed"),
                started=T0,
                supervisor=terminated(0, message=supervisor_message),
                session=terminated(exit_code, reason=reason, message=message),
                **pod,
            )
        ),
    )


def policy(*rules: dict[str, Any]) -> FailurePolicy:
    return FailurePolicy.model_validate({"rules": list(rules)})


# --- while the attempt runs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pod",
    [
        make_pod(phase=None),
        make_pod(phase="Pending", started=T0, supervisor=running(T0), session=waiting("ContainerCreating")),
        make_pod(phase="Pending", started=T0, supervisor=running(T0), session=waiting("ImagePullBackOff")),
        make_pod(phase="Running", started=T0, supervisor=running(T0), session=running(T0)),
    ],
)
def test_no_outcome_while_the_session_runs_or_starts(pod: dict[str, Any]) -> None:
    assert judge(None, observe(pod)) is None


# --- the table of design section 5 ------------------------------------------------------------------------


def test_exit_0_without_an_outcome_succeeds() -> None:
    assert ended(0) == Outcome("Completed", "Succeed", None, exit_code=0)


def test_exit_0_with_a_completed_outcome_succeeds_with_its_message() -> None:
    result = ended(0, outcome("Completed", message="merged 3 PRs"))
    assert result == Outcome("Completed", "Succeed", None, exit_code=0, message="merged 3 PRs")
    assert result.succeeded


def test_a_completed_outcome_with_a_non_zero_exit_is_a_logic_failure() -> None:
    result = ended(2, outcome("Completed"))
    assert result is not None
    assert (result.reason, result.verdict, result.failure_class) == ("Failed", "Retry", "Logic")
    assert result.message == "the session exited with code 2"


def test_a_failed_outcome_is_a_logic_failure_even_with_exit_0() -> None:
    result = ended(0, outcome("Failed", message="tests do not pass"))
    assert result == Outcome("Failed", "Retry", "Logic", exit_code=0, message="tests do not pass")


@pytest.mark.parametrize("exit_code", [75, 0, 1])
def test_quota_exhausted_by_outcome_requeues_at_the_reset(exit_code: int) -> None:
    result = ended(
        exit_code, outcome("QuotaExhausted", resetAt=RESET, resumeToken="sess-42", message="5h limit")
    )
    assert result == Outcome(
        "QuotaExhausted",
        "Requeue",
        "Quota",
        exit_code=exit_code,
        message="5h limit",
        reset_at=T0 + timedelta(hours=5),
        resume_token="sess-42",
    )


def test_quota_exhausted_with_an_unreadable_reset_time_has_none() -> None:
    result = ended(75, outcome("QuotaExhausted", resetAt="soon"))
    assert result is not None
    assert (result.verdict, result.reset_at) == ("Requeue", None)


def test_exit_75_without_an_outcome_is_quota_exhausted() -> None:
    assert ended(75) == Outcome("QuotaExhausted", "Requeue", "Quota", exit_code=75)


def test_exit_75_with_a_log_tail_keeps_the_tail() -> None:
    result = ended(75, "quota guard: reset in 4h, budget 1h left\n")
    assert result is not None
    assert (result.reason, result.failure_class) == ("QuotaExhausted", "Quota")
    assert result.message == "quota guard: reset in 4h, budget 1h left\n"


@pytest.mark.parametrize(("reason", "exit_code"), [("DeadlineExceeded", 143), ("IdleTimeout", 137)])
def test_a_supervisor_stop_written_into_the_session_message_resumes(reason: str, exit_code: int) -> None:
    # The supervisor writes outcome.json in the shared volume, which is the session's termination message.
    message = outcome(reason, message="the deadline passed", resumeToken="tok-7", **REPORT)
    result = ended(exit_code, message)
    assert result == Outcome(
        reason,
        "Resume",
        "Timeout",
        exit_code=exit_code,
        message="the deadline passed",
        resume_token="tok-7",
        report=REPORT,
    )


def test_only_known_report_fields_that_are_strings_are_kept() -> None:
    result = ended(
        143, outcome("DeadlineExceeded", deadline=5, lastOutputTime=REPORT["lastOutputTime"], pid=3)
    )
    assert result is not None
    assert result.report == {"lastOutputTime": REPORT["lastOutputTime"]}


def test_the_supervisor_message_is_read_when_the_session_has_none() -> None:
    result = ended(143, None, supervisor_message=outcome("IdleTimeout", message="no output for 1800 s"))
    assert result is not None
    assert (result.reason, result.verdict, result.failure_class) == ("IdleTimeout", "Resume", "Timeout")
    assert result.message == "no output for 1800 s"


def test_the_supervisor_message_is_read_when_the_session_left_a_log_tail() -> None:
    result = ended(143, "Terminated\n", supervisor_message=outcome("DeadlineExceeded"))
    assert result is not None
    assert result.reason == "DeadlineExceeded"


def test_the_session_message_wins_over_the_supervisor_message() -> None:
    result = ended(75, outcome("QuotaExhausted"), supervisor_message=outcome("DeadlineExceeded"))
    assert result is not None
    assert result.reason == "QuotaExhausted"


@pytest.mark.parametrize(
    "message",
    [
        "Traceback (most recent call last):\n  File 'agent.py'\nRuntimeError: no\n",
        '["not", "an", "object"]',
        '{"message": "no reason"}',
        '{"reason": 3}',
        '{"reason": "not camel case"}',
        '{"reason": "' + "A" * 65 + '"}',
        '{"reason": "QuotaExha',  # cut at the kubelet's 4096 bytes
    ],
)
def test_a_message_that_is_not_an_outcome_is_kept_as_a_log_tail(message: str) -> None:
    result = ended(1, message)
    assert result == Outcome("Failed", "Retry", "Logic", exit_code=1, message=message)


def test_a_log_tail_is_cut_to_the_attempt_message_size() -> None:
    result = ended(1, "x" * 5000)
    assert result is not None
    assert result.message == "x" * classify.MAX_MESSAGE


def test_an_outcome_message_is_cut_too() -> None:
    result = ended(1, outcome("Failed", message="y" * 3000))
    assert result is not None
    assert result.message == "y" * classify.MAX_MESSAGE


def test_any_other_non_zero_exit_is_a_logic_failure() -> None:
    assert ended(1) == Outcome(
        "Failed", "Retry", "Logic", exit_code=1, message="the session exited with code 1"
    )


def test_a_custom_reason_is_kept_as_a_logic_failure() -> None:
    result = ended(3, outcome("NeedsHumanReview", message="ambiguous spec"))
    assert result == Outcome("NeedsHumanReview", "Retry", "Logic", exit_code=3, message="ambiguous spec")


def test_oom_killed_is_a_logic_failure_with_advice() -> None:
    result = ended(137, reason="OOMKilled")
    assert result is not None
    assert (result.reason, result.verdict, result.failure_class, result.exit_code) == (
        "OOMKilled",
        "Retry",
        "Logic",
        137,
    )
    assert "memory limit" in result.message


def test_a_stop_outcome_wins_over_oom_killed() -> None:
    # The supervisor wrote the outcome, then the kernel killed the stopping session.
    result = ended(137, outcome("DeadlineExceeded"), reason="OOMKilled")
    assert result is not None
    assert result.reason == "DeadlineExceeded"


@pytest.mark.parametrize("reason", ["ContainerStatusUnknown", "ContainerCannotRun", "StartError"])
def test_a_container_the_kubelet_lost_or_could_not_run_is_infrastructure(reason: str) -> None:
    result = ended(128, "failed to create containerd task", reason=reason)
    assert result is not None
    assert (result.reason, result.verdict, result.failure_class) == (reason, "Ignore", "Infrastructure")


def test_a_finished_pod_without_a_session_status_is_infrastructure() -> None:
    result = judge(None, observe(make_pod(phase="Failed", started=T0, supervisor=terminated(0))))
    assert result is not None
    assert (result.reason, result.verdict, result.failure_class) == (
        "ContainerStatusUnknown",
        "Ignore",
        "Infrastructure",
    )


def test_a_kubelet_eviction_is_infrastructure() -> None:
    pod = make_pod(
        phase="Failed",
        started=T0,
        evicted="The node was low on resource: ephemeral-storage.",
        supervisor=terminated(0),
        session=terminated(137),
    )
    result = judge(None, observe(pod))
    assert result == Outcome(
        "Evicted", "Ignore", "Infrastructure", message="The node was low on resource: ephemeral-storage."
    )


def test_an_eviction_before_the_session_started_is_infrastructure() -> None:
    result = judge(None, observe(make_pod(phase="Failed", evicted="")))
    assert result is not None
    assert (result.reason, result.failure_class) == ("Evicted", "Infrastructure")
    assert result.message == "pod job-1 was disrupted (Evicted)"


@pytest.mark.parametrize(
    "reason", ["PreemptionByScheduler", "DeletionByTaintManager", "EvictionByEvictionAPI", "DeletionByPodGC"]
)
def test_a_disruption_is_infrastructure_under_its_own_reason(reason: str) -> None:
    pod = make_pod(
        phase="Running",
        started=T0,
        supervisor=running(T0),
        session=running(T0),
        disruption=reason,
        disruption_message="node drained",
        # The eviction API, the taint manager and the pod GC delete the pod after marking it.
        deleting=T0 + timedelta(seconds=1),
    )
    result = judge(None, observe(pod))
    assert result == Outcome(reason, "Ignore", "Infrastructure", message="node drained")


def test_a_disruption_after_the_session_succeeded_changes_nothing() -> None:
    pod = make_pod(
        phase="Running",
        supervisor=running(T0),
        session=terminated(0, message=outcome("Completed")),
        disruption="PreemptionByScheduler",
        deleting=T0,
    )
    result = judge(None, observe(pod))
    assert result is not None
    assert result.succeeded


def test_a_pod_deleted_by_someone_while_the_session_runs_is_infrastructure() -> None:
    pod = make_pod(phase="Running", supervisor=running(T0), session=running(T0), deleting=T0)
    result = judge(None, observe(pod))
    assert result is not None
    assert (result.reason, result.verdict, result.failure_class) == ("PodDeleted", "Ignore", "Infrastructure")
    assert result.exit_code is None


def test_a_deleted_pod_is_pod_deleted_whatever_its_containers_report_after_the_term() -> None:
    # The TERM of the deletion makes the session exit; even an outcome written then says nothing.
    pod = make_pod(
        phase="Running",
        supervisor=running(T0),
        session=terminated(143, message=outcome("Failed")),
        deleting=T0,
    )
    result = judge(None, observe(pod))
    assert result is not None
    assert result.reason == "PodDeleted"


def test_a_deleted_pod_whose_session_succeeded_succeeded() -> None:
    pod = make_pod(phase="Running", supervisor=running(T0), session=terminated(0), deleting=T0)
    result = judge(None, observe(pod))
    assert result is not None
    assert result.succeeded


@pytest.mark.parametrize(
    ("reason", "failure_class", "verdict"),
    [
        ("PodDeleted", "Infrastructure", "Ignore"),
        ("SupervisorLost", "Infrastructure", "Ignore"),
        ("Evicted", "Infrastructure", "Ignore"),
        ("ContainerStatusUnknown", "Infrastructure", "Ignore"),
        ("DeadlineExceeded", "Timeout", "Resume"),
    ],
)
def test_lost_uses_the_default_class_of_its_reason(reason: str, failure_class: str, verdict: str) -> None:
    assert lost(reason, "why") == Outcome(reason, verdict, failure_class, message="why")  # type: ignore[arg-type]


def test_read_outcome() -> None:
    assert read_outcome(None) is None
    assert read_outcome("") is None
    assert read_outcome("null") is None
    assert read_outcome(outcome("QuotaExhausted", resetAt=RESET)) == {
        "reason": "QuotaExhausted",
        "resetAt": RESET,
    }


# --- failurePolicy ----------------------------------------------------------------------------------------


def test_no_policy_or_no_rules_keeps_the_default() -> None:
    default = ended(1)
    assert default is not None
    assert apply_policy(None, default) == default
    assert apply_policy(FailurePolicy(), default) == default


def test_the_first_matching_rule_wins() -> None:
    rules = policy(
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [5, 6]}},
        {"action": "Fail", "onExitCodes": {"operator": "In", "values": [6]}},
        {"action": "Fail", "onOutcome": {"reasons": ["Failed"]}},
    )
    base = ended(6)
    assert base is not None
    assert apply_policy(rules, base).verdict == "Ignore"
    other = ended(7)
    assert other is not None
    assert apply_policy(rules, other).verdict == "Fail"


@pytest.mark.parametrize(
    ("operator", "values", "exit_code", "matches"),
    [
        ("In", [2, 3], 2, True),
        ("In", [2, 3], 4, False),
        ("NotIn", [2, 3], 4, True),
        ("NotIn", [2, 3], 3, False),
        ("NotIn", [1], 0, False),  # exit 0 never matches, even NotIn
    ],
)
def test_on_exit_codes_in_and_not_in(operator: str, values: list[int], exit_code: int, matches: bool) -> None:
    rules = policy({"action": "Fail", "onExitCodes": {"operator": operator, "values": values}})
    # A failed outcome with this exit code: a `Failed` outcome makes exit 0 a failure too.
    default = ended(exit_code, outcome("Failed"))
    assert default is not None
    assert apply_policy(rules, default).verdict == ("Fail" if matches else "Retry")


def test_no_rule_turns_a_success_into_a_failure() -> None:
    rules = policy(
        {"action": "Fail", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        {"action": "Fail", "onOutcome": {"reasons": ["Completed"]}},
    )
    success = ended(0)
    assert success is not None
    assert apply_policy(rules, success) == success


def test_exit_code_rules_never_match_an_attempt_without_exit_code() -> None:
    rules = policy({"action": "Fail", "onExitCodes": {"operator": "NotIn", "values": [1]}})
    deleted = lost("PodDeleted", "gone")
    assert apply_policy(rules, deleted) == deleted


@pytest.mark.parametrize("reason", ["Evicted", "PodDeleted", "SupervisorLost", "OOMKilled"])
def test_on_outcome_matches_the_operator_reasons(reason: str) -> None:
    rules = policy({"action": "Fail", "onOutcome": {"reasons": [reason]}})
    default = ended(137, reason="OOMKilled") if reason == "OOMKilled" else lost(reason, "m")
    assert default is not None
    result = apply_policy(rules, default)
    assert result.verdict == "Fail"
    assert result.failure_class == default.failure_class
    assert result.reason == reason


def test_on_outcome_matches_a_custom_reason() -> None:
    rules = policy({"action": "Requeue", "onOutcome": {"reasons": ["UpstreamBusy", "RateLimited"]}})
    default = ended(4, outcome("RateLimited", resetAt=RESET))
    assert default is not None
    result = apply_policy(rules, default)
    assert (result.verdict, result.failure_class, result.reset_at) == (
        "Requeue",
        "Quota",
        T0 + timedelta(hours=5),
    )


@pytest.mark.parametrize(
    ("action", "failure_class"),
    [("Retry", "Logic"), ("Resume", "Timeout"), ("Requeue", "Quota"), ("Ignore", "Infrastructure")],
)
def test_the_class_follows_the_action(action: str, failure_class: str) -> None:
    for default in (ended(9), ended(143, outcome("DeadlineExceeded")), lost("Evicted", "m"), ended(75)):
        assert default is not None
        rules = policy({"action": action, "onOutcome": {"reasons": [default.reason]}})
        result = apply_policy(rules, default)
        assert (result.verdict, result.failure_class) == (action, failure_class)
        assert (result.reason, result.exit_code, result.message) == (
            default.reason,
            default.exit_code,
            default.message,
        )


@pytest.mark.parametrize(
    ("default", "failure_class"),
    [
        (lost("SupervisorLost", "m"), "Infrastructure"),
        (Outcome("DeadlineExceeded", "Resume", "Timeout"), "Timeout"),
        (Outcome("QuotaExhausted", "Requeue", "Quota"), "Quota"),
        (Outcome("Failed", "Retry", "Logic"), "Logic"),
        (Outcome("Odd", "Retry", None), "Logic"),
    ],
)
def test_fail_keeps_the_default_class(default: Outcome, failure_class: str) -> None:
    rules = policy({"action": "Fail", "onOutcome": {"reasons": [default.reason]}})
    result = apply_policy(rules, default)
    assert (result.verdict, result.failure_class) == ("Fail", failure_class)


def test_judge_applies_the_policy_to_every_kind_of_end() -> None:
    rules = policy(
        {"action": "Fail", "onOutcome": {"reasons": ["PodDeleted", "Evicted", "ContainerStatusUnknown"]}},
        {"action": "Fail", "onExitCodes": {"operator": "In", "values": [42]}},
    )
    pods = [
        make_pod(phase="Running", supervisor=running(T0), session=running(T0), deleting=T0),
        make_pod(phase="Failed", evicted="low memory"),
        make_pod(phase="Failed"),
        make_pod(phase="Failed", supervisor=terminated(0), session=terminated(42)),
    ]
    for pod in pods:
        result = judge(rules, observe(pod))
        assert result is not None
        assert result.verdict == "Fail", pod


# --- properties -------------------------------------------------------------------------------------------

reasons = st.sampled_from(
    [
        "Completed",
        "Failed",
        "QuotaExhausted",
        "DeadlineExceeded",
        "IdleTimeout",
        "NeedsReview",
        "SupervisorLost",
    ]
)
messages = st.one_of(
    st.none(),
    st.text(max_size=50),
    st.builds(lambda r, m: json.dumps({"reason": r, "message": m}), reasons, st.text(max_size=20)),
)


@settings(max_examples=200, deadline=None)
@given(
    exit_code=st.integers(0, 255),
    message=messages,
    supervisor_message=messages,
    phase=st.sampled_from(["Running", "Succeeded", "Failed"]),
    deleting=st.booleans(),
    evicted=st.booleans(),
    container_reason=st.sampled_from([None, "Error", "OOMKilled", "StartError"]),
)
def test_every_ended_session_gets_a_consistent_outcome(
    *,
    exit_code: int,
    message: str | None,
    supervisor_message: str | None,
    phase: str,
    deleting: bool,
    evicted: bool,
    container_reason: str | None,
) -> None:
    pod = make_pod(
        phase=phase,
        supervisor=terminated(0, message=supervisor_message),
        session=terminated(exit_code, reason=container_reason, message=message),
        deleting=T0 if deleting else None,
        evicted="low memory" if evicted else None,
    )
    result = judge(None, observe(pod))
    assert result is not None
    # Succeeding needs exit 0, and exit 0 without a contrary outcome always succeeds.
    if result.succeeded:
        assert exit_code == 0
        assert result.failure_class is None
    else:
        assert result.failure_class is not None
        assert {
            "Retry": "Logic",
            "Resume": "Timeout",
            "Requeue": "Quota",
            "Ignore": "Infrastructure",
        }[result.verdict] == result.failure_class
    assert len(result.message) <= classify.MAX_MESSAGE
    # What the default table decides is stable under a policy with no matching rule.
    assert apply_policy(policy({"action": "Fail", "onOutcome": {"reasons": ["Unmatched"]}}), result) == result


# --- the supervisor's final figures -----------------------------------------------------------------------


def test_an_ended_session_is_judged_once_its_supervisor_has_ended_too() -> None:
    stopping = make_pod(phase="Running", started=T0, supervisor=running(T0), session=terminated(0))
    assert judge(None, observe(stopping)) is None


def test_the_supervisors_final_figures_fill_in_what_the_outcome_does_not_say() -> None:
    result = ended(0, supervisor_message=json.dumps(REPORT))
    assert result is not None and result.succeeded
    assert result.report == REPORT
    stopped = outcome("DeadlineExceeded", deadline="2025-03-01T14:00:00Z")
    result = ended(143, stopped, supervisor_message=json.dumps(REPORT))
    assert result is not None and result.reason == "DeadlineExceeded"
    assert result.report == {**REPORT, "deadline": "2025-03-01T14:00:00Z"}  # the outcome's own wins


# --- the resume token the supervisor reports (on TERM: suspend, pod deletion) ------------------------------


def test_an_outcome_without_a_token_takes_the_one_the_supervisor_reported() -> None:
    stopped = outcome("DeadlineExceeded")
    result = ended(143, stopped, supervisor_message=supervisor_report("tok-term", **REPORT))
    assert result is not None
    assert (result.reason, result.resume_token, result.report) == ("DeadlineExceeded", "tok-term", REPORT)


def test_the_outcomes_own_token_wins_over_the_supervisors() -> None:
    stopped = outcome("QuotaExhausted", resumeToken="tok-own")
    result = ended(75, stopped, supervisor_message=supervisor_report("tok-term"))
    assert result is not None and result.resume_token == "tok-own"


@pytest.mark.parametrize(
    "message",
    [
        None,
        "not json",
        supervisor_report(),
        supervisor_report(""),
        json.dumps({"resumeToken": 42}),
        supervisor_report("x" * 2049),  # beyond MAX_RESUME_TOKEN_BYTES
        json.dumps(["resumeToken", "tok"]),
    ],
)
def test_a_report_without_a_readable_token_gives_none(message: str | None) -> None:
    result = ended(1, supervisor_message=message)
    assert result is not None and result.resume_token is None


def test_a_deleted_pod_takes_the_token_its_supervisor_reported_on_term() -> None:
    pod = make_pod(
        phase="Failed",
        supervisor=terminated(0, message=supervisor_report("tok-term")),
        session=terminated(143),
        deleting=T0,
    )
    result = judge(None, observe(pod))
    assert result is not None
    assert (result.reason, result.resume_token) == ("PodDeleted", "tok-term")


def test_a_disrupted_pod_takes_the_token_its_supervisor_reported_on_term() -> None:
    pod = make_pod(
        phase="Failed",
        started=T0,
        evicted="The node was low on resource: memory.",
        supervisor=terminated(0, message=supervisor_report("tok-term")),
        session=terminated(137),
    )
    result = judge(None, observe(pod))
    assert result is not None
    assert (result.reason, result.resume_token) == ("Evicted", "tok-term")
