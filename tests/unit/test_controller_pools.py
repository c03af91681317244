"""QuotaPool bookkeeping: members as the gate sees them, who is judged again when, and the pool's status,
written debounced and only when it changed.

The API is a recording stand-in (`RecordingApi`): these tests are about which writes the book makes; the
cluster tests (tests/cluster/test_operator_quota.py) show the real API server taking them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetdispatch.client.kubeapi import MERGE_PATCH, ApiError
from fleetdispatch.controller.cache import DispatchCache, Key
from fleetdispatch.controller.pools import PoolBook, member
from fleetdispatch.core import quota
from fleetdispatch.session.protocol import format_time

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
POOL: Key = ("team", "gpu")
SPEC: dict[str, Any] = {
    "quotaPool": "gpu",
    "template": {"spec": {"containers": [{"name": "session", "image": "busybox", "command": ["true"]}]}},
}


class RecordingApi:
    """Records each pool status patch (method, path, body, content type), or refuses it with `error`."""

    def __init__(self, error: ApiError | None = None) -> None:
        self.requests: list[tuple[str, str, Any, str]] = []
        self.error = error

    async def patch_status(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(("PATCH", path, patch, MERGE_PATCH))
        if self.error is not None:
            raise self.error
        return {}


def dispatch(name: str, created: str = "2025-03-01T11:00:00Z", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "team",
            "name": name,
            "uid": name,
            "generation": 1,
            "creationTimestamp": created,
        },
        "spec": SPEC,
        "status": status,
    }


class Book:
    """A PoolBook over a real cache, with the pools and the enqueued keys as plain values to look at."""

    def __init__(self, pool: quota.Pool | None = None, api: RecordingApi | None = None) -> None:
        self.cache = DispatchCache()
        self.pool: quota.Pool | None = pool or quota.Pool("gpu", max_concurrent=1)
        self.api = api or RecordingApi()
        self.enqueued: list[Key] = []
        self.book = PoolBook(
            self.cache,
            self.api.patch_status,
            lambda key: self.pool,
            self.enqueued.append,
            clock=lambda: NOW,
            write_seconds=0.05,
        )

    def add(self, name: str, **status: Any) -> None:
        before = self.cache.get(("team", name))
        self.cache.remember(("team", name), dispatch(name, **status))
        after = self.cache.get(("team", name))
        assert after is not None
        self.book.moved(("team", name), before.pool if before else None, after.pool)
        self.book.written(("team", name), after)  # as the reconciler does after each cache change


def test_a_member_holds_a_slot_while_its_attempts_pod_exists() -> None:
    book = Book()
    book.add("running", phase="Running", podName="running-1")
    book.add("creating", phase="Pending", podName="creating-1")
    book.add("held", phase="Pending", podName="held-1", reason="QuotaPoolFull")
    book.add("new")
    book.add("backoff", phase="Backoff", requeueAt=format_time(NOW + timedelta(seconds=5)))
    book.add("due", phase="Backoff", requeueAt=format_time(NOW - timedelta(seconds=5)))
    book.add("requeued", phase="Requeued")
    book.add("done", phase="Succeeded")
    members = {m.name: (m.running, m.waiting, m.requeued) for m in book.book.members(POOL, NOW)}
    assert members == {
        "running": (True, False, False),
        "creating": (True, False, False),
        "held": (False, True, False),
        "new": (False, True, False),
        "backoff": (False, False, False),
        "due": (False, True, False),
        "requeued": (False, True, True),
        "done": (False, False, False),
    }


def test_a_suspended_member_does_not_wait_for_a_slot() -> None:
    cache = DispatchCache()
    cache.remember(("team", "s"), {**dispatch("s"), "spec": {**SPEC, "suspend": True}})
    cached = cache.get(("team", "s"))
    assert cached is not None
    assert member("s", cached, NOW) == quota.Member("s", "2025-03-01T11:00:00Z", False, False, False)


def test_membership_follows_the_pool_the_spec_names() -> None:
    book = Book()
    book.add("a")
    book.book.moved(("team", "b"), None, "gpu")  # not cached: not counted as a member
    assert [m.name for m in book.book.members(POOL, NOW)] == ["a"]
    book.book.moved(("team", "a"), "gpu", "cpu")
    assert book.book.member_names(POOL) == {"b"}
    assert book.book.member_names(("team", "cpu")) == {"a"}
    book.book.moved(("team", "a"), "cpu", None)
    assert book.book.member_names(("team", "cpu")) == set()


def test_a_pools_event_wakes_its_members_only_when_what_gates_them_changed() -> None:
    async def scenario() -> list[list[Key]]:
        book = Book()
        book.add("b")
        book.add("a")
        woken = []
        pool = {"spec": {"maxConcurrent": 1}, "status": {"running": 0, "waiting": 2}}
        for event in (
            pool,  # first sight: judged
            {**pool, "status": {"running": 1, "waiting": 1}},  # our own counts: not judged
            {**pool, "spec": {"maxConcurrent": 2}},  # more slots: judged
            {**pool, "spec": {"maxConcurrent": 2}, "status": {"exhaustedUntil": "2025-03-01T13:00:00Z"}},
        ):
            book.book.saw(POOL, event)
            woken.append(list(book.enqueued))
            book.enqueued.clear()
        book.book.saw(POOL, pool, deleted=True)  # deleted: every member is released
        woken.append(list(book.enqueued))
        book.book.close()
        return woken

    assert asyncio.run(scenario()) == [
        [("team", "a"), ("team", "b")],
        [],
        [("team", "a"), ("team", "b")],
        [("team", "a"), ("team", "b")],
        [("team", "a"), ("team", "b")],
    ]


def test_a_freed_slot_wakes_the_oldest_waiting_member() -> None:
    async def scenario() -> list[Key]:
        book = Book()
        book.add("young", created="2025-03-01T11:30:00Z")
        book.add("old", created="2025-03-01T11:00:00Z")
        book.add("gone", phase="Running", podName="gone-1")
        book.cache.forget(("team", "gone"))
        book.book.left(("team", "gone"), "gpu")
        book.book.close()
        return book.enqueued

    assert asyncio.run(scenario()) == [("team", "old")]


def test_the_counts_are_written_once_per_interval_and_not_when_the_pool_shows_them() -> None:
    async def scenario() -> RecordingApi:
        book = Book()
        book.add("a", phase="Running", podName="a-1")
        book.add("b")
        for _ in range(20):
            book.book.schedule_write(POOL)
        await asyncio.sleep(0.15)
        # The pool's watch event shows the counts written: nothing more to write.
        book.book.saw(
            POOL, {"spec": {"maxConcurrent": 1}, "status": {"running": 1, "waiting": 1, "requeued": 0}}
        )
        await asyncio.sleep(0.15)
        return book.api

    api = asyncio.run(scenario())
    assert api.requests == [
        (
            "PATCH",
            "/apis/fleet.dispatch.dev/v1alpha1/namespaces/team/quotapools/gpu/status",
            {"status": {"running": 1, "waiting": 1, "requeued": 0}},
            MERGE_PATCH,
        )
    ]


def test_a_reset_is_written_at_once_and_only_by_the_first_member_that_reports_it() -> None:
    async def scenario() -> RecordingApi:
        book = Book()
        book.add("a", phase="Requeued")
        reset = NOW + timedelta(hours=1)
        await book.book.write(POOL, (reset, "a"))
        await book.book.write(POOL, (reset, "b"))  # the same reset, reported again
        await book.book.write(POOL, (reset - timedelta(minutes=1), "c"))  # an earlier one
        return book.api

    api = asyncio.run(scenario())
    assert [body for _, _, body, _ in api.requests] == [
        {
            "status": {
                "running": 0,
                "waiting": 0,
                "requeued": 1,
                "exhaustedUntil": "2025-03-01T13:00:00Z",
                "exhaustedBy": "a",
            }
        }
    ]


def test_a_reset_the_pool_already_shows_is_not_written_again() -> None:
    async def scenario() -> RecordingApi:
        book = Book(pool=quota.Pool("gpu", exhausted_until=NOW + timedelta(hours=1)))
        book.add("a", phase="Requeued")
        await book.book.write(POOL, (NOW + timedelta(hours=1), "a"))
        return book.api

    assert asyncio.run(scenario()).requests == []


def test_no_write_for_a_pool_that_does_not_exist_and_a_refused_write_is_not_raised() -> None:
    async def scenario() -> tuple[RecordingApi, RecordingApi]:
        missing = Book()
        missing.pool = None
        missing.add("a")
        await missing.book.write(POOL)
        refused = Book(api=RecordingApi(ApiError(500, "InternalError", "etcd is down")))
        refused.add("a")
        await refused.book.write(POOL)
        gone = Book(api=RecordingApi(ApiError(404, "NotFound", "gone")))
        gone.add("a")
        await gone.book.write(POOL)
        return missing.api, refused.api

    missing, refused = asyncio.run(scenario())
    assert missing.requests == []
    assert len(refused.requests) == 1


def test_a_second_decided_but_not_yet_stored_is_held_until_the_cache_shows_it() -> None:
    """The pacing of resumptions: members decided while another's status is being written see the second
    it took; once the cache holds that status the cache alone says what it holds; none is held twice."""
    book = Book(quota.Pool("gpu"))
    book.add("a", phase="Running", podName="a-1")
    book.add("b", phase="Running", podName="b-1")
    a, b = ("team", "a"), ("team", "b")
    ahead, sooner = NOW + timedelta(seconds=30), NOW + timedelta(seconds=20)
    book.book.planned(a, "gpu", "Requeued", ahead)
    assert book.book.resumes(POOL, b) == {ahead: 1}
    assert book.book.resumes(POOL, a) == {}  # its own second is not counted against it
    book.add("a", phase="Running", podName="a-1", reason="Other")  # a change from before the decision
    assert book.book.resumes(POOL, b) == {ahead: 1}  # still being written: the plan holds
    book.add("a", phase="Requeued", podName="a-1", requeueAt=format_time(ahead))  # the write landed
    assert book.book.resumes(POOL, b) == {ahead: 1}
    book.add("a", phase="Requeued", podName="a-1", requeueAt=format_time(sooner))  # changed since
    assert book.book.resumes(POOL, b) == {sooner: 1}  # the plan was done: the cache says
    book.book.planned(b, "gpu", "Requeued", sooner)
    assert book.book.resumes(POOL, ("team", "c")) == {sooner: 2}
    assert [m.resume_at for m in sorted(book.book.members(POOL, NOW), key=lambda m: m.name)] == [sooner] * 2
    book.book.planned(a, "gpu", "Pending", None)  # its next decision starts the attempt
    assert book.book.resumes(POOL, ("team", "c")) == {sooner: 1}

    async def leave() -> None:
        book.book.left(b, "gpu")
        book.book.close()

    asyncio.run(leave())
    assert book.book.resumes(POOL, ("team", "c")) == {}
