"""The kopf shell: watch dispatches and their pods, run the lifecycle, carry out its decisions.

Run it with `fleetdispatch operator`, or with kopf itself: `kopf run --standalone -A -m
fleetdispatch.controller`. Its parts:

- **Level-triggered, one queue.** Watch events only record what the cluster holds and put the dispatch's
  key on a work queue; a pool of workers takes keys off it and reconciles each from the latest state. A key
  is never worked on by two workers at once, and events that arrive while it is worked on coalesce into one
  more pass (the controller-runtime work queue, in a few lines). So the handlers are `kopf.on.event`, not
  kopf's create/update/resume handlers: those keep kopf's bookkeeping in annotations (one more write per
  change) and run per cause, where the lifecycle wants the whole picture at once. kopf's own annotations,
  should a future handler need them, are under our prefix.
- **Pods through a kopf index.** Pods labelled `fleet.dispatch.dev/dispatch` are indexed by their
  dispatch, as the small `PodView` the lifecycle reads. kopf fills every index from a full listing before any
  other handler runs, so after a restart no dispatch is judged against a partial picture of its pods.
- **Read your own writes.** A pod just created, or a status just written, is used at once, before its
  watch event arrives: the response replaces the cached object. Status writes carry the
  `resourceVersion` they were computed from, so a decision made on a stale view is refused (409), the
  object is read again and the decision made anew; nothing is ever written from an outdated picture.
- **Wake-ups are timers on the loop**, one per dispatch, set from the decision's `wake_at`, which the
  lifecycle derives from the status (`requeueAt`, the backstop). A restart recomputes them; nothing lives
  only in memory.
- **Bounded retries.** A reconcile that fails (the API server is down, a 5xx) is retried after 1, 2, 4 ...
  seconds, at most 5 minutes apart, and counted in the metrics; a dispatch whose spec cannot be acted upon is
  reported `Stalled` once by the lifecycle and not retried at all.

Deliberately not here: any judgement (that is `lifecycle`, `classify`), building pods (`podspec`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from fleetdispatch.api import models, names
from fleetdispatch.api.models import FleetDispatchSpec, FleetDispatchStatus, InvalidSpec
from fleetdispatch.api.names import DISPATCH_LABEL
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.client.kubeapi import MERGE_PATCH, SERVICE_ACCOUNT_TOKEN, ApiError, Credentials, KubeApi
from fleetdispatch.controller.metrics import Metrics
from fleetdispatch.controller.metrics import serve as serve_metrics
from fleetdispatch.core import lifecycle, podspec, quota
from fleetdispatch.core.podstatus import PodView, observe
from fleetdispatch.session import protocol
from fleetdispatch.session.protocol import parse_time

logger = logging.getLogger("fleetdispatch.controller")

Key = tuple[str, str]  # (namespace, name)
COMPONENT = "fleet-dispatch"
RETRY_MAX_SECONDS = 300.0
PLURAL = "fleetdispatches"
POOL_WRITE_SECONDS = 1.0
SPEC_CACHE_SIZE = 4096  # distinct specs kept for sharing; a campaign has few


def status_patch(stored: Mapping[str, Any], wanted: FleetDispatchStatus) -> dict[str, Any]:
    """The merge patch from the stored status to `wanted`: changed fields, and None for cleared ones.

    Compared with what is stored (not with a re-parse of it), so defaults such as `failures: 0` are
    written once and fields of a newer operator version that this model does not know are left alone.
    """
    after = wanted.model_dump(by_alias=True, mode="json", exclude_none=True)
    patch = {k: v for k, v in after.items() if stored.get(k) != v}
    known = {info.alias or name for name, info in FleetDispatchStatus.model_fields.items()}
    patch.update({k: None for k in stored if k in known and k not in after})
    return patch


def _rv(value: Any) -> int | None:
    """A resourceVersion as a number when it is one (it is on real clusters and here), else None."""
    return int(value) if isinstance(value, str) and value.isdigit() else None


@dataclass(frozen=True)
class ParsedSpec:
    """A spec as the lifecycle uses it, with the raw template the pod is built from; shared between
    dispatches whose specs are equal (a campaign's members usually are), which is most of the memory a
    dispatch would otherwise cost."""

    spec: FleetDispatchSpec | None
    template: Mapping[str, Any]
    invalid: str | None


@dataclass
class Cached:
    """What the controller keeps of one dispatch: its identity, its parsed spec and its status, not the
    whole object (10,000 dispatches must fit in the operator's memory budget)."""

    uid: str
    generation: int
    resource_version: str | None
    deleting: bool
    parsed: ParsedSpec
    status: dict[str, Any]
    created: str = ""

    @property
    def pool(self) -> str | None:
        return self.parsed.spec.quota_pool if self.parsed.spec is not None else None


def _compact(value: Any) -> Any:
    """`value` with its keys and short strings interned: statuses repeat the same few dozen of them."""
    if isinstance(value, dict):
        return {sys.intern(k): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


@dataclass
class Controller:
    settings: OperatorSettings
    api: KubeApi
    metrics: Metrics
    pods: Callable[[Key], Iterable[PodView]] = lambda key: ()
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    dispatches: dict[Key, Cached] = field(default_factory=dict)
    created: dict[Key, PodView] = field(default_factory=dict)  # pods created, not yet seen by a watch
    _queue: asyncio.Queue[Key] = field(default_factory=asyncio.Queue)
    _dirty: set[Key] = field(default_factory=set)
    _working: set[Key] = field(default_factory=set)
    _wakes: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    _failures: dict[Key, int] = field(default_factory=dict)
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _specs: dict[bytes, ParsedSpec] = field(default_factory=dict)
    pools: Callable[[Key], quota.Pool | None] = lambda key: None
    _members: dict[Key, set[str]] = field(default_factory=dict)  # (namespace, pool) -> dispatch names
    _pool_writes: dict[Key, asyncio.TimerHandle] = field(default_factory=dict)
    _pools_seen: dict[Key, tuple[Any, ...]] = field(default_factory=dict)
    _pool_locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    _exhausted: dict[Key, datetime] = field(default_factory=dict)  # resets this operator has recorded

    # --- what the watches tell us ------------------------------------------------------------------

    def saw_dispatch(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            gone = self.dispatches.pop(key, None)
            self._cancel_wake(key)
            if gone is not None and gone.pool is not None:
                self._members.get((key[0], gone.pool), set()).discard(key[1])
                self._pool_changed((key[0], gone.pool))
            return
        if self.remember(key, body):
            self.enqueue(key)

    def remember(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Keep what the controller needs of `body`; False when it is older than what is kept already
        (the watch event of our own write, whose response was kept first)."""
        meta = body.get("metadata") or {}
        uid, generation = str(meta.get("uid")), int(meta.get("generation") or 0)
        cached = self.dispatches.get(key)
        if cached is not None and cached.uid == uid:
            new_rv, old_rv = _rv(meta.get("resourceVersion")), _rv(cached.resource_version)
            if new_rv is not None and old_rv is not None and new_rv <= old_rv:
                return False
        if cached is None or cached.uid != uid or cached.generation != generation:
            parsed = self._parse(key[1], body.get("spec"))
        else:
            parsed = cached.parsed
        self.dispatches[key] = Cached(
            uid=uid,
            generation=generation,
            resource_version=meta.get("resourceVersion"),
            deleting=bool(meta.get("deletionTimestamp")),
            parsed=parsed,
            status=_compact(dict(body.get("status") or {})),
            created=sys.intern(str(meta.get("creationTimestamp") or "")),
        )
        pool = self.dispatches[key].pool
        if cached is not None and cached.pool != pool and cached.pool is not None:
            self._members.get((key[0], cached.pool), set()).discard(key[1])
        if pool is not None:
            self._members.setdefault((key[0], pool), set()).add(key[1])
        return True

    def saw_pod(self, namespace: str, pod_name: str, dispatch: str) -> None:
        self.created.pop((namespace, pod_name), None)
        self.enqueue((namespace, dispatch))

    def saw_pool(self, namespace: str, name: str, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A QuotaPool changed: its members are judged again only if what gates them changed."""
        key = (namespace, name)
        spec, status = body.get("spec") or {}, body.get("status") or {}
        gates = None if deleted else (spec.get("maxConcurrent"), status.get("exhaustedUntil"))
        counts = (status.get("running"), status.get("waiting"), status.get("requeued"))
        previous = self._pools_seen.get(key)
        self._pools_seen[key] = (gates, counts)
        if deleted:
            self._pools_seen.pop(key, None)
        if previous is None or previous[0] != gates:
            for member in sorted(self._members.get(key, ())):
                self.enqueue((namespace, member))
        if not deleted:
            self._schedule_pool_write(key)

    def _pool_members(self, key: Key, now: datetime) -> list[quota.Member]:
        members = []
        for name in self._members.get(key, ()):
            cached = self.dispatches.get((key[0], name))
            if cached is None:
                continue
            st = cached.status
            phase, pod, until = st.get("phase"), st.get("podName"), st.get("requeueAt")
            running = phase in lifecycle.IN_FLIGHT and pod is not None and st.get("reason") != "QuotaPoolFull"
            due = until is None or (parse_time(until) or now) <= now
            waiting = (
                phase is None or (phase == "Pending" and not running) or (phase in lifecycle.WAITING and due)
            )
            if cached.parsed.spec is not None and cached.parsed.spec.suspend:
                waiting = False
            members.append(quota.Member(name, cached.created, running, waiting, phase == "Requeued"))
        return members

    def _pool_changed(self, key: Key) -> None:
        """A member's phase changed: wake the dispatches a freed slot admits, and recount the pool."""
        pool = self.pools(key)
        if pool is not None:
            for name in quota.next_admitted(pool, self._pool_members(key, self.clock())):
                self.enqueue((key[0], name))
        self._schedule_pool_write(key)

    def _schedule_pool_write(self, key: Key) -> None:
        """Pool status is written at most once a second per pool, so its cost grows with changes, not n²."""
        if key in self._pool_writes:
            return
        loop = asyncio.get_running_loop()

        def write() -> None:
            self._pool_writes.pop(key, None)
            task = loop.create_task(self._write_pool(key, None))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        self._pool_writes[key] = loop.call_later(POOL_WRITE_SECONDS, write)

    async def _write_pool(self, key: Key, exhausted: tuple[datetime, str] | None) -> None:
        pool = self.pools(key)
        if pool is None:
            return
        c = quota.counts(self._pool_members(key, self.clock()))
        status: dict[str, Any] = {"running": c.running, "waiting": c.waiting, "requeued": c.requeued}
        known = max(
            (t for t in (pool.exhausted_until, self._exhausted.get(key)) if t is not None), default=None
        )
        if exhausted is not None and (known is None or exhausted[0] > known):
            # Remembered at once: the members that stop next for the same reset do not write it again.
            self._exhausted[key] = exhausted[0]
            status["exhaustedUntil"] = protocol.format_time(exhausted[0])
            status["exhaustedBy"] = exhausted[1]
        elif exhausted is not None:
            return  # already recorded; the counts follow with the debounced write
        seen = self._pools_seen.get(key)
        if (
            "exhaustedUntil" not in status
            and seen is not None
            and seen[1] == (c.running, c.waiting, c.requeued)
        ):
            return
        path = f"/apis/{names.API_VERSION}/namespaces/{key[0]}/quotapools/{key[1]}/status"
        try:
            await self.api.request("PATCH", path, {"status": status}, content_type=MERGE_PATCH)
        except ApiError as error:
            if error.status != 404:
                logger.warning("cannot update quota pool %s/%s: %s", *key, error)

    def phase_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cached in self.dispatches.values():
            phase = cached.status.get("phase") or "Pending"
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    # --- the work queue ----------------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._working:
            self._queue.put_nowait(key)

    def start(self) -> None:
        for number in range(self.settings.workers):
            self._workers.append(asyncio.create_task(self._work(), name=f"fleetdispatch-worker-{number}"))

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for handle in [*self._wakes.values(), *self._pool_writes.values()]:
            handle.cancel()
        await self.api.close()

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._dirty.discard(key)
            self._working.add(key)
            started = time.perf_counter()
            try:
                await self.reconcile(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(2.0 ** (failures - 1), RETRY_MAX_SECONDS)
                self.metrics.reconcile_errors.inc()
                logger.warning("reconciling %s/%s failed (retry in %g s): %s", *key, delay, error)
                self._wake_in(key, delay)
            finally:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
                self._working.discard(key)
                if key in self._dirty:
                    self._queue.put_nowait(key)

    def _cancel_wake(self, key: Key) -> None:
        handle = self._wakes.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _wake_in(self, key: Key, seconds: float) -> None:
        self._cancel_wake(key)
        loop = asyncio.get_running_loop()
        self._wakes[key] = loop.call_later(max(seconds, 0.0), self._woken, key)

    def _woken(self, key: Key) -> None:
        self._wakes.pop(key, None)
        self.enqueue(key)

    # --- one reconcile -----------------------------------------------------------------------------

    def _parse(self, name: str, raw: Any) -> ParsedSpec:
        try:
            models.check_name(name)
        except InvalidSpec as error:
            return ParsedSpec(None, {}, str(error))
        digest = hashlib.blake2b(json.dumps(raw, sort_keys=True).encode(), digest_size=16).digest()
        parsed = self._specs.get(digest)
        if parsed is None:
            template = (raw or {}).get("template") or {} if isinstance(raw, Mapping) else {}
            try:
                spec = models.parse_spec(raw)
                podspec.check_template(spec)
            except InvalidSpec as error:
                parsed = ParsedSpec(None, template, str(error))
            else:
                parsed = ParsedSpec(spec, template, None)
            if len(self._specs) >= SPEC_CACHE_SIZE:
                self._specs.pop(next(iter(self._specs)))  # the oldest; a dispatch keeps its own reference
            self._specs[digest] = parsed
        return parsed

    def _pods(self, key: Key, uid: str) -> list[PodView]:
        """The dispatch's pods: labelled with its name and owned by this very object (its uid)."""
        seen = {pod.name: pod for pod in self.pods(key) if pod.owner_uid == uid}
        for (namespace, name), pod in self.created.items():
            if namespace == key[0] and name not in seen and name.rpartition("-")[0] == key[1]:
                seen[name] = pod
        return list(seen.values())

    async def reconcile(self, key: Key) -> None:
        cached = self.dispatches.get(key)
        if cached is None or cached.deleting:
            return
        pool = self.pools((key[0], cached.pool)) if cached.pool is not None else None
        if cached.pool is None or pool is None or pool.max_concurrent is None:
            await self._reconcile(key, cached)
            return
        # One member of a bounded pool at a time: admission reads the members' statuses, and the slot a
        # member takes must be in its status (the write's response) before the next member is judged.
        lock = self._pool_locks.setdefault((key[0], cached.pool), asyncio.Lock())
        async with lock:
            cached = self.dispatches.get(key)
            if cached is not None and not cached.deleting:
                await self._reconcile(key, cached)

    async def _reconcile(self, key: Key, cached: Cached) -> None:
        try:
            status = FleetDispatchStatus.model_validate(cached.status)
        except ValueError:
            logger.warning("%s/%s: unreadable status, starting it afresh", *key)
            status = FleetDispatchStatus()
        now = self.clock()
        pool_key = (key[0], cached.pool) if cached.pool is not None else None
        gate = None
        if pool_key is not None:
            pool = self.pools(pool_key)
            gate = quota.gate(pool, pool_key[1], self._pool_members(pool_key, now), key[1], now)
        dispatch = lifecycle.Dispatch(
            name=key[1],
            namespace=key[0],
            uid=cached.uid,
            generation=cached.generation,
            spec=cached.parsed.spec,
            status=status,
            invalid=cached.parsed.invalid,
            gate=gate,
        )
        limits = lifecycle.Limits(
            self.settings.history_limit,
            self.settings.backstop_margin_seconds,
            self.settings.max_quota_wait_seconds,
        )
        pods = self._pods(key, cached.uid)
        decision = lifecycle.reconcile(dispatch, pods, now, limits)
        if decision.create is not None:
            refused = await self._create_pod(dispatch, cached.parsed.template, decision.create, now)
            if refused is not None:
                dispatch = lifecycle.Dispatch(**{**dispatch.__dict__, "spec": None, "invalid": refused})
                decision = lifecycle.reconcile(dispatch, pods, now, limits)
        for name in decision.delete:
            await self._delete_pod(key[0], name)
        patch = status_patch(cached.status, decision.status)
        if patch:
            path = f"/apis/{names.API_VERSION}/namespaces/{key[0]}/{PLURAL}/{key[1]}/status"
            request = {"metadata": {"resourceVersion": cached.resource_version}, "status": patch}
            try:
                response = await self.api.request("PATCH", path, request, content_type=MERGE_PATCH)
            except ApiError as error:
                if error.status == 404:
                    return
                if error.status == 409:  # decided on a stale view: read it again, decide again
                    fresh = await self.api.request(
                        "GET", f"/apis/{names.API_VERSION}/namespaces/{key[0]}/{PLURAL}/{key[1]}"
                    )
                    self.remember(key, fresh)
                    self.enqueue(key)
                    return
                raise
            if response:
                self.remember(key, response)
        await self._record(dispatch, decision, status)
        if pool_key is not None:
            if decision.pool_exhausted_until is not None:
                await self._write_pool(pool_key, (decision.pool_exhausted_until, key[1]))
            if decision.status.phase != status.phase or decision.status.pod_name != status.pod_name:
                self._pool_changed(pool_key)
        if decision.wake_at is not None:
            self._wake_in(key, (decision.wake_at - self.clock()).total_seconds() + 0.05)
        else:
            self._cancel_wake(key)

    async def _create_pod(
        self,
        dispatch: lifecycle.Dispatch,
        template: Mapping[str, Any],
        request: podspec.AttemptRequest,
        now: datetime,
    ) -> str | None:
        """Create the attempt's pod; the API server's reason when it refuses the pod for good, else None."""
        assert dispatch.spec is not None
        ref = podspec.DispatchRef(dispatch.name, dispatch.namespace, dispatch.uid)
        pod = podspec.build_pod(ref, dispatch.spec, template, request, now.timestamp(), self.settings)
        name = pod["metadata"]["name"]
        path = f"/api/v1/namespaces/{dispatch.namespace}/pods"
        try:
            created = await self.api.request("POST", path, pod)
            self.metrics.attempts.inc()
        except ApiError as error:
            if error.status == 409:  # created before a restart, or a repeated decision: the same pod
                created = await self.api.request("GET", f"{path}/{name}")
                if observe(created).owner_uid != dispatch.uid:
                    # A dispatch of the same name was deleted and created again: wait for the garbage
                    # collector to remove its predecessor's pod (the retry backs off).
                    raise RuntimeError(
                        f"pod {name} still belongs to a deleted dispatch of the same name"
                    ) from None
            elif error.status in (400, 422):
                return f"the API server refused the pod for attempt {request.attempt}: {error.message}"
            else:
                raise
        self.created[(dispatch.namespace, name)] = observe(created)
        return None

    async def _delete_pod(self, namespace: str, name: str) -> None:
        try:
            await self.api.request(
                "DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", {"propagationPolicy": "Background"}
            )
        except ApiError as error:
            if error.status != 404:
                raise
        self.created.pop((namespace, name), None)

    async def _record(
        self, dispatch: lifecycle.Dispatch, decision: lifecycle.Decision, before: FleetDispatchStatus
    ) -> None:
        """Metrics and Events for what the decision did; an Event that cannot be posted is only logged."""
        for outcome in decision.outcomes:
            self.metrics.attempts_ended.labels(outcome.reason, outcome.failure_class or "").inc()
            if outcome.reason in ("DeadlineExceeded", "IdleTimeout", "SupervisorLost"):
                self.metrics.stops.labels(outcome.reason).inc()
            if outcome.verdict == "Requeue" and decision.status.phase == "Requeued":
                self.metrics.requeues.inc()
            initial, final = before.deadline, decision.status.deadline
            if initial is not None and final is not None and final > initial:
                self.metrics.deadline_extensions.inc()
                self.metrics.deadline_extension_seconds.inc((final - initial).total_seconds())
        for event in decision.events:
            await self._post_event(dispatch, event)

    async def _post_event(self, dispatch: lifecycle.Dispatch, event: lifecycle.Event) -> None:
        now = protocol.format_time(self.clock())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{dispatch.name}.", "namespace": dispatch.namespace},
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": "FleetDispatch",
                "name": dispatch.name,
                "namespace": dispatch.namespace,
                "uid": dispatch.uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": socket.gethostname(),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.api.request("POST", f"/api/v1/namespaces/{dispatch.namespace}/events", body)
        except (TimeoutError, ApiError, OSError) as error:
            logger.warning("cannot post an Event for %s/%s: %s", dispatch.namespace, dispatch.name, error)


# --- kopf registration: module level, so `kopf run -m fleetdispatch.controller` works too -------------


@dataclass
class Runtime:
    """The operator's shared state, in kopf's memo (every object's memo is a shallow copy of it)."""

    options: OperatorSettings
    metrics: Metrics
    credentials: Credentials | None = None
    controller: Controller | None = None
    metrics_runner: Any = None

    def controller_for(self, indices: Mapping[str, Any]) -> Controller:
        """The controller, created on the first event: only then are kopf's credentials and index known."""
        if self.controller is None:
            if self.credentials is None:
                raise kopf.TemporaryError("not logged in yet", delay=1)
            kube = KubeApi(
                self.credentials,
                user_agent=f"{COMPONENT}/{names.VERSION}",
                on_response=lambda verb, code: self.metrics.api_requests.labels(verb, str(code)).inc(),
            )

            pods_index, pools_index = indices["fleet_pods"], indices["fleet_pools"]

            def pods(key: Key) -> Iterable[PodView]:
                return pods_index.get(key, ())  # type: ignore[no-any-return]

            def pools(key: Key) -> quota.Pool | None:
                return next(iter(pools_index.get(key, ())), None)

            self.controller = Controller(self.options, kube, self.metrics, pods=pods, pools=pools)
            self.controller.start()
        return self.controller


class _NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """No diff base: the operator has no change-detecting handlers (only event and index handlers), yet kopf
    builds one for every watch event, deep-copying the whole object twice; skipping it saves about a
    quarter of the operator's CPU per dispatch (bench/operator_dispatch.py)."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return None


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    options = getattr(memo, "options", None) or OperatorSettings.from_env()
    settings.peering.standalone = True
    # The chart grants no cluster-wide reads of CRDs or namespaces (least privilege): declare that restricted
    # mode, so kopf does not retry the forbidden list of CRDs for a minute, logging errors, at every start.
    # The CRDs are found by the initial discovery; the namespaces are the watched ones, by exact name.
    settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = _NoDiffBase(prefix=names.GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{names.GROUP}/kopf-finalizer"
    settings.persistence.consistency_timeout = 30
    settings.watching.server_timeout = options.watch_timeout_seconds
    settings.watching.client_timeout = options.watch_timeout_seconds + 30
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = COMPONENT
    runtime = Runtime(options, Metrics())
    runtime.metrics.count_phases = lambda: runtime.controller.phase_counts() if runtime.controller else {}
    if options.metrics_port:
        runtime.metrics_runner = await serve_metrics(runtime.metrics, options.metrics_port)
    memo.runtime = runtime


@kopf.on.login()
def _login(memo: Any, **kwargs: Any) -> Any:
    server = getattr(memo, "server", None)  # `fleetdispatch dev`: its own API server, no credentials
    info: kopf.ConnectionInfo | None = kopf.ConnectionInfo(server=server) if server else None
    token_file = None
    if info is None:
        info = kopf.login_with_service_account(**kwargs)
        token_file = SERVICE_ACCOUNT_TOKEN if info is not None else None
    if info is None:
        info = kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        memo.runtime.credentials = Credentials.from_connection(info, token_file)
    return info


@kopf.index("pods", labels={DISPATCH_LABEL: kopf.PRESENT})
async def fleet_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> dict[Key, PodView]:
    return {(str(namespace), labels[DISPATCH_LABEL]): observe(body)}


@kopf.on.event("pods", labels={DISPATCH_LABEL: kopf.PRESENT})
async def _pod_event(
    namespace: str | None, name: str, labels: Mapping[str, str], memo: Any, **kwargs: Any
) -> None:
    memo.runtime.controller_for(kwargs).saw_pod(str(namespace), name, labels[DISPATCH_LABEL])


@kopf.on.event(names.GROUP, names.VERSION, PLURAL)
async def _dispatch_event(event: kopf.RawEvent, memo: Any, **kwargs: Any) -> None:
    controller = memo.runtime.controller_for(kwargs)
    controller.saw_dispatch(event["object"], deleted=event.get("type") == "DELETED")


@kopf.index(names.GROUP, names.VERSION, "quotapools")
async def fleet_pools(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, quota.Pool]:
    spec, status = body.get("spec") or {}, body.get("status") or {}
    maximum = spec.get("maxConcurrent")
    pool = quota.Pool(
        name=name,
        max_concurrent=maximum if isinstance(maximum, int) else None,
        exhausted_until=parse_time(status.get("exhaustedUntil")),
    )
    return {(str(namespace), name): pool}


@kopf.on.event(names.GROUP, names.VERSION, "quotapools")
async def _pool_event(event: kopf.RawEvent, memo: Any, **kwargs: Any) -> None:
    body = event["object"]
    meta = body.get("metadata") or {}
    controller = memo.runtime.controller_for(kwargs)
    controller.saw_pool(
        str(meta.get("namespace")), str(meta.get("name")), body, event.get("type") == "DELETED"
    )


@kopf.on.cleanup()
async def _cleanup(memo: Any, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    if runtime.controller is not None:
        await runtime.controller.stop()
    if runtime.metrics_runner is not None:
        await runtime.metrics_runner.cleanup()


async def run(
    options: OperatorSettings,
    *,
    namespaces: Sequence[str] = (),
    server: str | None = None,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator in this event loop until `stop_flag` is set (or a signal, when it is None).

    `server` skips the login (kubeconfig or in-cluster service account) and talks to that URL without
    credentials, as `fleetdispatch dev` does with its own API server.
    """
    liveness = f"http://0.0.0.0:{options.health_port}/healthz" if options.health_port else None
    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        standalone=True,
        liveness_endpoint=liveness,
        memo=kopf.Memo(options=options, server=server),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
