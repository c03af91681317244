"""The chart's optional monitoring: the Grafana dashboard ConfigMap and the PrometheusRule.

Rendered by `helm template` (the helm that `make tools` installs): neither is rendered by default, the
PrometheusRule only where the cluster serves monitoring.coreos.com/v1 (as the ServiceMonitor), both only
with the metrics on. The alerts and the dashboard ask only for metrics the operator really exports: the
names their PromQL reads are held against the sample names of the operator's own registry
(`controller.metrics.Metrics`), and the dashboard shows every `fleetdispatch_` metric.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fleetdispatch.controller.metrics import Metrics
from metrics_names import referenced, sample_names

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "fleet-dispatch"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE, NAMESPACE = "fd", "fleet-system"
SELECTOR = f'job="{RELEASE}-fleet-dispatch-metrics", namespace="{NAMESPACE}"'
ALERTS = {
    "FleetDispatchOperatorDown",
    "FleetDispatchWorkersStuck",
    "FleetDispatchDispatchesStuckPending",
    "FleetDispatchRequeueLate",
}

pytestmark = pytest.mark.skipif(
    not HELM.exists() and not os.environ.get("CI"), reason="helm not installed: run `make tools`"
)


def render(*sets: str, monitoring: bool = False) -> list[dict[str, Any]]:
    args = [str(HELM), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for value in sets:
        args += ["--set", value]
    if monitoring:
        args += ["--api-versions", "monitoring.coreos.com/v1"]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def dashboards(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]


def exported() -> set[str]:
    return sample_names(Metrics().registry)


def rule(*sets: str) -> dict[str, Any]:
    [found] = of_kind(render("metrics.prometheusRule.enabled=true", *sets, monitoring=True), "PrometheusRule")
    return found


def alerts(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [group] = found["spec"]["groups"]
    return {r["alert"]: r for r in group["rules"]}


def test_neither_is_rendered_by_default() -> None:
    docs = render(monitoring=True)
    assert not of_kind(docs, "PrometheusRule") and not dashboards(docs)


def test_the_rule_needs_the_monitoring_api_and_the_metrics() -> None:
    assert not of_kind(render("metrics.prometheusRule.enabled=true"), "PrometheusRule")
    off = render("metrics.prometheusRule.enabled=true", "metrics.enabled=false", monitoring=True)
    assert not of_kind(off, "PrometheusRule")
    assert not dashboards(render("metrics.dashboard.enabled=true", "metrics.enabled=false"))


def test_the_alerts_read_only_exported_metrics_of_this_operator() -> None:
    found = rule("metrics.prometheusRule.labels.release=prometheus")
    assert found["apiVersion"] == "monitoring.coreos.com/v1"
    assert found["metadata"]["namespace"] == NAMESPACE
    assert found["metadata"]["labels"]["release"] == "prometheus"
    rules = alerts(found)
    assert set(rules) == ALERTS
    names = exported()
    for name, alert in rules.items():
        expression = alert["expr"]
        read = referenced(expression)
        assert read, name
        assert read <= names, (name, read - names)
        # Every series it reads is this release's operator's (the ServiceMonitor's job and namespace).
        assert expression.count(SELECTOR) == len(_selectors(expression)), (name, expression)
        assert _balanced(expression), expression
        assert alert["labels"]["severity"] in ("critical", "warning")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert alert["for"]


def test_the_rules_thresholds_and_selector_are_settings() -> None:
    rules = alerts(
        rule(
            'metrics.prometheusRule.selector=job="fleet"',
            "metrics.prometheusRule.pendingFor=1h",
            "metrics.prometheusRule.requeueLatenessSeconds=60",
        )
    )
    pending, late = rules["FleetDispatchDispatchesStuckPending"], rules["FleetDispatchRequeueLate"]
    assert pending["for"] == "1h" and "[1h]" in pending["expr"]
    assert late["expr"].rstrip().endswith("> 60")
    for alert in rules.values():
        assert SELECTOR not in alert["expr"] and 'job="fleet"' in alert["expr"]


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar() -> None:
    [default] = dashboards(render("metrics.dashboard.enabled=true"))
    assert default["metadata"]["labels"]["grafana_dashboard"] == "1"
    kubernetes_validate.validate(default, kubernetes_validate.utils.latest_version(), strict=True)
    [custom] = dashboards(
        render(
            "metrics.dashboard.enabled=true",
            "metrics.dashboard.labelName=dashboards",
            "metrics.dashboard.labelValue=fleet",
            "metrics.dashboard.annotations.grafana_folder=Operators",
        )
    )
    assert custom["metadata"]["labels"]["dashboards"] == "fleet"
    assert "grafana_dashboard" not in custom["metadata"]["labels"]
    assert custom["metadata"]["annotations"] == {"grafana_folder": "Operators"}
    [(key, text)] = default["data"].items()
    assert key.endswith(".json")
    assert json.loads(text) == json.loads((CHART / "files" / "dashboard.json").read_text())


def test_the_dashboard_shows_every_operator_metric_and_only_exported_ones() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = exported()
    read: set[str] = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = referenced(target["expr"])
            assert found and found <= names, (panel["title"], found - names)
            assert _balanced(target["expr"]), target["expr"]
            read |= found
    operator = {n for n in names if n.startswith("fleetdispatch_")}
    # A histogram is shown by its buckets (quantiles); its _sum and _count need not be.
    histograms = {n.removesuffix("_bucket") for n in operator if n.endswith("_bucket")}
    shown = read | {f"{h}_{part}" for h in histograms if f"{h}_bucket" in read for part in ("sum", "count")}
    assert operator <= shown, operator - shown


def _selectors(expression: str) -> list[str]:
    """The `{...}` label matchers of an expression."""
    found, depth, start = [], 0, 0
    for index, char in enumerate(expression):
        if char == "{":
            depth, start = depth + 1, index
        elif char == "}":
            depth -= 1
            found.append(expression[start + 1 : index])
    return found


def _balanced(expression: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for char in expression:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack
