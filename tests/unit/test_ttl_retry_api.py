"""The API of clean-up and retry in place, as `fleetdispatch validate` and the operator's models read it:
`spec.ttlSecondsAfterFinished` may change after creation, a FleetCampaign's template may not set it, and
the status keeps the retry value handled. (The refused values are in the tests/invalid/ corpus.)"""

from __future__ import annotations

import copy
from typing import Any

from fleetdispatch.api import models
from fleetdispatch.api.names import API_VERSION, RETRY_ANNOTATION
from fleetdispatch.controller.cache import DispatchCache
from fleetdispatch.validation import manifests

SPEC: dict[str, Any] = {"template": {"spec": {"containers": [{"name": "session", "image": "busybox"}]}}}


def dispatch(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "FleetDispatch",
        "metadata": {"name": "job"},
        "spec": {**copy.deepcopy(SPEC), **spec},
    }


def test_the_ttl_may_be_set_changed_and_removed_after_creation() -> None:
    stored = dispatch()
    for update in (dispatch(ttlSecondsAfterFinished=0), dispatch(ttlSecondsAfterFinished=86400)):
        verdict = manifests.check(update, old=stored)
        assert verdict.valid, verdict.explain()
        assert manifests.check(stored, old=update).valid


def test_the_ttl_is_optional_and_read_as_given() -> None:
    assert models.parse_spec(SPEC).ttl_seconds_after_finished is None
    assert models.parse_spec({**SPEC, "ttlSecondsAfterFinished": 0}).ttl_seconds_after_finished == 0


def test_a_campaign_template_may_not_set_a_ttl() -> None:
    campaign = {
        "apiVersion": API_VERSION,
        "kind": "FleetCampaign",
        "metadata": {"name": "many"},
        "spec": {"template": {"spec": {**SPEC, "ttlSecondsAfterFinished": 60}}, "items": [{"name": "a"}]},
    }
    verdict = manifests.check(campaign)
    assert [str(error) for error in verdict.api_errors] == [
        "spec.template.spec.ttlSecondsAfterFinished: Forbidden: not in a campaign: the campaign counts its "
        "dispatches and would create a deleted one again; deleting the campaign deletes them"
    ]
    assert verdict.model_error == (
        "spec.template.spec: ttlSecondsAfterFinished: not in a campaign: the campaign counts its dispatches "
        "and would create a deleted one again; deleting the campaign deletes them"
    )
    del campaign["spec"]["template"]["spec"]["ttlSecondsAfterFinished"]
    assert manifests.check(campaign).valid


def test_a_retry_annotation_is_any_annotation_to_the_api_and_its_value_is_kept_in_the_status() -> None:
    annotated = dispatch()
    annotated["metadata"]["annotations"] = {RETRY_ANNOTATION: "2026-12-01T18:00:00.000001Z"}
    assert manifests.check(annotated).valid
    status = models.FleetDispatchStatus.model_validate({"retryHandled": "2026-12-01T18:00:00.000001Z"})
    assert status.retry_handled == "2026-12-01T18:00:00.000001Z"
    assert status.model_dump(by_alias=True, exclude_none=True)["retryHandled"] == status.retry_handled


def test_the_controllers_cache_keeps_the_retry_value_and_follows_its_changes() -> None:
    cache = DispatchCache()
    body = dispatch()
    body["metadata"] |= {"namespace": "team", "uid": "u1", "generation": 1, "resourceVersion": "5"}
    assert cache.remember(("team", "job"), body)
    cached = cache.get(("team", "job"))
    assert cached is not None and cached.retry_request is None
    # An annotation changes the object, not its generation: it is still taken.
    body["metadata"] |= {"resourceVersion": "6", "annotations": {RETRY_ANNOTATION: "1", "other": "x"}}
    assert cache.remember(("team", "job"), body)
    cached = cache.get(("team", "job"))
    assert cached is not None and cached.retry_request == "1"
