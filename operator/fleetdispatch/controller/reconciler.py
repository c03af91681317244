"""The reconcile step: what the watches told us, fed to `core.lifecycle.reconcile`, and its decision done.

- **Level-triggered.** Watch events (`saw_dispatch`, `saw_pod`, `saw_pool`) only record what the cluster
  holds and put the dispatch's key on the work queue; the workers reconcile each key from the latest state.
- **One step** (`reconcile`): the cached dispatch, its pods and its pool's gate go into
  `lifecycle.reconcile`; its decision is carried out in order: write the status, delete pods, create the
  attempt's pod, record metrics and Events, update the pool, set the wake-up.
- **The status before the pod.** A new attempt's pod is created only after the status naming it (with the
  previous attempt's end, counters and record) is stored, by a write that carries the resourceVersion the
  decision was made on, so a decision on a stale status creates nothing (409: read again, decide again).
  A kill or a lost response in between leaves a stored status whose attempt's pod is missing: the next
  reconcile creates exactly that pod (its name is deterministic; AlreadyExists means it exists: adopt it).
  So no attempt goes unrecorded, none runs after a terminal phase, and the limits hold whatever is lost.
- **Read your own writes.** A pod just created, or a status just written, is used at once (the response
  replaces the cached object). Status writes carry the `resourceVersion` they were computed from, so a
  decision made on a stale view is refused (409): the object is read again and the decision made anew.
- **Wake-ups** come from the decision's `wake_at`, which the lifecycle derives from the status (`requeueAt`,
  the backstop), so a restart recomputes them.
- **Failures** (the API server is down, a 5xx) raise out of the step: the workers retry the key with its
  backoff and count it. A spec that cannot be acted upon is no failure: the lifecycle reports it `Stalled`.
- **A refused pod** (403: a ResourceQuota, Pod Security, a webhook) is decided again with the refusal (the
  status says `FailedCreate`, an Event the API server's message), then raises `CreateRefused`, so the create
  is retried with the key's growing backoff until it is admitted. A pod refused as invalid (400, 422: the
  template is immutable, so it would be refused for ever) fails the dispatch (`InvalidSpec`).
- **The workspace claim** (`spec.workspace`) is created before the pod that mounts it, once per dispatch
  (AlreadyExists: adopted when it is the dispatch's own, `core.workspace.foreign`); a claim of that name
  that is someone else's is refused as a pod would be (`FailedCreate`, an Event, the key's backoff).

- **Deleting the dispatch** (`decision.delete_dispatch`, its ttlSecondsAfterFinished passed) comes last,
  with the resourceVersion the decision was made on as a precondition and background propagation (its pods
  and owned claim go through the garbage collector): a dispatch changed meanwhile (a retry) is read again
  and decided again (409), one already gone is done (404).

Deliberately not here: any judgement (that is `core`), queueing and retries (`workqueue`), pool
bookkeeping (`pools`), what is cached (`cache`), kopf (`handlers`).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from fleetdispatch.api import names
from fleetdispatch.api.models import FleetDispatchStatus, Workspace
from fleetdispatch.api.settings import OperatorSettings
from fleetdispatch.client.kubeapi import MERGE_PATCH, ApiError, KubeApi
from fleetdispatch.controller.cache import DispatchCache, Key, Pods
from fleetdispatch.controller.leases import LeaseWatch
from fleetdispatch.controller.metrics import Metrics
from fleetdispatch.controller.pools import PoolBook
from fleetdispatch.controller.workqueue import Progress, Workers, WorkQueue
from fleetdispatch.core import lifecycle, live, podspec, quota, workspace
from fleetdispatch.core.podstatus import PodView, observe
from fleetdispatch.session.protocol import format_time

logger = logging.getLogger("fleetdispatch.controller")

COMPONENT = "fleet-dispatch"  # the Events' source, and the operator's user agent
WAKE_MARGIN_SECONDS = 0.05  # wake just after `wake_at`, so that the lifecycle finds it passed
CREATE_REFUSED_MAX = 1024  # the status message and the Event hold this much of the API server's message
# A namespace without the heartbeat's ServiceAccount gets pods without the heartbeat; it is looked for again
# after this long (the account may be created meanwhile).
NO_HEARTBEAT_SECONDS = 60.0


class CreateRefused(Exception):
    """The API server refused an attempt's pod with a cause that may go away (403: a ResourceQuota, Pod
    Security, an admission webhook)."""


def status_patch(stored: Mapping[str, Any], wanted: BaseModel) -> dict[str, Any]:
    """The merge patch from the stored status to `wanted`: changed fields, and None for cleared ones.

    Compared with what is stored (not with a re-parse of it), so defaults such as `failures: 0` are
    written once and fields of a newer operator version that this model does not know are left alone.
    """
    after = wanted.model_dump(by_alias=True, mode="json", exclude_none=True)
    patch = {k: v for k, v in after.items() if stored.get(k) != v}
    known = {info.alias or name for name, info in type(wanted).model_fields.items()}
    patch.update({k: None for k in stored if k in known and k not in after})
    return patch


def _attempt_of(dispatch: str, pod_name: str) -> int:
    """The attempt a pod of `dispatch` belongs to, by its name (`<dispatch>-<attempt>`); 0 if not one."""
    suffix = pod_name.removeprefix(f"{dispatch}-")
    return int(suffix) if suffix.isdigit() and suffix != pod_name else 0


def event_body(
    dispatch: lifecycle.Dispatch, event: lifecycle.Event, now: datetime, instance: str
) -> dict[str, Any]:
    """The core/v1 Event about `dispatch` (its message cut to the API server's 1024 characters)."""
    time = format_time(now)
    return {
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
        "reportingInstance": instance,
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    }


class Reconciler:
    """The controller's state and its reconcile step. `pods` and `pools` are kopf's indices (by key)."""

    def __init__(
        self,
        settings: OperatorSettings,
        api: KubeApi,
        metrics: Metrics,
        *,
        pods: Callable[[Key], Iterable[PodView]] = lambda key: (),
        pools: Callable[[Key], quota.Pool | None] = lambda key: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease_namespaces: Sequence[str] | None = None,
    ) -> None:
        """`lease_namespaces`: where to watch the supervisors' Leases (empty: all namespaces), or None for
        no live status (the heartbeat is off)."""
        self.settings, self.api, self.metrics, self.clock = settings, api, metrics, clock
        self.queue: WorkQueue[Key] = WorkQueue()
        self.cache = DispatchCache()
        self.pods = Pods(pods)
        self.pools = PoolBook(self.cache, self._patch_pool_status, pools, self.queue.add, clock=clock)
        self.limits = lifecycle.Limits(
            settings.history_limit, settings.backstop_margin_seconds, settings.max_quota_wait_seconds
        )
        self.workers = Workers(
            self.queue,
            self.reconcile,
            settings.workers,
            failed=self._failed,
            finished=self.metrics.reconcile_seconds.observe,
            name="fleetdispatch-worker",
        )
        self._instance = socket.gethostname()
        self.leases = (
            None
            if lease_namespaces is None or not settings.heartbeat_service_account
            else LeaseWatch(
                api,
                lease_namespaces,
                self.saw_lease,
                timeout_seconds=settings.watch_timeout_seconds,
                clock=clock,
            )
        )
        # When live figures were last written, per dispatch (in memory: a restart writes at once).
        self._live_written: dict[Key, datetime] = {}
        # The supervisor's report of each dispatch's last pod that went away (pod name, message), from the
        # pod's DELETED event: the final status of a suspended attempt's pod can vanish before a reconcile.
        self._gone_reports: dict[Key, tuple[str, str]] = {}
        # Namespaces found without the heartbeat's ServiceAccount, until when (monotonic).
        self._no_heartbeat: dict[str, float] = {}
        self._settings_without_heartbeat = settings.model_copy(update={"heartbeat_service_account": None})
        # Dispatches whose workspace claim is known to exist and be theirs (so later attempts skip the POST).
        self._workspaces: dict[Key, str] = {}  # dispatch -> the uid whose claim is known

    # --- running -------------------------------------------------------------------------------------

    def start(self) -> None:
        self.workers.start()
        if self.leases is not None:
            self.leases.start()

    async def stop(self) -> None:
        if self.leases is not None:
            await self.leases.stop()
        await self.workers.stop()
        self.pools.close()
        await self.api.close()

    def progress(self) -> Progress:
        return self.workers.progress()

    async def _patch_pool_status(self, path: str, patch: dict[str, Any]) -> Any:
        return await self.api.request("PATCH", path, patch, content_type=MERGE_PATCH)

    def _failed(self, key: Key, error: BaseException, retry_in: float) -> None:
        self.metrics.reconcile_errors.inc()
        logger.warning("reconciling %s/%s failed (retry in %g s): %s", *key, retry_in, error)

    # --- what the watches tell us --------------------------------------------------------------------

    def saw_dispatch(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted:
            gone = self.cache.forget(key)
            self.queue.discard(key)
            self._live_written.pop(key, None)
            self._gone_reports.pop(key, None)
            self._workspaces.pop(key, None)
            if gone is not None and gone.pool is not None:
                self.pools.left(key, gone.pool)
            return
        if self.remember(key, body):
            self.queue.add(key)

    def saw_pod(self, namespace: str, pod_name: str, dispatch: str, gone_report: str | None = None) -> None:
        """A pod event; `gone_report` is the supervisor's termination message of a pod that was deleted."""
        self.pods.seen(namespace, pod_name)
        kept = self._gone_reports.get((namespace, dispatch))
        # The report of an earlier attempt's pod (deleted as clean-up) never replaces a later one's.
        if gone_report and (
            kept is None or _attempt_of(dispatch, kept[0]) <= _attempt_of(dispatch, pod_name)
        ):
            self._gone_reports[(namespace, dispatch)] = (pod_name, gone_report)
        self.queue.add((namespace, dispatch))

    def saw_lease(self, namespace: str, dispatch: str) -> None:
        """A supervisor's Lease (labelled with `dispatch`) changed or went away."""
        self.queue.add((namespace, dispatch))

    def saw_pool(self, namespace: str, name: str, body: Mapping[str, Any], deleted: bool = False) -> None:
        self.pools.saw((namespace, name), body, deleted)

    def remember(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Cache `body` (False when it is older than what is cached) and follow its pool membership."""
        before = self.cache.get(key)
        if not self.cache.remember(key, body):
            return False
        after = self.cache.get(key)
        self.pools.moved(
            key, before.pool if before is not None else None, after.pool if after is not None else None
        )
        self.pools.written(key, after)
        return True

    # --- one reconcile -------------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        cached = self.cache.get(key)
        if cached is None or cached.deleting:
            return
        pool = self.pools.lookup((key[0], cached.pool)) if cached.pool is not None else None
        if cached.pool is None or pool is None or pool.max_concurrent is None:
            await self._reconcile(key)
            return
        async with self.pools.lock((key[0], cached.pool)):
            await self._reconcile(key)

    async def _reconcile(self, key: Key) -> None:
        cached = self.cache.get(key)
        if cached is None or cached.deleting:
            return
        try:
            status = FleetDispatchStatus.model_validate(cached.status)
        except ValueError:
            logger.warning("%s/%s: unreadable status, starting it afresh", *key)
            status = FleetDispatchStatus()
        now = self.clock()
        pool_key = (key[0], cached.pool) if cached.pool is not None else None
        heartbeat = await self._heartbeat(key, status, now)
        gate = None
        if pool_key is not None:
            pool = self.pools.lookup(pool_key)
            # Only admission to a bounded pool reads the other members; pacing reads the seconds held.
            members = self.pools.members(pool_key, now) if pool is not None and pool.max_concurrent else []
            resumes = self.pools.resumes(pool_key, key)
            gate = quota.gate(pool, pool_key[1], members, key[1], now, resumes=resumes)
        dispatch = lifecycle.Dispatch(
            name=key[1],
            namespace=key[0],
            uid=cached.uid,
            generation=cached.generation,
            spec=cached.parsed.spec,
            status=status,
            invalid=cached.parsed.invalid,
            gate=gate,
            gone_pod_report=self._gone_reports.get(key),
            retry_request=cached.retry_request,
            heartbeat=heartbeat,
        )
        pods = self.pods.of(key, cached.uid)
        decision = lifecycle.reconcile(dispatch, pods, now, self.limits)
        if pool_key is not None:
            # From the gate to here nothing awaits: the next member decided sees the second this one took.
            self.pools.planned(key, pool_key[1], decision.status.phase, decision.status.requeue_at)
        # The status first, then the pods: an attempt's pod is created only once the status that names it
        # (and records the previous attempt's end) is stored, and only from a decision made on the stored
        # status: the write carries the resourceVersion decided on, even when it changes nothing.
        patch = status_patch(cached.status, decision.status)
        if (patch or decision.create is not None) and not await self._write_status(
            key, cached.resource_version, patch
        ):
            return
        if heartbeat is not None and any(field in patch for field in live.LIVE_FIELDS):
            self._live_written[key] = now
        if decision.create is None:
            for name in decision.delete:
                await self._delete_pod(key[0], name)
        refusal: CreateRefused | None = None
        if decision.create is not None:
            again: lifecycle.Decision | None = decision
            try:
                invalid = await self._create_pod(dispatch, cached.parsed.template, decision.create, now)
            except CreateRefused as error:
                # Decided again knowing it: the status and an Event say why; the key backs off (raised below).
                refusal = error
                again = await self._decide_again(
                    key, dispatch, decision, pods, now, create_refused=str(error)
                )
            else:
                if invalid is not None:
                    again = await self._decide_again(
                        key, dispatch, decision, pods, now, spec=None, invalid=invalid
                    )
            # The attempt's pod first: the pods deleted with it are earlier attempts' that have ended (no
            # attempt starts while a pod of the dispatch is live), whose clean-up can wait a request.
            for name in decision.delete:
                await self._delete_pod(key[0], name)
            if again is None:
                if refusal is not None:
                    raise refusal
                return
            decision = again
        await self._record(dispatch, decision, status)
        if pool_key is not None:
            if decision.pool_exhausted_until is not None:
                await self.pools.write(pool_key, (decision.pool_exhausted_until, key[1]))
            if decision.status.phase != status.phase or decision.status.pod_name != status.pod_name:
                self.pools.changed(pool_key)
        if decision.wake_at is not None:
            delay = (decision.wake_at - self.clock()).total_seconds() + WAKE_MARGIN_SECONDS
            self.queue.add_after(key, delay)
        else:
            self.queue.cancel_wake(key)
        if decision.delete_dispatch:
            await self._delete_dispatch(key)
        if refusal is not None:
            raise refusal  # the workers retry the create with the key's backoff, growing while it is refused

    async def _heartbeat(self, key: Key, status: FleetDispatchStatus, now: datetime) -> live.Live | None:
        """The running attempt's heartbeat as the lifecycle takes it; None without a view of its Lease."""
        if self.leases is None or status.phase != "Running" or status.pod_name is None:
            return None
        since = self.leases.visible_since(key[0])
        if since is None:
            return None  # not listed yet: no judgement on a partial view
        heartbeat = live.Live(
            lease=self.leases.get(key[0], status.pod_name),
            visible_since=since,
            period_seconds=self.settings.heartbeat_seconds,
            write_interval_seconds=self.settings.live_status_interval_seconds,
            last_write=self._live_written.get(key),
            tolerance_seconds=self.settings.clock_tolerance_seconds,
        )
        if heartbeat.lease is not None and now >= live.lost_at(heartbeat, heartbeat.lease):
            # About to end the attempt on what the watch said: ask the API server first (a watch that
            # stalled silently must not end healthy sessions).
            fresh = await self.leases.read(key[0], status.pod_name)
            heartbeat = dataclasses.replace(heartbeat, lease=fresh)
        return heartbeat

    async def _decide_again(
        self,
        key: Key,
        dispatch: lifecycle.Dispatch,
        decision: lifecycle.Decision,
        pods: list[PodView],
        now: datetime,
        **changes: Any,
    ) -> lifecycle.Decision | None:
        """The attempt's pod was refused: decide again, knowing it (`changes` to the dispatch), from the
        status just stored (which names that attempt); None when that write is void."""
        stored = self.cache.get(key)
        if stored is None:
            return None
        status = FleetDispatchStatus.model_validate(stored.status)
        again = lifecycle.reconcile(
            dataclasses.replace(dispatch, status=status, **changes), pods, now, self.limits
        )
        if stored.pool is not None:
            self.pools.planned(key, stored.pool, again.status.phase, again.status.requeue_at)
        patch = status_patch(stored.status, again.status)
        if patch and not await self._write_status(key, stored.resource_version, patch):
            return None
        for name in again.delete:
            await self._delete_pod(key[0], name)
        # The first decision's attempt ends are stored and told; its `Created` Event would be untrue.
        events = tuple(e for e in decision.events if e.reason != "Created") + again.events
        return dataclasses.replace(
            again,
            create=None,
            events=events,
            outcomes=decision.outcomes + again.outcomes,
            pool_exhausted_until=decision.pool_exhausted_until or again.pool_exhausted_until,
        )

    async def _write_status(self, key: Key, resource_version: str | None, patch: dict[str, Any]) -> bool:
        """Write the status patch, computed from `resource_version`; False when the decision is void: the
        dispatch is gone, or it changed since (then it is read again and reconciled again)."""
        path = names.FLEET_DISPATCHES.path(key[0], key[1], "status")
        request = {"metadata": {"resourceVersion": resource_version}, "status": patch}
        try:
            response = await self.api.request("PATCH", path, request, content_type=MERGE_PATCH)
        except ApiError as error:
            if error.status == 404:
                return False
            if error.status == 409:  # decided on a stale view: read it again, decide again
                fresh = await self.api.request("GET", names.FLEET_DISPATCHES.path(key[0], key[1]))
                self.remember(key, fresh)
                self.queue.add(key)
                return False
            raise
        if response:
            self.remember(key, response)
        return True

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
        if dispatch.spec.workspace is not None:
            refused = await self._ensure_workspace(ref, dispatch.spec.workspace, request.attempt)
            if refused is not None:
                return refused
        heartbeat = self._no_heartbeat.get(dispatch.namespace, 0.0) <= time.monotonic()
        settings = self.settings if heartbeat else self._settings_without_heartbeat
        pod = podspec.build_pod(ref, dispatch.spec, template, request, now.timestamp(), settings)
        name = pod["metadata"]["name"]
        try:
            created = await self.api.request("POST", names.PODS.path(dispatch.namespace), pod)
            self.metrics.attempts.inc()
        except ApiError as error:
            if error.status == 409:  # created before a restart, or a repeated decision: the same pod
                created = await self.api.request("GET", names.PODS.path(dispatch.namespace, name))
                if observe(created).owner_uid != dispatch.uid:
                    # A dispatch of the same name was deleted and created again: wait for the garbage
                    # collector to remove its predecessor's pod (the retry backs off).
                    raise RuntimeError(
                        f"pod {name} still belongs to a deleted dispatch of the same name"
                    ) from None
            elif error.status == 403 and heartbeat and self._heartbeat_account_missing(error):
                # The namespace has no heartbeat ServiceAccount: its pods run without the heartbeat, as
                # they would with it off.
                logger.info(
                    "%s has no ServiceAccount %s: no heartbeat there",
                    dispatch.namespace,
                    self.settings.heartbeat_service_account,
                )
                self._no_heartbeat[dispatch.namespace] = time.monotonic() + NO_HEARTBEAT_SECONDS
                return await self._create_pod(dispatch, template, request, now)
            elif error.status == 403:
                # A ResourceQuota, Pod Security, a webhook: the cause may go away, so the create is retried.
                message = f"the API server refused the pod for attempt {request.attempt}: {error.message}"
                raise CreateRefused(message[:CREATE_REFUSED_MAX]) from None
            elif error.status in (400, 422):
                return f"the API server refused the pod for attempt {request.attempt}: {error.message}"
            else:
                raise
        self.pods.created(dispatch.namespace, observe(created))
        return None

    async def _ensure_workspace(self, ref: podspec.DispatchRef, spec: Workspace, attempt: int) -> str | None:
        """The dispatch's workspace claim exists and is its own before its pod is created (created now, or
        adopted: AlreadyExists after a restart or a lost response). A claim of that name that is not its
        own, or being deleted, is refused as a pod would be (`CreateRefused`: the status and an Event say
        why, the key backs off); the API server's reason when it refuses the claim for good, else None."""
        key = (ref.namespace, ref.name)
        if self._workspaces.get(key) == ref.uid:
            return None
        claim = workspace.build_claim(ref, spec)
        path = names.PERSISTENT_VOLUME_CLAIMS.path(ref.namespace)
        what = f"the workspace claim {claim['metadata']['name']} for attempt {attempt}"
        try:
            await self.api.request("POST", path, claim)
        except ApiError as error:
            if error.status == 409:
                found = await self.api.request(
                    "GET", names.PERSISTENT_VOLUME_CLAIMS.path(ref.namespace, claim["metadata"]["name"])
                )
                problem = workspace.foreign(found, ref, spec)
                if problem is not None:
                    raise CreateRefused(problem[:CREATE_REFUSED_MAX]) from None
            elif error.status == 403:
                message = f"the API server refused {what}: {error.message}"
                raise CreateRefused(message[:CREATE_REFUSED_MAX]) from None
            elif error.status in (400, 422):
                return f"the API server refused {what}: {error.message}"
            else:
                raise
        self._workspaces[key] = ref.uid
        return None

    def _heartbeat_account_missing(self, error: ApiError) -> bool:
        """Whether the API server refused a pod because the heartbeat's ServiceAccount does not exist (the
        ServiceAccount admission's "error looking up service account NS/NAME: ... not found")."""
        account = self.settings.heartbeat_service_account
        return (
            bool(account)
            and "error looking up service account" in error.message
            and (f'serviceaccount "{account}" not found' in error.message)
        )

    async def _delete_dispatch(self, key: Key) -> None:
        """Delete the finished dispatch whose ttl has passed, as decided on the cached object: a changed
        one (409) is read and decided again, one already gone (404) is done."""
        cached = self.cache.get(key)
        if cached is None:
            return
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
            "preconditions": {"uid": cached.uid, "resourceVersion": cached.resource_version},
        }
        try:
            await self.api.request("DELETE", names.FLEET_DISPATCHES.path(*key), options)
        except ApiError as error:
            if error.status == 409:
                try:
                    fresh = await self.api.request("GET", names.FLEET_DISPATCHES.path(*key))
                except ApiError as again:
                    if again.status == 404:
                        return
                    raise
                self.remember(key, fresh)
                self.queue.add(key)
                return
            if error.status != 404:
                raise
        logger.info("%s/%s: deleted, its ttlSecondsAfterFinished has passed", *key)

    async def _delete_pod(self, namespace: str, name: str) -> None:
        try:
            await self.api.request(
                "DELETE", names.PODS.path(namespace, name), {"propagationPolicy": "Background"}, decode=False
            )
        except ApiError as error:
            if error.status != 404:
                raise
        self.pods.deleted(namespace, name)

    async def _record(
        self, dispatch: lifecycle.Dispatch, decision: lifecycle.Decision, before: FleetDispatchStatus
    ) -> None:
        """Metrics and Events for what the decision did; an Event that cannot be posted is only logged."""
        pods = self.pods.of((dispatch.namespace, dispatch.name), dispatch.uid)
        pool = dispatch.spec.quota_pool if dispatch.spec is not None else None
        self.metrics.record(before, decision, pods, self.clock(), namespace=dispatch.namespace, pool=pool)
        for event in decision.events:
            await self._post_event(dispatch, event)

    async def _post_event(self, dispatch: lifecycle.Dispatch, event: lifecycle.Event) -> None:
        body = event_body(dispatch, event, self.clock(), self._instance)
        try:
            await self.api.request("POST", names.EVENTS.path(dispatch.namespace), body, decode=False)
        except (TimeoutError, ApiError, OSError) as error:
            logger.warning("cannot post an Event for %s/%s: %s", dispatch.namespace, dispatch.name, error)
