"""fleet-dispatch: run long headless sessions as supervised Kubernetes pods.

The packages say where their code runs, and imports point one way (import-linter checks it in `make lint`):

- `session`: in the session pod (the supervisor sidecar, the quota guard, the files they share): the
  standard library only, and of the rest only the API's names.
- `api`: the API (the CRDs, the models the operator reads specs with, the operator's own settings).
- `core`: the operator's decisions, pure functions over plain data (lifecycle, classification, backoff,
  conditions, pools, the pod builder and pod views): no I/O, no kopf.
- `client`: the Kubernetes API client (credentials, resource paths, requests and watches).
- `controller`: the operator process, the thin shell around `core` (kopf handlers, work queue, cache, pool
  bookkeeping, metrics).
- `validation`: offline admission of manifests (`fleetdispatch validate`): schema, defaults, pruning, CEL.
- `devcluster`: development and test tooling (a real control plane, a node agent, `fleetdispatch dev`).
- `cli`: the `fleetdispatch` command, which imports each room only for the subcommand that needs it.
"""

__version__ = "0.1.0"
