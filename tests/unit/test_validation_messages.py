"""Tests for fleetdispatch.validation.messages: an error as the API server prints it, a list of them as
kubectl and the Status message render it."""

from __future__ import annotations

from fleetdispatch.validation.messages import (
    DUPLICATE,
    INVALID,
    REQUIRED,
    UNKNOWN_FIELD,
    FieldError,
    format_invalid,
    invalid_status_message,
)
from schemas import GROUP


def test_field_error_str_for_each_kind() -> None:
    assert str(FieldError("spec.x", REQUIRED, "")) == "spec.x: Required value"
    assert (
        str(FieldError("spec.x", "Forbidden", "not allowed", "ignored")) == "spec.x: Forbidden: not allowed"
    )
    assert str(FieldError("spec.x", DUPLICATE, "", "a\tb")) == 'spec.x: Duplicate value: "a\\tb"'
    assert str(FieldError("spec.x", INVALID, "bad", True)) == "spec.x: Invalid value: true: bad"
    assert str(FieldError("spec.x", INVALID, "bad", [1, "a", None])) == (
        'spec.x: Invalid value: [1,"a",null]: bad'
    )
    assert str(FieldError("spec.foo", UNKNOWN_FIELD, "")) == 'unknown field "spec.foo"'


ERRORS = [
    FieldError(
        "spec.timeouts.deadlineSeconds",
        INVALID,
        "spec.timeouts.deadlineSeconds in body should be greater than or equal to 1",
        0,
    ),
    FieldError("spec.template", REQUIRED, ""),
]


def test_format_invalid_one_error() -> None:
    assert format_invalid("FleetDispatch", "demo", ERRORS[1:]) == (
        'The FleetDispatch "demo" is invalid: spec.template: Required value'
    )


def test_format_invalid_several_errors() -> None:
    assert format_invalid("FleetDispatch", "demo", ERRORS) == (
        'The FleetDispatch "demo" is invalid: \n'
        "* spec.timeouts.deadlineSeconds: Invalid value: 0: spec.timeouts.deadlineSeconds in body should be "
        "greater than or equal to 1\n"
        "* spec.template: Required value"
    )


def test_invalid_status_message() -> None:
    qualified = f"FleetDispatch.{GROUP}"
    assert invalid_status_message(qualified, "demo", ERRORS[1:]) == (
        f'{qualified} "demo" is invalid: spec.template: Required value'
    )
    assert invalid_status_message(qualified, "demo", [*ERRORS, ERRORS[1]]) == (
        f'{qualified} "demo" is invalid: [spec.timeouts.deadlineSeconds: Invalid value: 0: '
        "spec.timeouts.deadlineSeconds in body should be greater than or equal to 1, "
        "spec.template: Required value]"
    )
