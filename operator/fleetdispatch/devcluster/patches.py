"""The patch types of the Kubernetes API, applied to plain JSON objects.

* ``application/merge-patch+json``: RFC 7386 (``null`` removes a key, objects merge, the rest replaces).
* ``application/json-patch+json``: RFC 6902 through ``jsonpatch``; a failed ``test`` or a bad path is an
  error the server answers with a 422.
* ``application/strategic-merge-patch+json``: approximated. Lists of objects that carry a ``name`` (the
  merge key of containers, volumes, env, ports...) merge item by item on it, other lists replace, and the
  ``$patch``/``$setElementOrder``/``$retainKeys``/``$deleteFromPrimitiveList`` directives are dropped. This
  is what ``kubectl apply``, ``label`` and ``annotate`` send for built-in kinds; custom resources always get
  a merge patch.
* ``application/apply-patch+yaml`` (server-side apply) is not emulated: the server answers 415.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

MERGE = "application/merge-patch+json"
JSON = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
SUPPORTED = (MERGE, JSON, STRATEGIC)


class PatchError(ValueError):
    """A patch that cannot be applied (the server's 422) or is malformed (its 400)."""

    def __init__(self, message: str, *, malformed: bool = False) -> None:
        super().__init__(message)
        self.malformed = malformed


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: the result of merging ``patch`` into ``target`` (neither is modified)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _is_directive(key: str) -> bool:
    return key.startswith("$")


def _merge_named_lists(target: list[Any], patch: list[Any]) -> list[Any]:
    merged = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict):
            continue
        if item.get("$patch") == "delete":
            merged = [old for old in merged if old.get("name") != item.get("name")]
            continue
        for index, old in enumerate(merged):
            if old.get("name") == item.get("name"):
                merged[index] = strategic_merge_patch(old, item)
                break
        else:
            merged.append(strategic_merge_patch({}, item))
    return merged


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """The approximation of a strategic merge patch described in the module docstring."""
    if isinstance(patch, list):
        named = all(isinstance(item, dict) and "name" in item for item in patch)
        if named and isinstance(target, list) and all(isinstance(item, dict) for item in target):
            return _merge_named_lists(target, patch)
        return [strategic_merge_patch(None, item) for item in patch]
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not _is_directive(k)}
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if _is_directive(key):
            continue
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = strategic_merge_patch(merged.get(key), value)
    return merged


def apply(content_type: str, target: dict[str, Any], patch: Any) -> Any:
    """Apply a patch of ``content_type`` to ``target``; raises :class:`PatchError`."""
    if content_type == JSON:
        if not isinstance(patch, list):
            raise PatchError("a JSON patch must be a list of operations", malformed=True)
        try:
            return jsonpatch.apply_patch(target, patch, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError) as error:
            raise PatchError(
                f"the server rejected our request due to an error in our request: {error}"
            ) from None
    if not isinstance(patch, dict):
        raise PatchError("a merge patch must be a JSON object", malformed=True)
    if content_type == STRATEGIC:
        return strategic_merge_patch(target, patch)
    return merge_patch(target, patch)
