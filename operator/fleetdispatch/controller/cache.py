"""What the controller keeps of the cluster: its dispatches (compactly), their parsed specs, and their pods.

- **`DispatchCache`** keeps, per dispatch, only what the reconcile step reads: its identity, its parsed spec
  and its status (10,000 dispatches must fit in the operator's memory budget). **Read your own writes:** the
  response of our own write replaces the cached object at once, and the watch event of that write, older by
  its `resourceVersion`, is then ignored.
- **`SpecCache`** parses a spec once and shares the result between dispatches whose specs are equal (a
  campaign's members usually are): that is most of the memory a dispatch would otherwise cost.
- **`Pods`** are a dispatch's pods as the lifecycle reads them: kopf's index of the labelled pods, plus the
  pods we created whose watch event has not arrived yet.

Deliberately not here: deciding anything (the core) and talking to the API server (the reconciler).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetdispatch.api import models, names
from fleetdispatch.api.models import FleetDispatchSpec, InvalidSpec
from fleetdispatch.core import podspec
from fleetdispatch.core.podstatus import PodView

Key = tuple[str, str]  # (namespace, name)
SPEC_CACHE_SIZE = 4096  # distinct specs kept for sharing; a campaign has few


@dataclass(frozen=True)
class ParsedSpec:
    """A spec as the lifecycle uses it, with the raw template the pod is built from; `spec` is None exactly
    when `invalid` says why it cannot be acted upon."""

    spec: FleetDispatchSpec | None
    template: Mapping[str, Any]
    invalid: str | None


@dataclass
class Cached:
    """What the controller keeps of one dispatch: its identity, its parsed spec, its status and its retry
    annotation, not the whole object."""

    uid: str
    generation: int
    resource_version: str | None
    deleting: bool
    parsed: ParsedSpec
    status: dict[str, Any]
    created: str = ""
    retry_request: str | None = None  # its fleet.dispatch.dev/retry annotation

    @property
    def pool(self) -> str | None:
        return self.parsed.spec.quota_pool if self.parsed.spec is not None else None


def resource_version(value: Any) -> int | None:
    """A resourceVersion as a number when it is one (it is on real clusters and here), else None."""
    return int(value) if isinstance(value, str) and value.isdigit() else None


def compact(value: Any) -> Any:
    """`value` with its keys and short strings interned: statuses repeat the same few dozen of them."""
    if isinstance(value, dict):
        return {sys.intern(k): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


@dataclass
class SpecCache:
    """Parsed specs by the digest of their JSON, the oldest dropped past `size` (a dispatch keeps its own)."""

    size: int = SPEC_CACHE_SIZE
    _specs: dict[bytes, ParsedSpec] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._specs)

    def parse(self, name: str, raw: Any) -> ParsedSpec:
        """The spec of dispatch `name`: checked (name, spec, template) and shared with equal specs."""
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
            if len(self._specs) >= self.size:
                self._specs.pop(next(iter(self._specs)))
            self._specs[digest] = parsed
        return parsed


def _retry_request(meta: Mapping[str, Any]) -> str | None:
    value = (meta.get("annotations") or {}).get(names.RETRY_ANNOTATION)
    return value if isinstance(value, str) else None


@dataclass
class DispatchCache:
    """The dispatches the controller knows, by (namespace, name)."""

    specs: SpecCache = field(default_factory=SpecCache)
    _dispatches: dict[Key, Cached] = field(default_factory=dict)

    def get(self, key: Key) -> Cached | None:
        return self._dispatches.get(key)

    def __len__(self) -> int:
        return len(self._dispatches)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._dispatches)

    def remember(self, key: Key, body: Mapping[str, Any]) -> bool:
        """Keep what the controller needs of `body`; False when it is older than what is kept already
        (the watch event of our own write, whose response was kept first)."""
        meta = body.get("metadata") or {}
        uid, generation = str(meta.get("uid")), int(meta.get("generation") or 0)
        cached = self._dispatches.get(key)
        if cached is not None and cached.uid == uid:
            new_rv, old_rv = (
                resource_version(meta.get("resourceVersion")),
                resource_version(cached.resource_version),
            )
            if new_rv is not None and old_rv is not None and new_rv <= old_rv:
                return False
        if cached is None or cached.uid != uid or cached.generation != generation:
            parsed = self.specs.parse(key[1], body.get("spec"))
        else:
            parsed = cached.parsed  # the spec only changes with the generation
        self._dispatches[key] = Cached(
            uid=uid,
            generation=generation,
            resource_version=meta.get("resourceVersion"),
            deleting=bool(meta.get("deletionTimestamp")),
            parsed=parsed,
            status=compact(dict(body.get("status") or {})),
            created=sys.intern(str(meta.get("creationTimestamp") or "")),
            retry_request=_retry_request(meta),
        )
        return True

    def forget(self, key: Key) -> Cached | None:
        """The dispatch was deleted: what was kept of it, if anything."""
        return self._dispatches.pop(key, None)

    def phase_counts(self) -> dict[str, int]:
        """How many dispatches are in each phase (a dispatch without a status yet is Pending)."""
        counts: dict[str, int] = {}
        for cached in self._dispatches.values():
            phase = cached.status.get("phase") or "Pending"
            counts[phase] = counts.get(phase, 0) + 1
        return counts


@dataclass
class Pods:
    """A dispatch's pods: those `indexed` (kopf's index, by dispatch key) and those we created since."""

    indexed: Callable[[Key], Iterable[PodView]] = lambda key: ()
    _created: dict[Key, PodView] = field(default_factory=dict)  # (namespace, pod name) -> pod

    def of(self, key: Key, uid: str) -> list[PodView]:
        """The pods of dispatch `key`: labelled with its name and owned by this very object (its `uid`)."""
        seen = {pod.name: pod for pod in self.indexed(key) if pod.owner_uid == uid}
        for (namespace, name), pod in self._created.items():
            if namespace == key[0] and name not in seen and name.rpartition("-")[0] == key[1]:
                seen[name] = pod
        return list(seen.values())

    def created(self, namespace: str, pod: PodView) -> None:
        """We created `pod` (the API server's response): use it until its watch event arrives."""
        self._created[(namespace, pod.name)] = pod

    def seen(self, namespace: str, name: str) -> None:
        """A watch event of pod `name` arrived: the index has it now."""
        self._created.pop((namespace, name), None)

    def deleted(self, namespace: str, name: str) -> None:
        """We deleted pod `name`: it is no longer one of the dispatch's pods."""
        self._created.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._created)
