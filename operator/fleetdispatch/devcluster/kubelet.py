"""The dev cluster's ``containers`` runtime: a real kubelet with containerd and runc, pods in containers.

:class:`ContainersNode` is the node of ``fleetdispatch dev --runtime containers``: containerd (Debian's 1.6,
its CRI plugin, runc, the overlayfs snapshotter), its state, socket and configuration in the node's folder;
the images ``make image`` saved (``.tools/images/*.tar``: ``localhost/fleet-dispatch:dev``, the examples'
session image also tagged ``docker.io/library/busybox:1.36``, and the pause image, containerd's
``sandbox_image``) imported into its ``k8s.io`` namespace; and the kubelet of the control plane's release
(``.tools/kubelet/current``, built by ``scripts/install-tools.sh kubelet``) registering the Node
``fleetdispatch-dev`` with the node's certificate. Nothing is pulled: an image that was not imported fails to
start (``ErrImagePull``), as on an air-gapped node.

**Pod networking**: the CNI bridge plugin (Debian's containernetworking-plugins) on a bridge of the node's own
(``fdev<N>``, ``10.244.<N>.0/24``, ``host-local`` addresses), so every pod has its own network namespace and
address, and ports such as the chart's 8080 and 8081 do not collide. No kube-proxy runs: the one Service a pod
needs, ``kubernetes`` (``10.96.0.1:443``, what the kubelet puts in ``KUBERNETES_SERVICE_HOST``), is a DNAT
rule of the node's own from the bridge to the API server on loopback (with ``route_localnet`` on that bridge
alone). Other Services have no cluster IP routing, and there is no cluster DNS.

**cgroups**: the cgroupfs driver under a cgroup root of the node's own (``/fleetdispatch-dev-<N>`` in every
mounted controller), weighing several CPUs' worth of ``cpu.shares`` against the host's processes, so that
a busy host does not starve the pods (a container without requests gets ``cpu.shares`` 2). On cgroup v1
the kubelet 1.37 starts only with ``failCgroupV1: false`` (it warns that v1 is deprecated); containerd 1.6
has no CRI ``RuntimeConfig``, so the kubelet takes the driver from its own configuration (it says it will
stop accepting that in 1.38). The machine refuses to lower ``oom_score_adj`` (the pause's -998), so
containerd runs with ``restrict_oom_score_adj``.

:func:`unavailable` says, in one line, what this machine lacks for it (and what was checked); ``fleetdispatch
dev`` then runs the ``local`` node agent instead. :meth:`ContainersNode.stop` ends the kubelet, every
container (``ctr``), containerd, the bridge and its DNAT rule, unmounts what was mounted under the node's
folder and removes the node's cgroups and network namespaces: nothing is left.

Not done: kube-proxy and Services, cluster DNS, image pulls, user namespaces, systemd cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from fleetdispatch.devcluster.controlplane import (
    NODE_NAME,
    Component,
    ControlPlane,
    ControlPlaneError,
    free_port,
    tools_folder,
)

CNI_PLUGINS = Path("/usr/lib/cni")
CNI_NEEDED = ("bridge", "host-local", "loopback")
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables")
# The cgroup v1 controllers the kubelet's container manager requires (cpuset, cpu, memory, pids at least).
CGROUP_V1_NEEDED = ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IMAGE_ARCHIVES = ("pause", "session", "fleet-dispatch")
PAUSE_IMAGE = "localhost/fleet-dispatch-pause:dev"
SERVICE_HOST = "10.96.0.1"
NAMESPACE = "k8s.io"  # containerd's namespace for the CRI's containers and images
NETNS_FOLDER = Path("/var/run/netns")
RUN_CONTAINERD = Path("/run/containerd")
NODE_CPU_SHARES_PER_CPU = 4096  # the node's cgroup root: four busy host processes' weight per CPU


def images_folder() -> Path:
    """Where ``make image`` saves the images (``scripts/images.sh``)."""
    return tools_folder() / "images"


def kubelet_binary() -> Path:
    return tools_folder() / "kubelet" / "current" / "kubelet"


def unavailable() -> str | None:
    """None when this machine can run the ``containers`` runtime, else one line: what is missing, and all
    that was checked."""
    checked = (
        "root, containerd/runc/ctr/iptables, CNI bridge/host-local/loopback, the kubelet, cgroups, images"
    )
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("not root")
    missing = [name for name in CONTAINERD_BINARIES if shutil.which(name) is None]
    if missing:
        problems.append(f"no {', '.join(missing)} on PATH (scripts/install-tools.sh containers)")
    cni = [name for name in CNI_NEEDED if not os.access(CNI_PLUGINS / name, os.X_OK)]
    if cni:
        problems.append(f"no CNI plugin {', '.join(cni)} in {CNI_PLUGINS}")
    if not os.access(kubelet_binary(), os.X_OK):
        problems.append(f"no kubelet at {kubelet_binary()} (scripts/install-tools.sh kubelet)")
    cgroups = cgroup_problem()
    if cgroups:
        problems.append(cgroups)
    archives = [name for name in IMAGE_ARCHIVES if not (images_folder() / f"{name}.tar").is_file()]
    if archives:
        problems.append(f"no image archive {', '.join(archives)} in {images_folder()} (make image)")
    if not problems:
        return None
    return f"runtime containers unavailable: {'; '.join(problems)} (checked: {checked})"


def cgroup_version() -> int:
    return 2 if (CGROUP_ROOT / "cgroup.controllers").exists() else 1


def cgroup_problem() -> str | None:
    if cgroup_version() == 2:
        controllers = (CGROUP_ROOT / "cgroup.controllers").read_text(encoding="utf-8").split()
        lacking = [name for name in ("cpu", "memory", "pids", "cpuset") if name not in controllers]
        return f"cgroup v2 without the {', '.join(lacking)} controllers" if lacking else None
    mounted = _cgroup_v1_mounts()
    lacking = [name for name in CGROUP_V1_NEEDED if name not in mounted]
    if lacking:
        return f"cgroup v1 without the {', '.join(lacking)} hierarchies mounted under {CGROUP_ROOT}"
    return None


def _cgroup_v1_mounts() -> dict[str, Path]:
    """Each mounted cgroup v1 controller (and ``name=systemd``) and where its hierarchy is mounted."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/mounts").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] == "cgroup":
            for option in fields[3].split(","):
                found.setdefault(option, Path(fields[1]))
    return found


def mounts_under(folder: Path) -> list[Path]:
    """Mount points at or under ``folder`` (this process's mount namespace), deepest first."""
    points = []
    prefix = str(folder).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == str(folder) or point.startswith(prefix):
            points.append(Path(point))
    return sorted(set(points), key=lambda path: len(path.parts), reverse=True)


class ContainersNode:
    """containerd + the kubelet for one dev cluster: :meth:`start`, :meth:`failed`, :meth:`stop`."""

    def __init__(
        self, plane: ControlPlane, folder: Path, announce: Callable[[str], None] | None = None
    ) -> None:
        self.plane = plane
        self.folder = folder
        # What could not be cleaned up is said (standard error by default), never dropped.
        self._announce = announce or (lambda line: print(line, file=sys.stderr, flush=True))
        # A bridge, subnet and cgroup root per node, from its process ID: two dev clusters at once get
        # different ones (unless their IDs are 250 apart: then the second's `ip link add` fails and says so).
        self.index = os.getpid() % 250 + 1
        self.bridge = f"fdev{self.index}"
        self.subnet = f"10.244.{self.index}.0/24"
        self.gateway = f"10.244.{self.index}.1"
        self.cgroup_name = f"fleetdispatch-dev-{self.index}"
        self.socket = folder / "containerd" / "containerd.sock"
        self.containerd: Component | None = None
        self.kubelet: Component | None = None
        self._nat_rule: list[str] | None = None
        self._netns_before: set[str] = set()
        self._run_containerd_existed = True
        self.timings: dict[str, float] = {}

    # ---- start ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        problem = unavailable()
        if problem is not None:
            raise ControlPlaneError(problem)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._netns_before = _netns_names()
        # containerd 1.6 keeps its shims' sockets in /run/containerd/s whatever its state folder is.
        self._run_containerd_existed = RUN_CONTAINERD.exists()
        try:
            self._start_containerd(timeout)
            self._import_images()
            self._network()
            self._cgroups()
            self._start_kubelet(timeout)
        except BaseException:
            self.stop()
            raise

    def _start_containerd(self, timeout: float) -> None:
        started = time.monotonic()
        root = self.folder / "containerd"
        (root / "root").mkdir(parents=True, exist_ok=True)
        (self.folder / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        config = root / "config.toml"
        config.write_text(self._containerd_config(), encoding="utf-8")
        self.containerd = Component(
            "containerd", ["containerd", "--config", str(config)], self.folder / "containerd.log"
        )
        self.containerd.start()
        deadline = time.monotonic() + timeout
        while self._ctr("version", check=False).returncode != 0:
            if self.containerd.exited() is not None:
                raise ControlPlaneError(
                    f"containerd exited with {self.containerd.exited()}:\n{self.containerd.tail(1500)}"
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"containerd not serving after {timeout} s:\n{self.containerd.tail(1500)}"
                )
            time.sleep(0.1)
        self.timings["containerd"] = time.monotonic() - started

    def _containerd_config(self) -> str:
        root = self.folder / "containerd"
        cri = {
            "sandbox_image": PAUSE_IMAGE,
            "enable_selinux": False,
            # This machine refuses to lower oom_score_adj (the pause's -998): not below containerd's own.
            "restrict_oom_score_adj": True,
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
            "containerd": {
                "snapshotter": "overlayfs",
                "default_runtime_name": "runc",
                "runtimes": {
                    "runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        "options": {
                            "SystemdCgroup": False,
                            "BinaryName": shutil.which("runc") or "runc",
                            "Root": str(root / "runc"),
                        },
                    }
                },
            },
            "cni": {"bin_dir": str(CNI_PLUGINS), "conf_dir": str(self.folder / "cni" / "net.d")},
        }
        lines = [
            "version = 2",
            f'root = "{root / "root"}"',
            f'state = "{root / "state"}"',
            'disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",'
            ' "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]',
            "[grpc]",
            f'  address = "{self.socket}"',
            "[ttrpc]",
            f'  address = "{root / "ttrpc.sock"}"',
            "[debug]",
            f'  address = "{root / "debug.sock"}"',
            "[metrics]",
            '  address = ""',
            *_toml_tables('plugins."io.containerd.grpc.v1.cri"', cri),
        ]
        return "\n".join(lines) + "\n"

    def _ctr(
        self, *args: str, check: bool = True, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", NAMESPACE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"ctr {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
        return result

    def _import_images(self) -> None:
        started = time.monotonic()
        for name in IMAGE_ARCHIVES:
            # --no-unpack would leave the CRI without a snapshot; the default unpacks into overlayfs.
            self._ctr("images", "import", str(images_folder() / f"{name}.tar"))
        self.timings["images"] = time.monotonic() - started

    def images(self) -> list[str]:
        """The image names containerd has in the CRI's namespace."""
        return self._ctr("images", "list", "--quiet").stdout.split()

    def _network(self) -> None:
        """The bridge (made here, so that ``route_localnet`` can be set before a pod uses it), the CNI
        configuration on it, and the DNAT rule giving pods the ``kubernetes`` Service."""
        network = {
            "cniVersion": "1.0.0",
            "name": "fleetdispatch-dev",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.folder / "cni" / "ipam"),
                    },
                }
            ],
        }
        (self.folder / "cni" / "net.d" / "10-fleetdispatch-dev.conflist").write_text(
            json.dumps(network, indent=2), encoding="utf-8"
        )
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet").write_text("1", encoding="utf-8")
        port = self.plane.url.rsplit(":", 1)[-1]
        rule = [
            "PREROUTING", "-i", self.bridge, "-d", SERVICE_HOST, "-p", "tcp", "--dport", "443",
            "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}",
            "-m", "comment", "--comment", f"fleetdispatch dev {self.bridge}: the kubernetes Service",
        ]  # fmt: skip
        _run("iptables", "-t", "nat", "-A", *rule)
        self._nat_rule = rule

    def _cgroups(self) -> None:
        for path in self._cgroup_folders():
            path.mkdir(exist_ok=True)
        # Every host process in the root cgroup weighs 1024 against the node's whole tree: on a busy host
        # the pods (a session without requests gets cpu.shares 2) were starved, and a busy session missed
        # its deadline. A real node's pods hold nearly all of the machine's weight; here, several CPUs' worth.
        shares = _cgroup_v1_mounts().get("cpu")
        if cgroup_version() == 1 and shares is not None:
            weight = min(NODE_CPU_SHARES_PER_CPU * (os.cpu_count() or 1), 262144)
            (shares / self.cgroup_name / "cpu.shares").write_text(str(weight), encoding="utf-8")

    def _cgroup_folders(self) -> list[Path]:
        if cgroup_version() == 2:
            return [CGROUP_ROOT / self.cgroup_name]
        # Every hierarchy the kubelet and runc use (name=systemd too: runc joins it).
        return sorted({mount / self.cgroup_name for mount in _cgroup_v1_mounts().values()})

    def _start_kubelet(self, timeout: float) -> None:
        started = time.monotonic()
        client, _ = self.plane.node_credentials()
        # The Node's InternalIP is the bridge's address (the kubelet refuses a loopback node IP): the API
        # server reaches the kubelet there, for `kubectl logs`, with a serving certificate naming it.
        serving = self.plane.pki.issue(
            f"kubelet-containers-serving-{self.index}",
            f"system:node:{NODE_NAME}",
            server_names=(self.gateway, "127.0.0.1", "localhost", NODE_NAME),
            client=False,
        )
        kubeconfig = self.plane.kubeconfig_file("kubelet", client, f"system:node:{NODE_NAME}")
        root = self.folder / "kubelet"
        root.mkdir(parents=True, exist_ok=True)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Kubernetes 1.35+ refuses cgroup v1 unless told otherwise; these machines have only v1.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup_name}",
            "address": self.gateway,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(serving.certificate),
            "tlsPrivateKeyFile": str(serving.key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.plane.ca)},
            },
            # Only the API server holds a certificate of the cluster's CA that the kubelet accepts.
            "authorization": {"mode": "AlwaysAllow"},
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "podLogsDir": str(self.folder / "pod-logs"),
            "failSwapOn": False,
            "resolvConf": "/etc/resolv.conf",
            "clusterDomain": "cluster.local",
            # The images are imported, never pulled again: the kubelet must not collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "serializeImagePulls": False,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
        }
        config_file = self.folder / "kubelet.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.kubelet = Component(
            "kubelet",
            [
                str(kubelet_binary()),
                f"--config={config_file}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={root / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.gateway}",
                "--v=1",
            ],
            self.folder / "kubelet.log",
        )
        self.kubelet.start()
        deadline = time.monotonic() + timeout
        while not self._node_ready():
            if self.kubelet.exited() is not None:
                raise ControlPlaneError(
                    f"the kubelet exited with {self.kubelet.exited()}:\n{self.kubelet.tail(3000)}"
                )
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"the Node is not Ready after {timeout} s:\n{self.kubelet.tail(3000)}"
                )
            time.sleep(0.25)
        self.timings["kubelet"] = time.monotonic() - started

    def _node_ready(self) -> bool:
        status, node = self.plane.request("GET", f"/api/v1/nodes/{NODE_NAME}")
        if status != 200:
            return False
        conditions = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []}
        return conditions.get("Ready") == "True"

    # ---- running ----------------------------------------------------------------------------------------

    def failed(self) -> str | None:
        for component in (self.containerd, self.kubelet):
            if component is not None and component.exited() is not None:
                return f"{component.name} exited with {component.exited()}:\n{component.tail(1500)}"
        return None

    # ---- stop -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Everything :meth:`start` made, in reverse; each step runs even when one before it failed."""
        steps: list[Callable[[], None]] = [
            lambda: self.kubelet.stop(10) if self.kubelet else None,
            self._remove_containers,
            lambda: self.containerd.stop(10) if self.containerd else None,
            self._unmount,
            self._remove_network,
            self._remove_cgroups,
        ]
        errors = []
        for step in steps:
            try:
                step()
            except (OSError, subprocess.SubprocessError, ControlPlaneError) as error:
                errors.append(str(error))
        self.kubelet = self.containerd = None
        if errors:
            self._announce(f"fleetdispatch dev: containers node cleanup: {'; '.join(errors)}")

    def _remove_containers(self) -> None:
        """Every task KILLed and deleted (their shims exit with them), then every container removed."""
        if self.containerd is None or self.containerd.exited() is not None:
            return
        tasks = self._ctr("tasks", "list", "--quiet", check=False).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        deadline = time.monotonic() + 15
        for task in tasks:
            while self._ctr("tasks", "delete", task, check=False).returncode != 0:
                if (
                    time.monotonic() > deadline
                    or task not in self._ctr("tasks", "list", "-q", check=False).stdout.split()
                ):
                    break
                time.sleep(0.2)
        for container in self._ctr("containers", "list", "--quiet", check=False).stdout.split():
            self._ctr("containers", "delete", container, check=False)

    def _unmount(self) -> None:
        """What is still mounted under the node's folder (the kubelet's volumes, a sandbox's /dev/shm), and
        the network namespaces the node's sandboxes left in /var/run/netns."""
        for point in mounts_under(self.folder):
            subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)
        if not self._run_containerd_existed and RUN_CONTAINERD.is_dir():
            for dirpath, _, _ in sorted(os.walk(RUN_CONTAINERD), key=lambda entry: -len(entry[0])):
                with contextlib.suppress(OSError):
                    Path(dirpath).rmdir()  # only what is empty: a shim's socket left means a shim still runs
        for name in sorted(_netns_names() - self._netns_before):
            if name.startswith("cni-"):
                path = NETNS_FOLDER / name
                subprocess.run(["umount", "--lazy", str(path)], capture_output=True, check=False)
                with contextlib.suppress(OSError):
                    path.unlink()

    def _remove_network(self) -> None:
        if self._nat_rule is not None:
            _run("iptables", "-t", "nat", "-D", *self._nat_rule)
            self._nat_rule = None
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run("ip", "link", "delete", self.bridge)

    def _remove_cgroups(self) -> None:
        """The node's cgroup trees, deepest first (empty once their processes are gone)."""
        for top in self._cgroup_folders():
            if not top.exists():
                continue
            folders = [Path(dirpath) for dirpath, _, _ in os.walk(top)]
            for folder in sorted(folders, key=lambda path: len(path.parts), reverse=True):
                for attempt in range(50):
                    try:
                        folder.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        if attempt == 49:
                            raise
                        time.sleep(0.1)


def _netns_names() -> set[str]:
    try:
        return {entry.name for entry in NETNS_FOLDER.iterdir()}
    except OSError:
        return set()


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"{' '.join(argv)}: {result.stderr.strip()}")


def _toml_tables(name: str, table: dict[str, object]) -> list[str]:
    """``table`` as TOML: its plain keys under ``[name]``, then each nested table as ``[name.key]``."""
    lines = [f"[{name}]"]
    nested: list[tuple[str, dict[str, object]]] = []
    for key, value in table.items():
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            lines.append(f"  {key} = {_toml_value(value)}")
    for key, value in nested:
        lines.extend(_toml_tables(f"{name}.{key}", value))
    return lines


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))
