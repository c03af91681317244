"""fleet-dispatch: run long headless sessions as supervised Kubernetes pods.

The package is layered so that imports point one way: the pure core (`api` models, and later the lifecycle,
classification, deadline policy and pod builder) knows nothing of kopf, psutil or HTTP; the shells (the
operator, the supervisor, the command line) import the core, never the other way round.
"""

__version__ = "0.1.0"
