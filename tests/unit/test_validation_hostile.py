"""`fleetdispatch validate` and `admit` on hostile input: bounded, one clear line, never a traceback.

The command runs as a real subprocess under RLIMIT_AS 256 MiB and a 5 s timeout on files a hostile user (or a
broken generator) could hand it: alias bombs, anchors that contain themselves, nesting past 100 levels,
more than 100,000 values, numbers JSON cannot carry, files that are not UTF-8, empty, a folder, or larger
than the API server's 3 MiB. `admit`, called directly, must answer with errors and never raise, whatever
object it is given (a property test), and a FieldError must always print.
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetdispatch.validation import manifests
from fleetdispatch.validation.admission import admit, validate
from fleetdispatch.validation.messages import DUPLICATE, INVALID, FieldError, format_invalid

MEMORY_LIMIT = 256 * 2**20
TIME_LIMIT = 5.0
HEAD = """apiVersion: fleet.dispatch.dev/v1alpha1
kind: FleetDispatch
metadata:
  name: bad
spec:
  template:
    spec:
      containers:
      - name: session
        image: busybox:1.36
"""


def _billion_laughs() -> str:
    lines = ['  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return HEAD + "        env:\n" + "\n".join(lines) + "\n"


# name -> (file content, the reason printed after "<file>: cannot read: ", or one of several).
REFUSED: dict[str, tuple[str | bytes, str | tuple[str, ...]]] = {
    "billion-laughs": (_billion_laughs(), "not valid YAML: document contains excessive aliasing"),
    "anchor-containing-itself": (
        HEAD + "  timeouts: &loop\n    x: *loop\n",
        "not valid YAML: anchor 'loop' value contains itself",
    ),
    "flow-nesting-101": (
        HEAD + "        x: " + "[" * 95 + "]" * 95 + "\n",
        "nested more than 100 levels deep",
    ),
    "flow-nesting-100000": (  # libyaml's scanner, reading ahead, stops at its own 1,000 levels first
        HEAD + "        x: " + "[" * 100_000 + "]" * 100_000 + "\n",
        ("nested more than 100 levels deep", "not valid YAML: while increasing flow level exceeded"),
    ),
    "block-nesting-200": (
        HEAD + "".join("  " * (i + 4) + "a:\n" for i in range(200)) + "  " * 204 + "a: 1\n",
        "nested more than 100 levels deep",
    ),
    "alias-nesting-past-the-limit": (
        HEAD
        + "        x: &deep "
        + "[" * 60
        + "]" * 60
        + "\n        y: "
        + "[" * 40
        + "*deep"
        + "]" * 40
        + "\n",
        "nested more than 100 levels deep",
    ),
    "150000-values": (HEAD + "        args:\n" + "        - x\n" * 150_000, "more than 100000 values"),
    "200000-documents": ("---\n{}\n" * 200_000, "more than 100000 values"),
    "infinity": (
        HEAD + "  timeouts:\n    deadlineSeconds: .inf\n",
        "error converting YAML to JSON: json: unsupported value: +Inf",
    ),
    "nan-in-a-list": (
        HEAD + "        args: [.nan]\n",
        "error converting YAML to JSON: json: unsupported value: NaN",
    ),
    "not-utf8": (b"\xff\xfe" + HEAD.encode(), "not UTF-8 text (byte 0 cannot be decoded)"),
    "empty": ("", "no objects in it"),
    "only-comments": ("# nothing\n---\n", "no objects in it"),
    "a-list": ("- a\n- b\n", "no objects in it"),
    "not-yaml": ("{ this is: [ not yaml\n", "not valid YAML: while parsing a flow sequence"),
    "larger-than-3-mib": (
        HEAD + "        x: '" + "y" * (3 * 2**20) + "'\n",
        "larger than 3 MiB, the API server's request limit",
    ),
}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_validate(*paths: Path | str) -> subprocess.CompletedProcess[str]:
    """`fleetdispatch validate` in a subprocess held to 256 MiB of address space and 5 seconds."""
    return subprocess.run(
        [sys.executable, "-m", "fleetdispatch.cli", "validate", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        preexec_fn=_limited,
        check=False,
    )


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_a_hostile_file_is_refused_in_one_line_within_bounds(case: str, tmp_path: Path) -> None:
    content, reason = REFUSED[case]
    path = _write(tmp_path / f"{case}.yaml", content)
    result = run_validate(path)
    assert result.returncode == 1, result.stderr
    assert result.stderr == ""
    first, summary = result.stdout.splitlines()
    assert first.startswith(f"{path}: cannot read: "), first
    assert first.removeprefix(f"{path}: cannot read: ").startswith(reason), first
    assert summary == "0 fleet.dispatch.dev manifests checked, 1 invalid"


def test_an_empty_folder_and_a_missing_file_are_each_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_validate(tmp_path / "empty", tmp_path / "missing.yaml")
    assert result.returncode == 1 and result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'empty'}: cannot read: a folder with no .yaml or .yml files in it",
        f"{tmp_path / 'missing.yaml'}: cannot read: [Errno 2] No such file or directory: "
        f"'{tmp_path / 'missing.yaml'}'",
        "0 fleet.dispatch.dev manifests checked, 2 invalid",
    ]


def test_an_endless_device_is_not_read_whole() -> None:
    result = run_validate("/dev/zero")
    assert result.returncode == 1 and result.stderr == ""
    assert (
        result.stdout.splitlines()[0]
        == "/dev/zero: cannot read: larger than 3 MiB, the API server's request limit"
    )


def test_standard_input_is_held_to_the_same_limit() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fleetdispatch.cli", "validate", "-"],
        input=_billion_laughs(),
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        preexec_fn=_limited,
        check=False,
    )
    assert result.returncode == 1 and result.stderr == ""
    assert result.stdout.startswith("-: cannot read: not valid YAML: document contains excessive aliasing")


# Just within every limit, and valid: the limits refuse nothing a manifest needs.
WITHIN: dict[str, str] = {
    "99000-values-in-the-pod-template": HEAD + "        x:\n" + "          - 0\n" * 99_000,
    "nesting-of-100": HEAD + "        x: " + "[" * 94 + "]" * 94 + "\n",
    "aliases-a-manifest-uses": HEAD.replace("image: busybox:1.36", "image: &image busybox:1.36")
    + "      initContainers:\n      - name: init\n        image: *image\n",
    "an-integer-beyond-float64-kept-as-text": HEAD + "        x: " + "9" * 5000 + "\n",
}


@pytest.mark.parametrize("case", WITHIN, ids=str)
def test_a_large_valid_file_is_checked_within_bounds(case: str, tmp_path: Path) -> None:
    path = _write(tmp_path / f"{case}.yaml", WITHIN[case])
    result = run_validate(path)
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"{path}: FleetDispatch 'bad' is valid",
        "1 fleet.dispatch.dev manifests checked, 0 invalid",
    ]
    assert result.returncode == 0


def test_integers_beyond_int64_read_as_the_server_decodes_them() -> None:
    [document] = manifests.documents(
        "a: 9223372036854775807\nb: 9223372036854775808\nc: -9223372036854775809\nd: 1" + "0" * 400
    )
    assert document == {
        "a": 2**63 - 1,
        "b": float(2**63),
        "c": -float(2**63),
        "d": "1" + "0" * 400,
    }


# --------------------------------------------------------------------------------------------------------
# admit never raises
# --------------------------------------------------------------------------------------------------------


def _crd(kind: str = "FleetDispatch") -> dict[str, Any]:
    return manifests.crds()[kind]


def _minimal() -> dict[str, Any]:
    [document] = manifests.documents(HEAD)
    return dict(document)


def _printable(errors: list[FieldError]) -> None:
    for error in errors:
        assert str(error)
    assert format_invalid("FleetDispatch", "bad", errors)


@pytest.mark.parametrize("api_version", [{"a": 1}, ["fleet.dispatch.dev/v1alpha1"], 3, None])
def test_an_api_version_that_is_not_a_string_is_an_error(api_version: Any) -> None:
    obj = {**_minimal(), "apiVersion": api_version}
    _, errors = admit(_crd(), obj)
    assert [error.path for error in errors] == ["apiVersion"]
    _printable(errors)


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


def _shared_bomb() -> Any:
    # What a billion-laughs document becomes once loaded: 9**9 leaves through 9 shared lists.
    value: Any = ["lol"] * 9
    for _ in range(8):
        value = [value] * 9
    return value


def _cycle() -> Any:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    return loop


UNWALKABLE: dict[str, Callable[[], Any]] = {
    "nested-1000-deep": lambda: _nested(1000),
    "nested-101-deep": lambda: _nested(97),
    "a-shared-bomb": _shared_bomb,
    "a-cycle": _cycle,
}


@pytest.mark.parametrize("case", UNWALKABLE, ids=str)
def test_an_object_too_deep_or_too_large_to_walk_is_refused_whole(case: str) -> None:
    obj = _minimal()
    obj["spec"]["template"]["spec"]["x"] = UNWALKABLE[case]()
    _, errors = admit(_crd(), obj)
    [error] = errors
    assert str(error) in (
        "<nil>: Forbidden: nested more than 100 levels deep",
        "<nil>: Forbidden: more than 100000 values",
    )
    assert validate(_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"], obj) == errors
    # And as the stored object of an update.
    _, errors = admit(_crd(), _minimal(), old=obj)
    assert len(errors) == 1 and errors[0].kind == "Forbidden"


def test_an_integer_beyond_int64_reaches_a_cel_rule_as_a_double() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "x-kubernetes-validations": [{"rule": "self.n > 0", "message": "n must be positive"}],
    }
    assert validate(schema, {"n": 2**63}, resource_root=False) == []
    assert validate(schema, {"n": 10**400}, resource_root=False) != []  # a string then, as kubectl sends it
    [error] = validate(schema, {"n": -(2**70)}, resource_root=False)
    assert str(error) == "<nil>: Invalid value: n must be positive"


def test_a_field_error_prints_infinities_and_nan_inside_objects() -> None:
    error = FieldError("spec.x", DUPLICATE, "", {"a": [math.inf, -math.inf, math.nan]})
    assert str(error) == 'spec.x: Duplicate value: {"a":[+Inf,-Inf,NaN]}'
    assert str(FieldError("spec.x", INVALID, "bad", [math.inf])) == "spec.x: Invalid value: [+Inf]: bad"


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64)
    | st.integers(max_value=-(2**63) + 1).map(lambda n: n - 10**30)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["Fail", "Retry", "In", "NotIn", "session", "fleet-supervisor", ""])
)
VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        ("apiVersion",),
        ("kind",),
        ("metadata",),
        ("metadata", "name"),
        ("spec",),
        ("spec", "template"),
        ("spec", "template", "spec"),
        ("spec", "template", "spec", "containers"),
        ("spec", "timeouts"),
        ("spec", "timeouts", "deadlineSeconds"),
        ("spec", "retry"),
        ("spec", "retry", "backoff"),
        ("spec", "failurePolicy"),
        ("spec", "failurePolicy", "rules"),
        ("spec", "activity"),
        ("spec", "suspend"),
        ("spec", "quotaPool"),
        ("status",),
        ("spec", "maxConcurrent"),
    ]
)


def _graft(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = obj
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value
    return obj


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["FleetDispatch", "QuotaPool"]),
    grafts=st.lists(st.tuples(FIELDS, VALUES), min_size=1, max_size=4),
    update=st.booleans(),
)
def test_admit_never_raises_and_its_errors_always_print(
    kind: str, grafts: list[tuple[tuple[str, ...], Any]], update: bool
) -> None:
    obj = _minimal()
    obj["kind"] = kind
    for path, value in grafts:
        _graft(obj, path, value)
    old = _minimal() if update else None
    if old is not None:
        old["kind"] = kind
    stored, errors = admit(_crd(kind), obj, old)
    assert isinstance(stored, dict)
    _printable(errors)
    verdict = manifests.check(obj, old)
    assert verdict.explain() is not None
