"""The controller's cache: what it keeps of a dispatch, read-your-own-writes, shared specs, and a
dispatch's pods (the index's and those created since)."""

from __future__ import annotations

from typing import Any

from fleetdispatch.controller.cache import Cached, DispatchCache, Key, Pods, SpecCache
from fleetdispatch.core.podstatus import PodView

KEY: Key = ("team", "job")
SPEC: dict[str, Any] = {
    "template": {"spec": {"containers": [{"name": "session", "image": "busybox", "command": ["true"]}]}}
}


def body(
    rv: str = "10",
    *,
    uid: str = "u1",
    generation: int = 1,
    spec: Any = None,
    status: dict[str, Any] | None = None,
    name: str = "job",
    **meta: Any,
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "team",
            "name": name,
            "uid": uid,
            "generation": generation,
            "resourceVersion": rv,
            "creationTimestamp": "2025-03-01T12:00:00Z",
            **meta,
        },
        "spec": SPEC if spec is None else spec,
        "status": status or {},
    }


def kept(cache: DispatchCache, key: Key = KEY) -> Cached:
    cached = cache.get(key)
    assert cached is not None, f"{key} is not cached"
    return cached


def test_a_dispatch_is_kept_as_its_identity_parsed_spec_and_status() -> None:
    cache = DispatchCache()
    assert cache.remember(KEY, body(status={"phase": "Running", "attempt": 1}))
    cached = cache.get(KEY)
    assert cached is not None
    assert (cached.uid, cached.generation, cached.resource_version, cached.deleting) == ("u1", 1, "10", False)
    assert cached.created == "2025-03-01T12:00:00Z"
    assert cached.status == {"phase": "Running", "attempt": 1}
    assert cached.parsed.spec is not None and cached.parsed.invalid is None
    assert cached.parsed.template == SPEC["template"]
    assert cached.pool is None


def test_an_older_version_of_the_same_object_is_ignored_a_newer_one_replaces_it() -> None:
    cache = DispatchCache()
    cache.remember(KEY, body("12", status={"phase": "Running"}))  # the response of our own write
    assert not cache.remember(KEY, body("11", status={"phase": "Pending"}))  # the watch event before it
    assert not cache.remember(KEY, body("12", status={"phase": "Pending"}))
    assert kept(cache).status == {"phase": "Running"}
    assert cache.remember(KEY, body("13", status={"phase": "Succeeded"}))
    assert kept(cache).status == {"phase": "Succeeded"}


def test_a_new_object_of_the_same_name_replaces_the_old_whatever_its_version() -> None:
    cache = DispatchCache()
    cache.remember(KEY, body("50", status={"phase": "Failed"}))
    assert cache.remember(KEY, body("7", uid="u2"))
    cached = cache.get(KEY)
    assert cached is not None and (cached.uid, cached.status) == ("u2", {})


def test_versions_that_are_not_numbers_are_always_taken() -> None:
    cache = DispatchCache()
    cache.remember(KEY, body("b"))
    assert cache.remember(KEY, body("a"))


def test_the_spec_is_parsed_again_only_with_a_new_generation() -> None:
    cache = DispatchCache()
    cache.remember(KEY, body("1", spec={**SPEC, "suspend": False}))
    first = kept(cache).parsed
    cache.remember(KEY, body("2", spec={**SPEC, "suspend": True}))  # a status write: same generation
    assert kept(cache).parsed is first
    cache.remember(KEY, body("3", generation=2, spec={**SPEC, "suspend": True}))
    again = kept(cache).parsed
    assert again is not first and again.spec is not None and again.spec.suspend


def test_equal_specs_share_one_parsed_spec() -> None:
    cache = DispatchCache()
    for index in range(50):
        cache.remember(("team", f"job-{index}"), body(name=f"job-{index}", uid=f"u{index}"))
    parsed = {id(kept(cache, ("team", f"job-{index}")).parsed) for index in range(50)}
    assert len(parsed) == 1
    assert len(cache.specs) == 1


def test_the_spec_cache_is_bounded_and_drops_its_oldest() -> None:
    specs = SpecCache(size=3)
    parsed = [specs.parse("job", {**SPEC, "suspend": index % 2 == 0, "x": index}) for index in range(5)]
    assert len(specs) == 3
    assert specs.parse("job", {**SPEC, "suspend": True, "x": 4}) is parsed[4]
    assert specs.parse("job", {**SPEC, "suspend": True, "x": 0}) is not parsed[0]  # dropped, parsed anew


def test_a_spec_that_cannot_be_acted_upon_says_why_and_keeps_its_template() -> None:
    cache = DispatchCache()
    cache.remember(KEY, body(spec={**SPEC, "retry": {"maxAttempts": "many"}}))
    parsed = kept(cache).parsed
    assert parsed.spec is None and parsed.invalid and "maxAttempts" in parsed.invalid
    assert parsed.template == SPEC["template"]
    long = "x" * 64
    cache.remember(("team", long), body(name=long))
    parsed = kept(cache, ("team", long)).parsed
    assert parsed.spec is None and parsed.invalid and "metadata.name" in parsed.invalid


def test_the_pool_is_the_one_the_spec_names() -> None:
    cache = DispatchCache()
    cache.remember(KEY, body(spec={**SPEC, "quotaPool": "gpu"}))
    assert kept(cache).pool == "gpu"


def test_statuses_share_their_keys_and_short_strings() -> None:
    cache = DispatchCache()
    reason = "".join(["Quota", "PoolFull"])  # built at run time: not interned by the compiler
    cache.remember(
        ("team", "a"), body(name="a", status={"reason": reason, "attempts": [{"outcome": "Completed"}]})
    )
    cache.remember(("team", "b"), body(name="b", status={"reason": "QuotaPoolFull"}))
    a, b = cache.get(("team", "a")), cache.get(("team", "b"))
    assert a is not None and b is not None
    assert a.status["reason"] is b.status["reason"]


def test_a_deleting_dispatch_is_marked_and_a_forgotten_one_is_gone() -> None:
    cache = DispatchCache()
    cache.remember(KEY, body(deletionTimestamp="2025-03-01T13:00:00Z"))
    assert kept(cache).deleting
    gone = cache.forget(KEY)
    assert gone is not None and gone.uid == "u1"
    assert cache.get(KEY) is None and cache.forget(KEY) is None


def test_phase_counts_count_a_dispatch_without_a_status_as_pending() -> None:
    cache = DispatchCache()
    for name, status in (("a", {}), ("b", {"phase": "Running"}), ("c", {"phase": "Running"})):
        cache.remember(("team", name), body(name=name, uid=name, status=status))
    assert cache.phase_counts() == {"Pending": 1, "Running": 2}


def test_a_dispatchs_pods_are_its_own_indexed_ones_and_those_created_since() -> None:
    index = {
        KEY: [
            PodView("job-1", 1, owner_uid="u1"),
            PodView("job-0", 0, owner_uid="old"),  # a deleted predecessor's pod of the same name
        ]
    }
    pods = Pods(lambda key: index.get(key, ()))
    pods.created("team", PodView("job-2", 2, owner_uid="u1"))
    pods.created("team", PodView("jobs-1", 1, owner_uid="u9"))  # another dispatch's
    pods.created("other", PodView("job-3", 3, owner_uid="u1"))  # another namespace's
    assert sorted(pod.name for pod in pods.of(KEY, "u1")) == ["job-1", "job-2"]
    index[KEY].append(PodView("job-2", 2, phase="Running", owner_uid="u1"))
    pods.seen("team", "job-2")  # its watch event: the index is the truth again
    assert {pod.name: pod.phase for pod in pods.of(KEY, "u1")} == {"job-1": "Pending", "job-2": "Running"}
    pods.deleted("team", "jobs-1")
    pods.deleted("other", "job-3")
    assert len(pods) == 0
