"""The dev cluster: a real Kubernetes control plane, a node agent and the operator, on this machine.

:mod:`.controlplane` runs the upstream etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(built from pinned modules by ``make tools``) on loopback, with certificates from :mod:`.pki`;
:mod:`.nodeagent` is the kubelet, running the pods bound to its node in Linux namespaces (:mod:`.sandbox`);
:mod:`.stack` puts them together with the CRDs and the operator's identity (``fleetdispatch dev``, the test
fixtures). It is a development and test tool: see each module for what it leaves out.
"""
