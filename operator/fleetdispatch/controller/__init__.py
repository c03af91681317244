"""The operator process: the thin shell that watches the cluster and carries out `core`'s decisions.

- `handlers`: the kopf wiring (start-up, login, indices, watch events, the liveness probe, `run`);
- `reconciler`: the reconcile step (watch events in, `core.lifecycle.reconcile`, its decision carried out);
- `workqueue`: the work queue, its per-key backoff, wake-ups, the workers and their progress;
- `cache`: what is kept of the dispatches (shared parsed specs) and of their pods;
- `pools`: QuotaPool membership and the pools' debounced status writes;
- `metrics`: the Prometheus metrics and `/metrics`.

Importing the package registers the kopf handlers, so `kopf run --standalone -A -m fleetdispatch.controller`
runs the operator as `fleetdispatch operator` does.
"""

from fleetdispatch.controller import handlers as handlers
