"""Tests for fleetdispatch.validation.formats: string formats, and integer formats that bound a value."""

from __future__ import annotations

import pytest

from schemas import CEL_SKIPPED, errors_of, spec_of


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        ("date-time", "2024-05-01T10:00:00Z", "2024-05-01 10:00"),
        ("date-time", "2024-05-01T10:00:00.123+02:00", "2024-05-01T25:00:00Z"),
        ("uuid", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "not-a-uuid"),
        ("ipv4", "10.0.0.1", "10.0.0.256"),
        ("ipv6", "fe80::1", "10.0.0.1"),
        ("cidr", "10.0.0.0/8", "10.0.0.0"),
        ("byte", "aGVsbG8=", "not base64!"),
        ("duration", "1h30m", "soon"),
        ("hostname", "node-1.example.com", "-bad-.com"),
    ],
)
def test_formats(fmt: str, good: str, bad: str) -> None:
    schema = spec_of(x={"type": "string", "format": fmt})
    assert errors_of(schema, {"x": good}) == []
    assert errors_of(schema, {"x": bad})[0] == (
        f'spec.x: Invalid value: "{bad}": spec.x in body must be of type {fmt}: "{bad}"'
    )


def test_unsupported_formats_are_ignored() -> None:
    schema = spec_of(x={"type": "integer", "format": "uint32"}, y={"type": "string", "format": "made-up"})
    assert errors_of(schema, {"x": 2**40, "y": "anything"}) == []


def test_an_integer_must_fit_its_format_and_have_no_fraction() -> None:
    # kube-openapi's range check is a plain error, which apiextensions reports at the nil path.
    schema = spec_of(x={"type": "integer", "format": "int32"}, y={"type": "integer"})
    assert errors_of(schema, {"x": 2**31 - 1, "y": 60.0}) == []
    assert errors_of(schema, {"x": 2**31}) == [
        '<nil>: Invalid value: "": Checked value must be of type integer with format int32 in spec.x'
    ]
    assert errors_of(schema, {"y": 1.5}) == [
        'spec.y: Invalid value: "number": spec.y in body must be of type integer: "number"',
        '<nil>: Invalid value: "": Checked value must be of type integer (default format) in spec.y',
        CEL_SKIPPED,
    ]
