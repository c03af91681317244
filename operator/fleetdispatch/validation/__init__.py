"""Offline validation of manifests (`fleetdispatch validate`): what the API server would default, prune and
refuse, without a cluster. Development tooling: the operator never imports it."""
