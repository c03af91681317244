"""Test support: the sample names a metrics registry exports (`fleetdispatch_attempts_total`,
`..._bucket`, `process_cpu_seconds_total`), for the checks that the chart's alerts and dashboard ask only
for metrics the operator really exports."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "info": ("_info",),
}
# A PromQL metric name: an identifier not followed by `(` (a function) and not a label name (`x=`, `by (x)`).
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name of the registry's metric families, observed yet or not."""
    names: set[str] = set()
    for family in registry.collect():
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


def referenced(
    expression: str, prefixes: tuple[str, ...] = ("fleetdispatch_", "process_", "python_")
) -> set[str]:
    """The metric names a PromQL expression reads, of the operator's prefixes (`up` and functions aside)."""
    return {name for name in _NAME.findall(expression) if name.startswith(prefixes)}
