"""The README's generated sections, made from the CRDs so that they cannot drift from them.

    python scripts/api_reference.py          # print every section
    python scripts/api_reference.py --write  # rewrite them in README.md, each between its markers

Sections: `api-reference` (the configuration tables), `cel-rules` (every CEL rule and its message) and
`validate-example` (what `fleetdispatch validate` prints for a refused manifest).
`tests/unit/test_readme.py` fails when a section of the README differs from what this makes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
# A dispatch's template is a pod template: its fields are Kubernetes' own, documented there, not here; a
# campaign's is a FleetDispatch's metadata and spec, documented in the FleetDispatch table.
OPAQUE = {"spec.template"}


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = node.get("type", "object")
    if "enum" in node:
        return " \\| ".join(f"`{value}`" for value in node["enum"])
    if kind == "array":
        return f"list of {_type(node['items'])}"
    bounds = []
    if "minimum" in node or "maximum" in node:
        bounds.append(f"{node.get('minimum', '')} to {node.get('maximum', '')}")
    if "maxLength" in node:
        bounds.append(f"≤ {node['maxLength']} chars")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _rows(node: dict[str, Any], path: str) -> list[str]:
    properties = node.get("properties")
    if properties and path not in OPAQUE:
        rows = []
        for name, child in properties.items():
            rows += _rows(child, f"{path}.{name}")
        return rows
    if node.get("type") == "array" and "properties" in node.get("items", {}):
        rows = [_row(node, path)]
        for name, child in node["items"]["properties"].items():
            rows += _rows(child, f"{path}[].{name}")
        return rows
    return [_row(node, path)]


def _row(node: dict[str, Any], path: str) -> str:
    default = node.get("default")
    shown = "" if default in (None, {}) else f"`{json.dumps(default)}`"
    meaning = " ".join(str(node.get("description", "")).split()).replace("|", "\\|")
    return f"| `{path}` | {_type(node)} | {shown} | {meaning} |"


def _crds() -> list[dict[str, Any]]:
    return [
        yaml.safe_load((ROOT / "crds" / file).read_text(encoding="utf-8"))
        for file in ("fleetdispatches.yaml", "quotapools.yaml", "fleetcampaigns.yaml")
    ]


def tables() -> str:
    out = []
    for crd in _crds():
        kind = crd["spec"]["names"]["kind"]
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        out += [f"**{kind}** (`{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}`)", ""]
        out += ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += _rows(spec, "spec")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _rules(node: Any, path: str) -> list[tuple[str, str, str]]:
    found = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            where = (path + rule.get("fieldPath", "")).removeprefix(".")
            found.append((where or "(the object)", rule["rule"], " ".join(rule.get("message", "").split())))
        for name, child in node.get("properties", {}).items():
            found += _rules(child, f"{path}.{name}" if path else name)
        if "items" in node:
            found += _rules(node["items"], f"{path}[]")
    return found


def cel_rules() -> str:
    out = ["| kind | field | rule | message |", "| --- | --- | --- | --- |"]
    for crd in _crds():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        kind = crd["spec"]["names"]["kind"]
        embedded = False
        for where, rule, message in _rules(schema, ""):
            # A campaign's template.spec is a FleetDispatch's spec, with its rules (those of oldSelf aside).
            if kind == "FleetCampaign" and where.startswith("spec.template.spec."):
                embedded = True
                continue
            rule_text = " ".join(rule.split()).replace("|", "\\|")
            out.append(f"| {kind} | `{where}` | `{rule_text}` | {message} |")
        if embedded:
            every = "every FleetDispatch `spec` rule above but the immutability ones"
            out.append(f"| {kind} | `spec.template.spec` | {every} | |")
    return "\n".join(out) + "\n"


EXAMPLE = """\
apiVersion: fleet.dispatch.dev/v1alpha1
kind: FleetDispatch
metadata:
  name: too-eager
spec:
  template:
    spec:
      containers:
        - name: session
          image: busybox:1.36
  timeouts:
    deadlineSeconds: 0
    idleOutputSeconds: 5
  failurePolicy:
    rules:
      - action: Fail
"""


def validate_example() -> str:
    from fleetdispatch.validation import manifests  # the package, only for this section

    verdict = manifests.check(yaml.safe_load(EXAMPLE))
    return f"```yaml\n{EXAMPLE}```\n\n```\n{verdict.explain()}\n```\n"


def operator_settings() -> str:
    """The operator's settings: flag, environment variable, default, meaning (from `OperatorSettings`)."""
    from fleetdispatch.api.settings import ENV_PREFIX, OperatorSettings

    lines = ["| flag | environment variable | default | meaning |", "| --- | --- | --- | --- |"]
    for name, info in OperatorSettings.model_fields.items():
        default = "none" if info.default is None else f"`{info.default}`"
        flag = f"--{name.replace('_', '-')}"
        lines.append(f"| `{flag}` | `{ENV_PREFIX}{name.upper()}` | {default} | {info.description} |")
    return "\n".join(lines) + "\n"


SECTIONS = {
    "api-reference": tables,
    "cel-rules": cel_rules,
    "validate-example": validate_example,
    "operator-settings": operator_settings,
}


def section_pattern(name: str) -> re.Pattern[str]:
    return re.compile(f"(<!-- {name}:begin -->\\n)(.*?)(<!-- {name}:end -->)", re.S)


def embedded(readme: str, name: str) -> str:
    """A section as it stands in the README, between its markers."""
    match = section_pattern(name).search(readme)
    if match is None:
        raise SystemExit(f"README.md has no <!-- {name}:begin --> ... <!-- {name}:end --> section")
    return match.group(2)


def main() -> int:
    if sys.argv[1:] == ["--write"]:
        readme_path = ROOT / "README.md"
        readme = readme_path.read_text(encoding="utf-8")
        for name, make in SECTIONS.items():
            text = make()
            readme = section_pattern(name).sub(lambda m, t=text: m.group(1) + t + m.group(3), readme, count=1)
        readme_path.write_text(readme, encoding="utf-8")
    else:
        for name, make in SECTIONS.items():
            sys.stdout.write(f"<!-- {name} -->\n{make()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
