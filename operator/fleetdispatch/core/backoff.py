"""How long a dispatch waits before its next attempt: exponential backoff with deterministic jitter.

`delay(backoff, failures, seed)` is `baseSeconds * 2^(failures - 1)`, capped at `maxSeconds`, plus up to
`jitterPercent` percent of itself. The jitter is drawn from a hash of `seed` (the dispatch's uid and the
attempt), not from a random generator: the same dispatch at the same attempt always waits the same time,
so a reconcile repeated after an operator restart computes the same `requeueAt` and writes nothing new,
while dispatches that failed together (a campaign hitting one broken dependency) still spread out.

`requeue_jitter` spreads dispatches waiting for one quota reset the same way, over `baseSeconds`, so a
pool's sessions do not all start in the same second the quota comes back.

Whole seconds only: status times are whole seconds (metav1.Time), so wake-ups computed from them are too.

Deliberately not here: when to back off (that is `lifecycle`), clocks and sleeping.
"""

from __future__ import annotations

import hashlib
import math

from fleetdispatch.api.models import Backoff


def _fraction(seed: str) -> float:
    """A number in [0, 1) that depends only on `seed`."""
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def delay(backoff: Backoff, failures: int, seed: str) -> int:
    """Seconds to wait after the `failures`-th failure in a row (1 for the first)."""
    exponent = max(failures, 1) - 1
    base = (
        backoff.max_seconds
        if exponent >= 32
        else min(backoff.base_seconds * 2**exponent, backoff.max_seconds)
    )
    return math.ceil(base * (1 + backoff.jitter_percent / 100 * _fraction(seed)))


def requeue_jitter(backoff: Backoff, seed: str) -> int:
    """Seconds added to a quota reset time, so waiting dispatches do not start at once."""
    return math.ceil(backoff.base_seconds * backoff.jitter_percent / 100 * _fraction(seed))
