"""The operator process: the thin shell that watches the cluster and carries out `core`'s decisions.

Importing the package registers the kopf handlers, so `kopf run --standalone -A -m fleetdispatch.controller`
runs the operator as `fleetdispatch operator` does.
"""

from fleetdispatch.controller import handlers as handlers
