"""Property test: for any spec, the API server (CRD schema + CEL, as `admission` emulates it) and the
operator's models agree on whether it is valid. It aims at the cross-field rules (CEL on one side,
validators on the other), which no static comparison can check; bounds are compared field by field in
test_api_contract. Values are drawn around the bounds and the rules' edges, so a rule that exists on one
side only shows up as a disagreement, with a minimal example."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.validation import manifests


def _around(low: int, high: int) -> st.SearchStrategy[int]:
    return st.sampled_from([low - 1, low, low + 1, high - 1, high, high + 1]) | st.integers(low - 5, high + 5)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


names = st.sampled_from(["session", "agent", "proxy", "fleet-supervisor", "Bad_Name", "x" * 64])
containers = st.lists(
    st.fixed_dictionaries({"name": names, "image": st.sampled_from(["busybox", ""])}), max_size=3
)
pod_specs = st.fixed_dictionaries(
    {"containers": containers},
    optional={
        "restartPolicy": st.sampled_from(["Never", "Always", "OnFailure"]),
        "shareProcessNamespace": st.booleans(),
        "activeDeadlineSeconds": st.integers(1, 100),
        "volumes": st.lists(
            st.fixed_dictionaries({"name": st.sampled_from(["work", "fleet-state", "cache"])}), max_size=2
        ),
    },
)
timeouts = st.fixed_dictionaries(
    {},
    optional={
        "deadlineSeconds": _around(1, 604800),
        "maxExtensionSeconds": _around(0, 604800),
        "idleOutputSeconds": st.sampled_from([0, 1, 5, 9, 10, 11, 3600]),
        "killGraceSeconds": _around(0, 3600),
    },
)
activity = st.fixed_dictionaries(
    {},
    optional={
        "pollSeconds": st.sampled_from([0, 1, 5, 10, 11, 3600, 3601]),
        "cpuPercentThreshold": _around(1, 10000),
        "apiEndpoints": st.lists(
            st.sampled_from([":443", "api.example.com:443", "[::1]:8080", "host", ":0", ":65535", ":65536"]),
            max_size=3,
        ),
        "outputPaths": st.lists(
            st.sampled_from(["out.log", "a/b.jsonl", "/abs", "../up", "a/../b", "..x"]), max_size=3
        ),
    },
)
backoff = st.fixed_dictionaries(
    {},
    optional={
        "baseSeconds": _around(1, 3600),
        "maxSeconds": _around(1, 86400),
        "jitterPercent": _around(0, 100),
    },
)
retry = st.fixed_dictionaries(
    {},
    optional={
        "maxAttempts": _around(1, 100),
        "maxResumes": _around(0, 100),
        "maxRequeues": _around(0, 1000),
        "backoff": backoff,
    },
)
rules = st.lists(
    st.fixed_dictionaries(
        {"action": st.sampled_from(["Fail", "Retry", "Resume", "Requeue", "Ignore", "Restart"])},
        optional={
            "onExitCodes": st.fixed_dictionaries(
                {
                    "operator": st.sampled_from(["In", "NotIn", "Equals"]),
                    "values": st.lists(st.integers(-1, 257), max_size=3),
                }
            ),
            "onOutcome": st.fixed_dictionaries(
                {
                    "reasons": st.lists(
                        st.sampled_from(["QuotaExhausted", "RateLimited", "bad_reason"]), max_size=2
                    )
                }
            ),
        },
    ),
    max_size=2,
)
specs = st.fixed_dictionaries(
    {"template": st.fixed_dictionaries({"spec": pod_specs})},
    optional={
        "timeouts": timeouts,
        "activity": activity,
        "retry": retry,
        "failurePolicy": st.fixed_dictionaries({"rules": rules}),
        "quotaPool": st.sampled_from(["pool", "team.pool", "Pool", "-pool", "p" * 254]),
        "suspend": st.booleans(),
    },
)


@settings(max_examples=400, deadline=None)
@given(spec=specs, name=st.sampled_from(["ok", "a" * 63, "a" * 64]))
def test_api_server_and_operator_agree_on_validity(spec: dict[str, Any], name: str) -> None:
    manifest = {
        "apiVersion": "fleet.dispatch.dev/v1alpha1",
        "kind": "FleetDispatch",
        "metadata": {"name": name},
    }
    verdict = manifests.check({**manifest, "spec": spec})
    assert bool(verdict.api_errors) == (verdict.model_error is not None), (
        f"API server says {[str(e) for e in verdict.api_errors]}, operator says {verdict.model_error}"
    )
