"""The dev cluster: a Kubernetes API over real HTTP and a local pod runtime, in one process.

There is no Kubernetes cluster on a laptop or in CI, yet fleet-dispatch must be tried and tested against
one. The dev cluster is the smallest thing that serves: :mod:`.store` holds objects with the API server's
semantics, :mod:`.server` serves them over HTTP to kopf, the ``kubernetes`` client and ``kubectl``, and
:mod:`.runtime` runs the pods created in it as local processes, the way a kubelet would. State lives in
memory only. It is a development and test tool, not a cluster: see each module for what it leaves out.
"""
