"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The binaries are the upstream ones, built from pinned Go modules by ``make tools``
(``scripts/install-tools.sh``) into ``.tools/controlplane/current``, or taken from ``KUBEBUILDER_ASSETS``
(the envtest convention). :class:`ControlPlane` starts them on loopback ports it picks, with what a
default cluster has: client-certificate authentication (a CA of its own, :mod:`.pki`), the Node and RBAC
authorizers, service account tokens, the default admission plugins plus NodeRestriction, and an audit log
of every request (the tests' request log). It writes a kubeconfig per identity: ``admin`` (system:masters),
the controller manager, the scheduler and the node agent. A component that exits is reported by
:meth:`ControlPlane.failed`; :meth:`ControlPlane.stop` ends them all (TERM, then KILL after a grace).
:meth:`ControlPlane.stop_component` and :meth:`ControlPlane.start_component` stop one and start it again
with the same ports and data folder (an outage, as the chaos bench makes: the cluster comes back as it
was and its clients reconnect).

Nothing here runs pods: the node agent (:mod:`.nodeagent`) is the kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetdispatch.devcluster.pki import Authority, KeyPair

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
ASSETS_VARIABLE = "KUBEBUILDER_ASSETS"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
NODE_NAME = "fleetdispatch-dev"
NODE_USER = f"system:node:{NODE_NAME}"
_PR_SET_PDEATHSIG = 1
_STOP_GRACE_SECONDS = 5.0

# Every request at the Metadata level (who, what, verb, status; no bodies): the tests' request log, what
# tells that the operator watches, and what a user inspects to see which calls the operator makes. Left
# out: the cluster's components and their leases (frequent, say nothing), the admin's reads (the tests poll).
# Kept of the components: the Job controller, the operator's anchor in bench/operator_dispatch.py.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {
            "level": "None",
            "users": ["system:kube-scheduler", "system:kube-controller-manager", "system:apiserver"],
        },
        {"level": "Metadata", "users": ["system:serviceaccount:kube-system:job-controller"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system", "system:nodes"]},
        {
            "level": "None",
            "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
            # The components' and the node's; a supervisor's heartbeat in a dispatch namespace is kept.
            "namespaces": ["kube-system", "kube-node-lease"],
        },
        {"level": "None", "users": ["fleetdispatch-admin"], "verbs": ["get", "list", "watch"]},
        {"level": "Metadata"},
    ],
}


class ControlPlaneError(RuntimeError):
    """The control plane cannot be started (missing binaries, a component that exits)."""


def tools_folder() -> Path:
    """The repository's ``.tools/`` (the package is installed from its source tree: ``pip install -e``)."""
    return Path(__file__).resolve().parents[3] / ".tools"


def binaries() -> dict[str, Path]:
    """Where each control plane binary is: ``KUBEBUILDER_ASSETS`` first, then ``.tools/controlplane``."""
    assets = os.environ.get(ASSETS_VARIABLE)
    folder = Path(assets) if assets else tools_folder() / "controlplane" / "current"
    found = {name: folder / name for name in BINARIES}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        where = f"{ASSETS_VARIABLE}={assets}" if assets else str(folder)
        raise ControlPlaneError(
            f"no {', '.join(missing)} in {where}: run `make tools` (builds them with Go 1.26 or newer), "
            f"or set {ASSETS_VARIABLE} to a folder holding {', '.join(BINARIES)}"
        )
    return found


def free_port() -> int:
    """A loopback port free now (taken by the caller at once; a lost race is retried by the caller)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def kubeconfig(
    server: str,
    ca: Path,
    user: str,
    *,
    pair: KeyPair | None = None,
    token: str | None = None,
    namespace: str = "default",
    inline: bool = False,
) -> str:
    """A kubeconfig for one identity (a client certificate or a bearer token) at ``server``."""
    credentials: dict[str, Any] = {}
    if pair is not None and inline:
        credentials["client-certificate-data"] = _b64(pair.certificate.read_bytes())
        credentials["client-key-data"] = _b64(pair.key.read_bytes())
    elif pair is not None:
        credentials["client-certificate"] = str(pair.certificate)
        credentials["client-key"] = str(pair.key)
    if token is not None:
        credentials["token"] = token
    cluster: dict[str, Any] = {"server": server}
    if inline:
        cluster["certificate-authority-data"] = _b64(ca.read_bytes())
    else:
        cluster["certificate-authority"] = str(ca)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fleetdispatch-dev", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [
            {
                "name": "fleetdispatch-dev",
                "context": {"cluster": "fleetdispatch-dev", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "fleetdispatch-dev",
    }
    return yaml.safe_dump(config, sort_keys=False)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _die_with_parent() -> None:
    """In the child before exec: KILLed if the process that started it dies (no orphaned etcd)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
                start_new_session=True,
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, size: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = _STOP_GRACE_SECONDS) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler in ``workdir`` (created if needed)."""

    workdir: Path
    port: int = 0
    data_dir: Path | None = None
    audit: bool = True
    components: list[Component] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = Authority(self.workdir / "pki")
        self.ca = self.pki.certificate_path
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.audit_log = self.logs / "audit.log"
        self.url = ""
        self.etcd_url = ""
        self.stopped: set[str] = set()  # components stopped on purpose (an outage), to be started again
        self.notes: list[str] = []  # what a user should know about how it started (a port taken)
        self.admin = self.pki.issue("admin", "fleetdispatch-admin", organizations=("system:masters",))

    # ---- identities -------------------------------------------------------------------------------------

    def kubeconfig_file(self, name: str, pair: KeyPair, user: str) -> Path:
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(kubeconfig(self.url, self.ca, user, pair=pair), encoding="utf-8")
        return path

    def admin_kubeconfig(self, namespace: str = "default") -> str:
        """The kubeconfig ``fleetdispatch dev`` writes: cluster admin, credentials inline (one file)."""
        return kubeconfig(
            self.url, self.ca, "fleetdispatch-admin", pair=self.admin, namespace=namespace, inline=True
        )

    def node_credentials(self) -> tuple[KeyPair, KeyPair]:
        """The node agent's client certificate (system:node:NAME) and its kubelet serving certificate."""
        client = self.pki.issue("node", NODE_USER, organizations=("system:nodes",))
        serving = self.pki.issue(
            "kubelet-serving", NODE_USER, server_names=("127.0.0.1", "localhost", NODE_NAME), client=False
        )
        return client, serving

    # ---- lifecycle --------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        found = binaries()
        persistent = self.data_dir is not None
        data = self.data_dir or self.workdir / "etcd"
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o700)
        etcd_port, peer_port = free_port(), free_port()
        etcd = Component(
            "etcd",
            [
                str(found["etcd"]),
                "--name=fleetdispatch-dev",
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=fleetdispatch-dev=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                # A throwaway cluster needs no fsync; a kept one (--data-dir) does.
                *([] if persistent else ["--unsafe-no-fsync"]),
                "--quota-backend-bytes=4294967296",
            ],
            self.logs / "etcd.log",
        )
        self.components = [etcd]
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        etcd.start()
        self._wait(self._etcd_ready, timeout, etcd)

        serving = self.pki.issue(
            "apiserver",
            "kube-apiserver",
            server_names=(
                "127.0.0.1",
                "localhost",
                "10.96.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            client=False,
        )
        kubelet_client = self.pki.issue(
            "apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=("system:masters",)
        )
        signing_key, verifying_key = self.pki.signing_key("service-account")
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY), encoding="utf-8")
        wanted = self.port
        if wanted and not _port_free(wanted):
            self.notes.append(f"port {wanted} is in use: the API server takes another")
            wanted = 0
        for attempt in range(3):  # a port taken between picking and binding: pick another
            port = wanted or free_port()
            self.url = f"https://127.0.0.1:{port}"
            apiserver = Component(
                "kube-apiserver",
                [
                    str(found["kube-apiserver"]),
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    # The kubernetes Service would need a non-loopback address: the node agent gives pods
                    # the API server's loopback address directly instead, as KUBERNETES_SERVICE_HOST.
                    "--endpoint-reconciler-type=none",
                    f"--secure-port={port}",
                    f"--tls-cert-file={serving.certificate}",
                    f"--tls-private-key-file={serving.key}",
                    f"--client-ca-file={self.ca}",
                    "--authorization-mode=Node,RBAC",
                    # Beside the defaults: a node touches only its own objects; an owner reference that
                    # blocks its owner's deletion needs update on the owner's finalizers (the chart grants it)
                    "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                    f"--service-account-key-file={verifying_key}",
                    f"--service-account-signing-key-file={signing_key}",
                    f"--kubelet-client-certificate={kubelet_client.certificate}",
                    f"--kubelet-client-key={kubelet_client.key}",
                    f"--kubelet-certificate-authority={self.ca}",
                    "--kubelet-preferred-address-types=InternalIP",
                    "--profiling=false",
                    "--allow-privileged=false",
                    *(
                        [
                            f"--audit-policy-file={policy}",
                            f"--audit-log-path={self.audit_log}",
                            "--audit-log-format=json",
                            "--audit-log-mode=blocking",
                            "--audit-log-maxsize=0",
                        ]
                        if self.audit
                        else []
                    ),
                ],
                self.logs / "kube-apiserver.log",
            )
            apiserver.start()
            try:
                self._wait(self._api_ready, timeout, apiserver)
            except ControlPlaneError:
                if attempt < 2 and not wanted and "address already in use" in apiserver.tail():
                    continue
                raise
            break
        self.components.append(apiserver)

        kcm_pair = self.pki.issue("controller-manager", "system:kube-controller-manager")
        scheduler_pair = self.pki.issue("scheduler", "system:kube-scheduler")
        kcm_config = self.kubeconfig_file("controller-manager", kcm_pair, "system:kube-controller-manager")
        scheduler_config = self.kubeconfig_file("scheduler", scheduler_pair, "system:kube-scheduler")
        for component in (
            Component(
                "kube-controller-manager",
                [
                    str(found["kube-controller-manager"]),
                    f"--kubeconfig={kcm_config}",
                    f"--authentication-kubeconfig={kcm_config}",
                    f"--authorization-kubeconfig={kcm_config}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--leader-elect=false",
                    f"--service-account-private-key-file={signing_key}",
                    f"--root-ca-file={self.ca}",
                    "--use-service-account-credentials=true",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--controllers=*,-bootstrap-signer-controller,-token-cleaner-controller",
                    # A dev cluster's controllers react at once (the defaults batch for production).
                    "--concurrent-gc-syncs=20",
                    "--concurrent-job-syncs=10",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--profiling=false",
                ],
                self.logs / "kube-controller-manager.log",
            ),
            Component(
                "kube-scheduler",
                [
                    str(found["kube-scheduler"]),
                    f"--kubeconfig={scheduler_config}",
                    f"--authentication-kubeconfig={scheduler_config}",
                    f"--authorization-kubeconfig={scheduler_config}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                    "--leader-elect=false",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--profiling=false",
                ],
                self.logs / "kube-scheduler.log",
            ),
        ):
            component.start()
            self.components.append(component)

    def _etcd_ready(self) -> bool:
        return _http_ok(f"{self.etcd_url}/health")

    def _api_ready(self) -> bool:
        try:
            status, _ = self.request("GET", "/readyz")
        except OSError:
            return False
        return status == 200

    def _wait(self, ready: Any, timeout: float, component: Component) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            code = component.exited()
            if code is not None:
                raise ControlPlaneError(f"{component.name} exited with {code}:\n{component.tail()}")
            if time.monotonic() > deadline:
                component.stop()
                raise ControlPlaneError(f"{component.name} not ready after {timeout} s:\n{component.tail()}")
            time.sleep(0.1)

    def failed(self) -> Component | None:
        """The first component that has exited, if any (one stopped by :meth:`stop_component` has not)."""
        return next(
            (c for c in self.components if c.exited() is not None and c.name not in self.stopped), None
        )

    def component(self, name: str) -> Component:
        found = next((c for c in self.components if c.name == name), None)
        if found is None:
            raise ControlPlaneError(f"no component {name} (there are {[c.name for c in self.components]})")
        return found

    def stop_component(self, name: str, grace: float = _STOP_GRACE_SECONDS) -> None:
        """Stop one component (TERM, then KILL after ``grace``), as an outage: :meth:`failed` does not
        report it, and :meth:`start_component` brings it back as it was."""
        self.stopped.add(name)
        self.component(name).stop(grace)

    def start_component(self, name: str, timeout: float = 120.0) -> None:
        """Start a component :meth:`stop_component` stopped, with its first command line: the same ports,
        data folder, certificates and log files (appended to), so its clients reconnect to it unchanged;
        returns once it is ready (etcd healthy, the API server ready), others at once."""
        component = self.component(name)
        if component.exited() is None:
            raise ControlPlaneError(f"{name} is running")
        component.start()
        ready = {"etcd": self._etcd_ready, "kube-apiserver": self._api_ready}.get(name)
        if ready is not None:
            self._wait(ready, timeout, component)
        self.stopped.discard(name)

    def restart_component(
        self, name: str, down: float = 0.0, grace: float = _STOP_GRACE_SECONDS, timeout: float = 120.0
    ) -> float:
        """Stop one component (KILLed after ``grace``: 0 is a crash), wait ``down`` seconds, start it
        again; returns the seconds it was not serving."""
        began = time.monotonic()
        self.stop_component(name, grace)
        time.sleep(down)
        self.start_component(name, timeout)
        return time.monotonic() - began

    def stop(self) -> None:
        """Every component, the last started first (the API server before etcd)."""
        for component in reversed(self.components):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                component.stop()

    # ---- the API, for setup --------------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.admin.certificate), str(self.admin.key))
        return context

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """One request as cluster admin; the status code and the decoded body (``{}`` when not JSON)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        try:
            with urllib.request.urlopen(request, context=self.ssl_context(), timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            decoded = json.loads(raw) if raw else {}
        except ValueError:
            decoded = {}
        return status, decoded if isinstance(decoded, dict) else {"items": decoded}

    def apply(self, manifests: Sequence[Mapping[str, Any]], manager: str = "fleetdispatch-dev") -> None:
        """Server-side apply, as cluster admin (``kubectl apply --server-side``)."""
        for manifest in manifests:
            path = resource_path(manifest)
            status, body = self.request(
                "PATCH",
                f"{path}?fieldManager={manager}&force=true",
                manifest,
                content_type="application/apply-patch+yaml",
            )
            if status >= 300:
                raise ControlPlaneError(f"applying {path}: {status} {body.get('message', body)}")


# Resources the dev cluster applies for itself, by kind: (API path prefix, plural, namespaced).
_RESOURCES = {
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Secret": ("/api/v1", "secrets", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "CustomResourceDefinition": ("/apis/apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "StorageClass": ("/apis/storage.k8s.io/v1", "storageclasses", False),
}


def resource_path(manifest: Mapping[str, Any]) -> str:
    kind = manifest["kind"]
    if kind not in _RESOURCES:
        raise ControlPlaneError(f"the dev cluster does not apply {kind} itself")
    prefix, plural, namespaced = _RESOURCES[kind]
    metadata = manifest["metadata"]
    namespace = f"/namespaces/{metadata.get('namespace', 'default')}" if namespaced else ""
    return f"{prefix}{namespace}/{plural}/{metadata['name']}"


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def temporary_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="fleetdispatch-dev-")


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


async def watch_components(plane: ControlPlane, stop: asyncio.Event, interval: float = 0.5) -> Component:
    """Until a component exits (returned) or ``stop`` is set (returns the sentinel ``None``-less wait)."""
    while not stop.is_set():
        failed = plane.failed()
        if failed is not None:
            return failed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    raise asyncio.CancelledError
