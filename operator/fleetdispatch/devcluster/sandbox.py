"""One container of the node agent, in Linux namespaces: ``python -m fleetdispatch.devcluster.sandbox SPEC``.

The node agent (root) starts this launcher once per container, as a container runtime starts its shim:

1. a **mount namespace** of the container's own: a new root on a tmpfs holding the host's top-level
   folders (recursive bind mounts: images are not pulled, a container runs the machine's programs), a
   fresh ``/proc`` of the container's PID namespace, a private tmpfs ``/run`` (so ``/var/run/...`` is the
   container's), and every ``volumeMount`` at its real ``mountPath``, with the container's own
   termination message file bind-mounted at ``terminationMessagePath`` as the kubelet does. A mount point
   that does not exist is made in the new root's tmpfs, or, under a host folder, in an overlay whose
   upper layer is the container's (the host is never written). ``/root`` is rebuilt world-traversable
   (its entries are bound one by one), so a non-root container can run the machine's Python from it.
2. a **PID namespace**: the pod's (``pidNamespace``: the pause process of a ``shareProcessNamespace`` pod,
   entered with ``setns``) or a new one of its own (the container's process is its PID 1).
3. then, in the forked child: ``chroot`` into the new root, ``chdir``, the supplementary groups, GID and
   UID the pod asks for, ``PR_SET_NO_NEW_PRIVS`` unless escalation is allowed, capabilities dropped from
   the bounding set (and from every set for a root container that drops them), and ``execve``.

The launcher stays as the container's parent: it forwards TERM and INT to the container's process, writes
``ready.json`` (the child's PID and the mount namespace, by which the agent finds every process of the
container), and when the child exits KILLs whatever the container left in its mount namespace (a
daemonised child included), writes ``exit.json`` (``code``, ``signal``) and exits with the code.

A launch that fails before ``execve`` (no such program, a mount refused) writes ``exit.json`` with
``error`` and code 128, which the agent reports as the kubelet reports a ``StartError``.

``--pause`` is the pod's pause process: PID 1 of a new PID namespace that reaps orphans until TERM.

Standard library only; Linux only; needs root (CAP_SYS_ADMIN) for namespaces and mounts.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_SET_PDEATHSIG = 1
CAP_LAST = 63
START_ERROR = 128
# Host top-level entries never bound into a container's root: they are the container's own.
_OWN = {"proc", "run", "root", "dev", "lost+found", "old_root"}
# The device nodes a container runtime gives a container (bound from the host's), in a /dev of its own.
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class LaunchError(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(code)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(path: str, kind: int) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, kind), f"setns {path}")
    finally:
        os.close(fd)


def mount_namespace(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def hold_namespace(pid: int, namespace: str) -> int | None:
    """An open descriptor of process ``pid``'s mount namespace, if that is ``namespace``; None if it is gone.

    A namespace's identifier is an inode number, which the kernel gives to a new namespace once the old one
    is freed: finding processes by the identifier of a namespace that has ended could find (and kill) a
    later container's. While this descriptor is open the namespace exists, so the identifier stays its own.
    """
    try:
        descriptor = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if f"mnt:[{os.fstat(descriptor).st_ino}]" != namespace:
        os.close(descriptor)
        return None
    return descriptor


def processes_in(namespace: str, *, exclude: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """Host PIDs whose mount namespace is ``namespace`` (every process of one container)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/mnt") == namespace:
                found.append(int(entry))
        except OSError:
            continue
    return found


def kill_namespace(namespace: str, *, host: str, exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """KILL every process in a container's mount namespace, until none is left; how many were signalled.

    Refuses ``host``, the mount namespace the node agent runs in: a container's is never that. The caller
    must be in ``namespace`` or hold it (:func:`hold_namespace`), so that the identifier is still its own.
    """
    if namespace == host:
        raise ValueError(f"refusing to kill the processes of the host's mount namespace {host}")
    killed = 0
    for _ in range(50):  # a fork racing the scan: scan again until nothing is found
        pids = processes_in(namespace, exclude=exclude)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


# ---- the container's root -----------------------------------------------------------------------------


class Root:
    """A new root on a tmpfs at ``path``, holding the host's folders, for one container."""

    def __init__(self, path: Path, scratch: Path) -> None:
        self.path = path
        self.scratch = scratch  # the container's own folder on the host: overlay layers
        self._overlays = 0
        # What is mounted where (container paths): True for our own (a tmpfs, a volume, an overlay), in which
        # a missing mount point may be made; False for a host folder, which is never written.
        self._mounts: dict[str, bool] = {}

    def build(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        mount("tmpfs", str(self.path), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        self._mounts["/"] = True
        for entry in sorted(os.listdir("/")):
            host = Path("/") / entry
            inside = self.path / entry
            if entry in _OWN:
                continue
            if host.is_symlink():
                inside.symlink_to(os.readlink(host))
            elif host.is_dir():
                inside.mkdir()
                mount(str(host), str(inside), None, MS_BIND | MS_REC)
                self._mounts[f"/{entry}"] = False
            elif host.is_file():
                inside.touch()
                mount(str(host), str(inside), None, MS_BIND)
        run = self.path / "run"
        run.mkdir()
        mount("tmpfs", str(run), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        self._mounts["/run"] = True
        self._devices()
        home = self.path / "root"
        home.mkdir(mode=0o755)
        home.chmod(0o755)
        if Path("/root").is_dir():
            for entry in sorted(os.listdir("/root")):
                host = Path("/root") / entry
                if host.is_symlink():
                    (home / entry).symlink_to(os.readlink(host))
                elif host.is_dir():
                    (home / entry).mkdir()
                    mount(str(host), str(home / entry), None, MS_BIND | MS_REC)
                    self._mounts[f"/root/{entry}"] = False
                elif host.is_file():
                    (home / entry).touch()
                    mount(str(host), str(home / entry), None, MS_BIND)
        (self.path / "proc").mkdir()

    def _devices(self) -> None:
        """A /dev of the container's own, as runc makes it: a tmpfs with the usual device nodes, a private
        devpts, /dev/shm and /dev/mqueue, so /dev/termination-log is the container's and the host's is
        never written."""
        dev = self.path / "dev"
        dev.mkdir()
        mount("tmpfs", str(dev), "tmpfs", MS_NOSUID, "mode=0755,size=65536k")
        self._mounts["/dev"] = True
        for name in _DEVICES:
            if Path(f"/dev/{name}").exists():
                (dev / name).touch()
                mount(f"/dev/{name}", str(dev / name), None, MS_BIND)
        for name, target in (
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ):
            (dev / name).symlink_to(target)
        (dev / "pts").mkdir()
        mount(
            "devpts", str(dev / "pts"), "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
        )
        (dev / "shm").mkdir()
        mount("shm", str(dev / "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
        (dev / "mqueue").mkdir()
        # Without a new IPC namespace the kernel may refuse this; a container rarely needs it.
        with contextlib.suppress(LaunchError):
            mount("mqueue", str(dev / "mqueue"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    def resolve(self, container_path: str) -> Path:
        """Where a container path is under the new root, following symlinks inside it."""
        parts = [p for p in container_path.split("/") if p]
        current = "/"
        for _ in range(40):
            if not parts:
                break
            part = parts.pop(0)
            if part == "..":
                current = os.path.dirname(current.rstrip("/")) or "/"
                continue
            if part == ".":
                continue
            candidate = os.path.join(current, part)
            here = self.path / candidate.lstrip("/")
            if here.is_symlink():
                target = os.readlink(here)
                base = "/" if target.startswith("/") else current
                parts = [p for p in os.path.join(base, target).split("/") if p] + parts
                current = "/"
                continue
            current = candidate
        return self.path / current.lstrip("/")

    def _writable_ancestor(self, inside: Path) -> None:
        """Make the missing ``inside`` creatable: on a tmpfs of ours as it is, under a host folder by an
        overlay of that folder whose upper layer is the container's own."""
        existing = inside
        while not existing.exists():
            existing = existing.parent
        relative = "/" + str(existing.relative_to(self.path)).removeprefix(".")
        relative = "/" if relative in ("/", "/.") else relative.rstrip("/")
        under = max(
            (m for m in self._mounts if m in ("/", relative) or relative.startswith(m + "/")), key=len
        )
        if self._mounts[under]:
            return
        self._overlays += 1
        layer = self.scratch / "overlay" / str(self._overlays)
        (layer / "upper").mkdir(parents=True, exist_ok=True)
        (layer / "work").mkdir(parents=True, exist_ok=True)
        lower = str(existing)
        mount(
            "overlay",
            str(existing),
            "overlay",
            0,
            f"lowerdir={lower},upperdir={layer / 'upper'},workdir={layer / 'work'}",
        )
        self._mounts[relative] = True

    def bind(self, source: str, target: str, *, read_only: bool, is_file: bool) -> None:
        inside = self.resolve(target)
        if not inside.exists() and not inside.is_symlink():
            self._writable_ancestor(inside)
            if is_file:
                inside.parent.mkdir(parents=True, exist_ok=True)
                inside.touch()
            else:
                inside.mkdir(parents=True, exist_ok=True)
        mount(source, str(inside), None, MS_BIND | MS_REC)
        self._mounts["/" + str(inside.relative_to(self.path))] = True
        if read_only:
            mount(None, str(inside), None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)

    def proc(self) -> None:
        mount("proc", str(self.path / "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


# ---- identity and privileges ----------------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities(drop: list[str], keep_root: bool) -> None:
    """Drop capabilities from the bounding set (``ALL`` or by name); for root, from every set too."""
    names = [d.upper().removeprefix("CAP_") for d in drop]
    every = "ALL" in names
    numbers = set(range(CAP_LAST + 1)) if every else {_CAPABILITIES[n] for n in names if n in _CAPABILITIES}
    for number in sorted(numbers):
        result = _libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0)
        if result != 0 and ctypes.get_errno() != errno.EINVAL:  # EINVAL: beyond the kernel's last one
            _check(result, f"drop capability {number}")
    if keep_root and numbers:
        header = _CapHeader(0x20080522, 0)
        data = (_CapData * 2)()
        _check(_libc.syscall(125, ctypes.byref(header), data), "capget")  # SYS_capget
        for word in range(2):
            mask = 0
            for number in numbers:
                if number // 32 == word:
                    mask |= 1 << (number % 32)
            data[word].effective &= ~mask & 0xFFFFFFFF
            data[word].permitted &= ~mask & 0xFFFFFFFF
            data[word].inheritable &= ~mask & 0xFFFFFFFF
        _check(_libc.syscall(126, ctypes.byref(header), data), "capset")  # SYS_capset


_CAPABILITIES = {
    name: number
    for number, name in enumerate(
        [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ]
    )
}


# ---- the launcher -----------------------------------------------------------------------------------------


def _write_json(path: Path, value: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(value), encoding="utf-8")
    temporary.replace(path)


def _child(spec: dict[str, Any], root: Root) -> None:
    """In the container's PID namespace: finish the root, become the container's user, exec."""
    root.proc()
    os.chroot(str(root.path))
    os.chdir(spec.get("workingDir") or "/")
    security = spec.get("security") or {}
    drop_capabilities(list(security.get("drop") or []), keep_root=int(security.get("uid", 0)) == 0)
    if not security.get("allowPrivilegeEscalation", True):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no new privileges")
    groups = [int(g) for g in security.get("groups") or []]
    gid = int(security.get("gid", 0))
    os.setgroups(sorted({gid, *groups}))
    os.setgid(gid)
    os.setuid(int(security.get("uid", 0)))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    argv = [str(a) for a in spec["argv"]]
    os.execvpe(argv[0], argv, {str(k): str(v) for k, v in spec["env"].items()})


def launch(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    folder = spec_path.parent
    exit_file, ready_file = folder / "exit.json", folder / "ready.json"
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    errors_read, errors_write = os.pipe()
    host = mount_namespace("self")
    try:
        unshare(CLONE_NEWNS)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        root = Root(folder / "root", folder)
        root.build()
        for item in spec.get("mounts") or []:
            root.bind(
                item["source"],
                item["target"],
                read_only=bool(item.get("readOnly")),
                is_file=bool(item.get("file")),
            )
        if spec.get("pidNamespace"):
            setns(spec["pidNamespace"], CLONE_NEWPID)
        else:
            unshare(CLONE_NEWPID)
    except (LaunchError, OSError) as error:
        _write_json(exit_file, {"code": START_ERROR, "error": f"failed to create the container: {error}"})
        return START_ERROR
    pid = os.fork()
    if pid == 0:
        os.close(errors_read)
        try:
            os.set_inheritable(errors_write, False)
            _child(spec, root)
        except BaseException as error:  # before exec: say why, never run the launcher's code on
            message = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            argv0 = spec["argv"][0] if spec.get("argv") else "?"
            os.write(errors_write, f"exec: {argv0!r}: {message}".encode()[:2000])
        os._exit(START_ERROR)
    os.close(errors_write)
    namespace = mount_namespace("self")
    _write_json(ready_file, {"pid": pid, "mountNamespace": namespace})

    def forward(number: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, number)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    start_error = b""
    while True:
        chunk = os.read(errors_read, 4096)
        if not chunk:
            break
        start_error += chunk
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    # What the container leaves behind dies with its main process, as in a container.
    kill_namespace(namespace, host=host, exclude={os.getpid()})
    if start_error:
        _write_json(exit_file, {"code": START_ERROR, "error": start_error.decode(errors="replace")})
        return START_ERROR
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        _write_json(exit_file, {"code": 128 + number, "signal": number})
        return 128 + number
    code = os.WEXITSTATUS(status)
    _write_json(exit_file, {"code": code})
    return code


def pause(ready_file: Path) -> int:
    """The pod's pause process: PID 1 of a new PID namespace, reaping orphans until TERM."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid:
        _write_json(ready_file, {"pid": pid, "pidNamespace": f"/proc/{pid}/ns/pid"})
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
        while True:
            try:
                os.waitpid(pid, 0)
                return 0
            except InterruptedError:
                continue
            except ChildProcessError:
                return 0
    # PID 1: ignores what it does not handle, as a pause container; ends on TERM with the pod.
    stop = False

    def end(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # so that pause() returns when an orphan exits
    while not stop:
        try:
            os.wait()
        except ChildProcessError:
            signal.pause()
        except InterruptedError:
            continue
    os._exit(0)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--pause":
        return pause(Path(argv[1]))
    if len(argv) != 1:
        print(
            "usage: python -m fleetdispatch.devcluster.sandbox SPEC.json | --pause READY.json",
            file=sys.stderr,
        )
        return 2
    return launch(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
