"""Offline validation of manifests (`fleetdispatch validate`): what the API server would default, prune and
refuse, without a cluster. Development tooling: the operator never imports it.

manifests (the packaged CRDs, and a manifest judged both as the server and as the operator would) runs
admission (`admit`, `validate`: the server's phases in its order), whose phases are pruning, defaults,
objectmeta (type and ObjectMeta), schema (OpenAPI value validations, with formats), listtypes (set and map
lists) and cel (CEL rules, with the functions of cel_library); messages has the server's wording of every
error, values the reading of objects and schemas as plain data."""
