"""`fleetdispatch validate` held against the real API server: the same verdict, the server's own words.

`admission` (the engine of `fleetdispatch validate`, which runs offline) reproduces what kube-apiserver
answers for our CRDs. Here every manifest of the invalid corpus (tests/invalid/, the updates under
updates/ too), every FleetDispatch and QuotaPool of examples/, and a few probes of what the corpus does
not hold go both ways: `kubectl apply --dry-run=server` as the dev cluster's admin, into a namespace of
the test's, and `fleetdispatch validate` (`manifests.check` for an update, which the command line cannot
express). Both must accept it or both refuse it; the field errors must be the same, word for word (as a
set: the server's order varies), with kubectl's header; and for an accepted manifest the spec the server
would store (pruned, defaulted) must be the one validate computed. Where they disagreed the server was
right and `admission` was fixed; what cannot be removed is in KNOWN_DIFFERENCES, each asserted to differ
still, every other case to agree.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch import cli
from fleetdispatch.api import names
from fleetdispatch.devcluster.stack import BackgroundCluster
from fleetdispatch.validation import manifests
from kubectl import Kubectl, needs_kubectl
from operators import Namespace

pytestmark = needs_kubectl

ROOT = Path(__file__).resolve().parents[2]
INVALID = ROOT / "tests" / "invalid"
CREATES = sorted(INVALID.glob("*.yaml"))
UPDATES = sorted((INVALID / "updates").glob("*.yaml"))
EXAMPLE_FILES = sorted(
    [
        *ROOT.glob("examples/*.yaml"),
        *ROOT.glob("examples/local/*.yaml"),
        *ROOT.glob("examples/campaign/*.yaml"),
    ]
)

# Manifests on which validate and the API server knowingly differ (case id -> why), asserted to differ
# still: a difference that goes away must leave this list, a new one must join it with its reason.
KNOWN_DIFFERENCES: dict[str, str] = {
    "probe/unknown-field-and-invalid-value": (
        "for an unknown field the API server answers 400 (strict decoding) and validates nothing else; "
        "validate reports the unknown field and goes on: the other errors of the object come too"
    ),
    "probe/api-version-not-served": (
        "kubectl looks the kind up by discovery and stops before it sends anything "
        '(no matches for kind "FleetDispatch" in version ...); validate answers as the schema check '
        '(apiVersion: Unsupported value: ...: supported values: "fleet.dispatch.dev/v1alpha1")'
    ),
}
# Known, and not a case here: the server's order of errors in different properties varies from request to
# request (kube-openapi walks a Go map), validate's follows the object, so the errors compare as a set.
# Differences no manifest here shows are in admission's docstring (validation ratcheting on update, CEL
# messageExpression and cost budgets, a few formats, the ObjectMeta checks).


def _ours(doc: Any) -> bool:
    return (
        str(doc.get("apiVersion", "")).partition("/")[0] == names.GROUP
        and doc.get("kind") in manifests.crds()
    )


def _example_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for path in EXAMPLE_FILES:
        docs = [d for d in manifests.documents(path.read_text(encoding="utf-8")) if _ours(d)]
        for index, doc in enumerate(docs):
            suffix = f"#{index}" if len(docs) > 1 else ""
            cases.append((f"{path.relative_to(ROOT).as_posix()}{suffix}", dict(doc)))
    return cases


EXAMPLES = _example_cases()


def _probe(name: str = "probe", **spec: Any) -> dict[str, Any]:
    """examples/minimal.yaml with `spec` fields replaced."""
    [minimal] = manifests.documents((ROOT / "examples" / "minimal.yaml").read_text(encoding="utf-8"))
    manifest = json.loads(json.dumps(minimal))
    manifest["metadata"] = {"name": name}
    manifest["spec"].update(spec)
    return dict(manifest)


SESSION = {"name": "session", "image": "busybox:1.36"}
# What the corpus does not hold: nulls, numbers spelt as floats, the status, several errors at once.
PROBES: dict[str, dict[str, Any]] = {
    "null-for-a-defaulted-field": _probe(timeouts={"deadlineSeconds": None}, suspend=None),
    "integer-spelt-as-a-float": _probe(timeouts={"deadlineSeconds": 60.0}),
    "fraction-for-an-integer": _probe(timeouts={"deadlineSeconds": 1.5}),
    "null-template": _probe(template=None),
    "containers-as-a-string": _probe(template={"spec": {"containers": "session"}}),
    "several-errors-in-several-fields": _probe(
        timeouts={"deadlineSeconds": 0, "killGraceSeconds": 99999}, retry={"maxAttempts": 0}
    ),
    "duplicate-exit-codes-twice": _probe(
        failurePolicy={
            "rules": [{"action": "Fail", "onExitCodes": {"operator": "In", "values": [3, 3, 4, 4]}}]
        }
    ),
    "pod-fields-the-crd-leaves-to-the-pod": _probe(
        template={
            "spec": {
                "containers": [
                    {**SESSION, "env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]},
                ]
            }
        }
    ),
    "status-written-with-the-spec": {**_probe(), "status": {"phase": "Bogus", "attempt": -1}},
    "unknown-status-field": {**_probe(), "status": {"bogus": 1}},
    "name-not-a-dns-subdomain": _probe("Bad_Name"),
    "unknown-field-and-invalid-value": _probe(timeouts={"deadlineSeconds": 0, "bogus": 1}),
    "api-version-not-served": {**_probe(), "apiVersion": f"{names.GROUP}/v9"},
}
CASE_IDS = [
    *(f"invalid/{p.name}" for p in CREATES),
    *(f"invalid/updates/{p.name}" for p in UPDATES),
    *(case for case, _ in EXAMPLES),
    *(f"probe/{name}" for name in PROBES),
]


@dataclass(frozen=True)
class Answer:
    """One side's verdict: accepted or not, the text it printed, and the field errors in that text."""

    accepted: bool
    text: str
    errors: tuple[str, ...] = ()


def server_errors(text: str) -> list[str]:
    """The field errors in kubectl's report of a refusal (a 422's causes, or a 400's unknown fields);
    a refusal of another kind is one error, its first line."""
    if "strict decoding error: " in text:
        return re.findall(r'unknown field "[^"]*"', text.partition("strict decoding error: ")[2])
    _, found, body = text.partition(" is invalid: ")
    if not found:
        return [text.splitlines()[0]]
    if body.startswith("\n"):
        return [line.removeprefix("* ") for line in body.splitlines() if line.startswith("* ")]
    return [body.strip()]


@pytest.fixture(scope="module")
def namespace(cluster: BackgroundCluster) -> Namespace:
    return Namespace(cluster, "admission-agreement", runtime="none")


def kubectl_for(cluster: BackgroundCluster, namespace: str, tmp_path: Path) -> Kubectl:
    return Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", namespace=namespace))


def dry_run(kubectl: Kubectl, path: Path) -> tuple[Answer, dict[str, Any] | None]:
    """`kubectl apply --dry-run=server`: the answer, and the object the server would store if accepted."""
    result = kubectl.run("apply", "--dry-run=server", "-o", "json", "-f", str(path), check=False)
    if result.returncode == 0:
        return Answer(True, result.stdout), json.loads(result.stdout)
    text = result.stderr.strip()
    return Answer(False, text, tuple(server_errors(text))), None


def validate_file(path: Path) -> Answer:
    """`fleetdispatch validate <file>`, and the field errors it printed."""
    out = io.StringIO()
    code = cli.validate([str(path)], out=out)
    text = out.getvalue()
    assert code in (0, 1)
    assert "1 fleet.dispatch.dev manifests checked" in text, text
    [manifest] = [d for d in manifests.documents(path.read_text(encoding="utf-8")) if _ours(d)]
    errors = tuple(str(error) for error in manifests.check(manifest).api_errors)
    assert all(error in text for error in errors), text
    return Answer(code == 0, text, errors)


def differences(server: Answer, validate: Answer) -> list[str]:
    """How the two answers disagree; empty when they agree."""
    if server.accepted != validate.accepted:
        verdicts = {True: "accepts", False: "refuses"}
        return [
            f"the server {verdicts[server.accepted]} it, validate {verdicts[validate.accepted]} it:\n"
            f"server: {server.text}\nvalidate: {validate.text}"
        ]
    if server.accepted:
        return []
    # The same field errors, word for word. As a set: the server's order of errors in different properties
    # varies from one request to the next (kube-openapi walks a Go map).
    found = [f"only the server reports {e!r}" for e in server.errors if e not in validate.errors]
    found += [f"only validate reports {e!r}" for e in validate.errors if e not in server.errors]
    header = server.text.partition(" is invalid: ")[0]
    if " is invalid: " in server.text and f"{header} is invalid" not in validate.text:
        found.append(f"kubectl's {header!r} is not in validate's report")
    if found:
        found.append(f"server: {server.text}\nvalidate: {validate.text}")
    return found


def stored_spec_differences(stored: dict[str, Any] | None, manifest: dict[str, Any]) -> list[str]:
    """The spec the server would store against the one validate defaulted."""
    assert stored is not None
    defaulted = manifests.check(manifest).defaulted
    if stored.get("spec") == defaulted.get("spec"):
        return []
    return [
        "the server would store another spec than validate computed:\n"
        f"server:   {json.dumps(stored.get('spec'), sort_keys=True)}\n"
        f"validate: {json.dumps(defaulted.get('spec'), sort_keys=True)}"
    ]


def hold(case: str, found: list[str]) -> None:
    """Agreement, or exactly the known difference."""
    if case in KNOWN_DIFFERENCES:
        assert found, f"{case} agrees now: take it off KNOWN_DIFFERENCES ({KNOWN_DIFFERENCES[case]})"
    else:
        assert not found, "\n".join(found)


def test_the_cases_are_the_corpus_and_the_examples() -> None:
    assert len(CREATES) >= 40 and len(UPDATES) >= 5
    kinds = {doc["kind"] for _, doc in EXAMPLES}
    assert kinds == {"FleetDispatch", "QuotaPool", "FleetCampaign"}
    assert len(EXAMPLES) >= 10
    assert len(set(CASE_IDS)) == len(CASE_IDS)
    # The known differences name cases that exist, each with its reason.
    assert set(KNOWN_DIFFERENCES) <= set(CASE_IDS)
    assert all(reason.strip() for reason in KNOWN_DIFFERENCES.values())


@pytest.mark.parametrize("path", CREATES, ids=lambda p: p.stem)
def test_an_invalid_manifest_is_refused_alike(
    cluster: BackgroundCluster, namespace: Namespace, path: Path, tmp_path: Path
) -> None:
    kubectl = kubectl_for(cluster, namespace.name, tmp_path)
    server, _ = dry_run(kubectl, path)
    assert not server.accepted, f"the server accepts {path.name}: the corpus must hold refusals"
    hold(f"invalid/{path.name}", differences(server, validate_file(path)))


@pytest.mark.parametrize("path", UPDATES, ids=lambda p: p.stem)
def test_an_invalid_update_is_refused_alike(cluster: BackgroundCluster, path: Path, tmp_path: Path) -> None:
    # A namespace per update: the stored object is created for real, and must not meet another's.
    ns = Namespace(cluster, f"admission-update-{path.stem[:2]}", runtime="none")
    kubectl = kubectl_for(cluster, ns.name, tmp_path)
    stored, update = (dict(d) for d in manifests.documents(path.read_text(encoding="utf-8")))
    (tmp_path / "stored.yaml").write_text(yaml.safe_dump(stored), encoding="utf-8")
    (tmp_path / "update.yaml").write_text(yaml.safe_dump(update), encoding="utf-8")
    kubectl.run("apply", "-f", str(tmp_path / "stored.yaml"))
    try:
        server, _ = dry_run(kubectl, tmp_path / "update.yaml")
    finally:
        kubectl.run("delete", "--wait=true", "-f", str(tmp_path / "stored.yaml"))
    verdict = manifests.check(update, old=stored)
    errors = tuple(str(error) for error in verdict.api_errors)
    assert not server.accepted, f"the server accepts the update of {path.name}"
    hold(
        f"invalid/updates/{path.name}", differences(server, Answer(verdict.valid, verdict.explain(), errors))
    )


def server_and_validate_differ(
    cluster: BackgroundCluster, namespace: Namespace, manifest: dict[str, Any], tmp_path: Path
) -> list[str]:
    """How the API server's answer to `manifest` (a server-side dry run) and `fleetdispatch validate`'s
    differ, and, when both accept it, how the stored spec differs from validate's defaulted one."""
    kubectl = kubectl_for(cluster, namespace.name, tmp_path)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest), encoding="utf-8")
    server, stored = dry_run(kubectl, path)
    found = differences(server, validate_file(path))
    if not found and server.accepted:
        found = stored_spec_differences(stored, manifest)
    return found


@pytest.mark.parametrize(("case", "manifest"), EXAMPLES, ids=[case for case, _ in EXAMPLES])
def test_an_example_is_accepted_alike_and_stored_as_validate_defaults_it(
    cluster: BackgroundCluster, namespace: Namespace, case: str, manifest: dict[str, Any], tmp_path: Path
) -> None:
    hold(case, server_and_validate_differ(cluster, namespace, manifest, tmp_path))


@pytest.mark.parametrize("name", PROBES)
def test_a_probe_gets_the_same_answer(
    cluster: BackgroundCluster, namespace: Namespace, name: str, tmp_path: Path
) -> None:
    hold(f"probe/{name}", server_and_validate_differ(cluster, namespace, PROBES[name], tmp_path))


def test_server_errors_reads_kubectls_reports() -> None:
    one = 'The FleetDispatch "bad" is invalid: spec.x: Invalid value: 0: too small'
    assert server_errors(one) == ["spec.x: Invalid value: 0: too small"]
    several = "\n".join(
        [
            'The FleetDispatch "bad" is invalid: ',
            "* spec.x: Required value",
            "* <nil>: Invalid value: null: skipped",
        ]
    )
    assert server_errors(several) == ["spec.x: Required value", "<nil>: Invalid value: null: skipped"]
    strict = (
        'Error from server (BadRequest): error when creating "x.yaml": FleetDispatch in version "v1alpha1" '
        "cannot be handled as a FleetDispatch: strict decoding error: "
        'unknown field "spec.a", unknown field "spec.b"'
    )
    assert server_errors(strict) == ['unknown field "spec.a"', 'unknown field "spec.b"']
