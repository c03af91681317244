"""The session holds no cluster credential, tried from inside (issue [incluster], item 2).

A dispatch runs, in the pod the real operator builds with the Lease heartbeat on (so the pod runs as the
heartbeat's ServiceAccount, the chart's `templates/heartbeat.yaml`, and its supervisor holds a projected
token of it), a session that is a real script on the node agent's `local` runtime: `credential_probe`
below, whose source is the session's command. It tries every way it has to a credential and reports each
try and its result as JSON on standard output (`kubectl logs`):

- service-account tokens under its own mounts: a walk of every volume in its mount table (the mount
  points under /var/run, where Kubernetes and the operator mount tokens; the test checks that every
  volume of the session is there), and the paths where tokens are put;
- every other process it sees in the pod's shared PID namespace, the supervisor among them:
  `/proc/PID/environ`, `/proc/PID/mem`, the process's files through `/proc/PID/root` (its mount
  namespace: the supervisor's token at `/var/run/fleet-token/token`), `/proc/PID/cwd` and `/proc/PID/fd`;
  the supervisor marks itself non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`), so the kernel must refuse them
  all, although both run as the same UID;
- the API server (`KUBERNETES_SERVICE_HOST`/`PORT`, as every pod gets them) with no token and with every
  token it found.

The tries are made once the supervisor has run SETTLED_SECONDS (its age, read from `/proc/PID/stat`), and
every try must fail: no token found, the kernel's EACCES for the supervisor, 401 or 403 from the API
server. Not earlier, because the pod's start leaves a window, a known gap left open for [incluster]: the
supervisor calls prctl once Python and its modules are loaded (about 0.9 s after its exec on the loaded
dev machine), and the kubelet starts the session once the sidecar's process has started, so a session
that looks at once may find the supervisor still dumpable (measured: a try at 0.94 s read its
`/proc/PID/environ`; its token through `/proc/PID/root` is as reachable then). Closing it needs the
session held back until the supervisor is non-dumpable (a startupProbe on the sidecar, which the dev
node does not run yet); a prctl first thing would only narrow it.

So that none of this can pass by a broken probe, the same script proves in the same pod that the same
tries succeed where they should (its own child process, dumpable and of the same UID: its environment,
memory and files are read), and a sibling test runs it where a token is reachable (a template that asks
for the account's token with `automountServiceAccountToken: true`, which turns the heartbeat off for that
pod): the walk finds the token and the API server accepts it. The heartbeat's account may touch only Leases:
`kubectl auth can-i --as` that account, over the verbs of pods, secrets, leases and more.

Not here: the dev node's image, which is the host's own folders bound into every container (the
machine's programs; a real image holds no pod's credential, and the host's files are not the session's
to read), so the walk leaves out the mount table's entries outside /var/run; and Lease names (per [live],
only the supervisors' own Leases; the Role grants Leases by verb, not by name).
"""

from __future__ import annotations

import inspect
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetdispatch.api import names
from fleetdispatch.core import podspec
from fleetdispatch.devcluster.stack import BackgroundCluster
from kubectl import ROOT, Kubectl, needs_kubectl, run_tool
from operators import Namespace, OperatorProcess, dispatch_spec

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "fleet-dispatch"
ACCOUNT = "fleet-dispatch-supervisor"
CANARY = "canary-of-the-probe"
# How long the supervisor has run before the probe tries: past its start, when it marks itself non-dumpable.
SETTLED_SECONDS = 3.0
AUTOMOUNTED = "/var/run/secrets/kubernetes.io/serviceaccount"
AUTOMOUNTED_TOKEN = f"{AUTOMOUNTED}/token"
# What Linux answers a process that may not look into another's memory, environment or files.
EACCES = 13

pytestmark = [
    pytest.mark.skipif(not HELM.exists(), reason="helm not installed: run `make tools`"),
    needs_kubectl,
]


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    # As the chart runs it with heartbeat.enabled (templates/deployment.yaml).
    return (f"--heartbeat-service-account={ACCOUNT}",)


def credential_probe() -> None:
    """Runs INSIDE the session container (its source is the command): every try, and the control tries,
    reported as one JSON object on standard output. Standard library only; no dollar-parenthesis
    anywhere (Kubernetes would expand it in a command)."""
    import http.client
    import json
    import os
    import re
    import ssl
    import subprocess
    import sys
    import time

    jwt = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
    token_paths = (
        "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "/run/secrets/kubernetes.io/serviceaccount/token",
        "/var/run/fleet-token/token",
    )
    found: dict[str, str] = {}

    def failure(error: OSError) -> dict[str, object]:
        return {"ok": False, "error": type(error).__name__, "errno": error.errno}

    def read_token(path: str) -> dict[str, object]:
        """One file read; a JWT in it is a token found."""
        try:
            with open(path, "rb") as file:
                text = file.read(65536).decode(errors="replace")
        except OSError as error:
            return failure(error)
        match = jwt.search(text)
        if match:
            found[path] = match.group(0)
        return {"ok": True, "token": bool(match)}

    def mounts(pid: str) -> list[str]:
        """A process's volumes: the mount points of its mount table under /run, which is /var/run, where
        Kubernetes mounts service-account tokens and the operator the supervisor's. The rest of the table
        is the image (on the dev node the host's folders, bound in: no pod's credential is there, and they
        are not the session's to read) and the kernel's filesystems."""
        points = []
        with open(f"/proc/{pid}/mountinfo") as file:
            for line in file:
                point = line.split()[4]
                if point.startswith("/run/"):
                    points.append(point)
        return points

    def walk(top: str, limit: int = 2000) -> dict[str, object]:
        """Every file under `top` (or `top`, a file) read as a token candidate, at most `limit`; what
        could not be listed or read is counted, with the reasons."""
        files, tokens, errors = 0, [], list[object]()
        paths: list[str] = []
        if os.path.isfile(top):
            paths = [top]
        else:
            for folder, _dirs, entries in os.walk(top, onerror=lambda error: errors.append(error.errno)):
                paths += [os.path.join(folder, entry) for entry in entries]
        for path in paths[:limit]:
            files += 1
            result = read_token(path)
            if result.get("token"):
                tokens.append(path)
            if not result["ok"]:
                errors.append(result["errno"])
        return {"ok": bool(tokens), "files": files, "errors": errors, "tokens": tokens}

    def read_bytes(path: str, size: int = 4096) -> dict[str, object]:
        try:
            with open(path, "rb") as file:
                data = file.read(size)
        except OSError as error:
            return failure(error)
        return {
            "ok": True,
            "bytes": len(data),
            "canary": CANARY.encode() in data,
            "token": bool(jwt.search(data.decode(errors="replace"))),
        }

    def read_memory(pid: str) -> dict[str, object]:
        """`/proc/PID/mem` opened (what the kernel guards), then its first readable mapping read."""
        try:
            memory = open(f"/proc/{pid}/mem", "rb")  # noqa: SIM115 - closed below
        except OSError as error:
            return failure(error)
        with memory:
            try:
                with open(f"/proc/{pid}/maps") as maps:
                    regions = [line.split()[0].split("-") for line in maps if line.split()[1].startswith("r")]
                memory.seek(int(regions[0][0], 16))
                return {"ok": True, "bytes": len(memory.read(64))}
            except (OSError, IndexError, ValueError) as error:
                return {"ok": True, "bytes": 0, "read": repr(error)}

    def listing(path: str) -> dict[str, object]:
        try:
            return {"ok": True, "entries": sorted(os.listdir(path))[:20]}
        except OSError as error:
            return failure(error)

    def process_tries(pid: str) -> dict[str, object]:
        """Every way into another process, each its own result."""
        tries: dict[str, object] = {
            "environ": read_bytes(f"/proc/{pid}/environ", 65536),
            "mem": read_memory(pid),
            "root": listing(f"/proc/{pid}/root/"),
            "cwd": listing(f"/proc/{pid}/cwd/"),
            "fd": listing(f"/proc/{pid}/fd/"),
        }
        # Where its tokens would be: the known paths, and every volume of its mount table (which the
        # kernel shows to anyone in the PID namespace), through its root.
        try:
            volumes = mounts(pid)
        except OSError as error:
            volumes, tries["mountinfo"] = [], failure(error)
        tries["volumes"] = volumes
        for path in token_paths:
            tries[f"root{path}"] = read_token(f"/proc/{pid}/root{path}")
        for point in volumes:
            tries[f"root{point}"] = walk(f"/proc/{pid}/root{point}")
        return tries

    def age(pid: str) -> float | None:
        """How long the process has run, in seconds (its `stat` is not guarded either)."""
        try:
            with open(f"/proc/{pid}/stat") as file:
                started = int(file.read().rsplit(")", 1)[1].split()[19]) / os.sysconf("SC_CLK_TCK")
            with open("/proc/uptime") as file:
                return round(float(file.read().split()[0]) - started, 2)
        except (OSError, ValueError, IndexError):
            return None

    def others() -> dict[str, str]:
        """Every other PID in the namespace, with its command line (which is not guarded)."""
        seen = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as file:
                        seen[entry] = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
        return seen

    def call(token: str | None) -> dict[str, object]:
        """The API server, with `token` or none: who it takes us for, and three reads."""
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], int(os.environ["KUBERNETES_SERVICE_PORT"])
        namespace = os.environ["FLEET_DISPATCH"].split("/")[0]
        # The session has no CA; an intruder would not check the certificate either.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        requests = {
            "selfsubjectreview": (
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            ),
            "secrets": ("GET", f"/api/v1/namespaces/{namespace}/secrets", None),
            "pods": ("GET", f"/api/v1/namespaces/{namespace}/pods", None),
            "lease": (
                "GET",
                f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{os.environ['HOSTNAME']}",
                None,
            ),
        }
        results: dict[str, object] = {}
        for name, (method, path, body) in requests.items():
            headers = {"Accept": "application/json", "Content-Type": "application/json"}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
            try:
                connection.request(method, path, None if body is None else json.dumps(body), headers)
                response = connection.getresponse()
                payload = response.read()
            except OSError as error:
                results[name] = failure(error)
                continue
            finally:
                connection.close()
            result: dict[str, object] = {"ok": 200 <= response.status < 300, "status": response.status}
            if name == "selfsubjectreview" and result["ok"]:
                result["user"] = json.loads(payload)["status"]["userInfo"]["username"]
            results[name] = result
        return results

    def round_of_tries(control: str) -> dict[str, object]:
        found.clear()
        volumes = mounts("self")
        own: dict[str, object] = {"mounts": volumes}
        for point in volumes:
            own[f"walk{point}"] = walk(point)
        for path in token_paths:
            own[f"file{path}"] = read_token(path)
        processes = others()
        return {
            "own": own,
            "processes": {
                pid: {"cmdline": line, "age": age(pid), **process_tries(pid)}
                for pid, line in processes.items()
            },
            "control": control,
            "found": sorted(found),
            "api": {"anonymous": call(None), **{path: call(token) for path, token in sorted(found.items())}},
        }

    # The tries start once the supervisor has run SETTLED_SECONDS (its age, from /proc): in its first
    # second it is still dumpable (the module's docstring says why).
    waited = time.monotonic() + 60
    while time.monotonic() < waited and not any(
        "fleetdispatch supervise" in line and (age(pid) or 0) >= SETTLED_SECONDS
        for pid, line in others().items()
    ):
        time.sleep(0.1)
    # The control: a child of our own, dumpable and of our UID, with a canary in its environment.
    child = subprocess.Popen(["sleep", "60"], env={**os.environ, "PROBE_CANARY": CANARY})
    try:
        # Read once it shows its command line: under load, /proc showed it mid-exec, without one or an
        # environment (CI run of 2026-12-01).
        shown = time.monotonic() + 10
        while time.monotonic() < shown and not others().get(str(child.pid)):
            time.sleep(0.01)
        rounds = {"settled": round_of_tries(str(child.pid))}
    finally:
        child.kill()
        child.wait()
    print(json.dumps({"probe": rounds}), flush=True)
    sys.exit(0)


def probe_command() -> list[str]:
    source = textwrap.dedent(inspect.getsource(credential_probe))
    assert "$(" not in source  # Kubernetes would expand it
    constants = f"CANARY = {CANARY!r}\nSETTLED_SECONDS = {SETTLED_SECONDS!r}\n"
    return ["python", "-I", "-c", f"{constants}{source}\ncredential_probe()\n"]


def install_heartbeat_identity(ns: Namespace) -> list[dict[str, Any]]:
    """The chart's heartbeat ServiceAccount, Role and RoleBinding for `ns`, as `helm install` would create
    them (rendered from templates/heartbeat.yaml)."""
    rendered = run_tool(
        [
            str(HELM),
            "template",
            "fd",
            str(CHART),
            "--namespace",
            "fleet-system",
            "--show-only",
            "templates/heartbeat.yaml",
            "--set",
            "heartbeat.enabled=true",
            "--set",
            f"heartbeat.serviceAccountName={ACCOUNT}",
            "--set",
            f"watch.namespaces={{{ns.name}}}",
        ]
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    paths = {
        "ServiceAccount": f"/api/v1/namespaces/{ns.name}/serviceaccounts",
        "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns.name}/roles",
        "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns.name}/rolebindings",
    }
    assert sorted(d["kind"] for d in docs) == sorted(paths)
    for doc in docs:
        assert doc["metadata"]["namespace"] == ns.name
        ns.kube.create(paths[doc["kind"]], doc)
    return docs


def probe_report(ns: Namespace, template_spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs the probe as the session of a dispatch to its end; its report and the pod."""
    container = {"name": "session", "image": "python", "command": probe_command()}
    spec = dispatch_spec(
        template={"spec": {**template_spec, "containers": [container]}},
        timeouts={"deadlineSeconds": 120},
        retry={"maxAttempts": 1},
    )
    ns.create("probe", spec)
    try:
        ns.wait_phase("probe", "Succeeded", timeout=120)
    except AssertionError as error:
        events = ns.kube.items(f"/api/v1/namespaces/{ns.name}/events")
        said = [f"{e['reason']}: {e['message']}" for e in events]
        pods = [p.get("status") for p in ns.pods()]
        raise AssertionError(f"{error}\npods: {json.dumps(pods)[:3000]}\nevents: {said}") from None
    pod = ns.pod("probe-1")
    log = ns.logs("probe-1", "session")
    lines = [line for line in log.splitlines() if line.startswith('{"probe"')]
    assert lines, log[-3000:]
    return json.loads(lines[-1])["probe"], pod


def as_seen(path: str) -> str:
    """A path under /var/run as a mount table shows it: /var/run is a link to /run."""
    return "/run/" + path.removeprefix("/var/run/") if path.startswith("/var/run/") else path


def supervisor_pids(report: dict[str, Any]) -> list[str]:
    return [pid for pid, seen in report["processes"].items() if "fleetdispatch supervise" in seen["cmdline"]]


def process_results(seen: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A process's tries (each a dict of its result), not its command line, age or volumes."""
    for name, result in seen.items():
        if isinstance(result, dict):
            yield name, result


def test_the_session_finds_no_credential_and_the_api_server_refuses_it(
    cluster: BackgroundCluster, operator: OperatorProcess, ns: Namespace
) -> None:
    install_heartbeat_identity(ns)
    rounds, pod = probe_report(ns, {})
    # The pod the operator built: the heartbeat's account, its token projected into the supervisor alone.
    assert pod["spec"]["serviceAccountName"] == ACCOUNT
    assert pod["spec"]["automountServiceAccountToken"] is False
    [supervisor] = pod["spec"]["initContainers"]
    assert {"name": podspec.TOKEN_VOLUME, "mountPath": podspec.TOKEN_DIR, "readOnly": True} in supervisor[
        "volumeMounts"
    ]
    [session] = pod["spec"]["containers"]
    assert podspec.TOKEN_VOLUME not in {m["name"] for m in session.get("volumeMounts") or []}
    # The supervisor held a working token meanwhile: it renewed the pod's Lease.
    lease = ns.kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns.name}/leases/probe-1")
    assert lease["spec"].get("renewTime"), lease

    # The session's volumes are all under /var/run, so the probe's walk of its mounts there covers them.
    assert all(m["mountPath"].startswith("/var/run/") for m in session["volumeMounts"]), session

    for when, report in rounds.items():
        where = f"{when} round: {json.dumps(report)[:6000]}"
        own = report["own"]
        # Its own mounts: every volume walked (the state volume, whose files it reads), no token found.
        assert as_seen(names.STATE_DIR) in own["mounts"], where
        assert own[f"walk{as_seen(names.STATE_DIR)}"]["files"] >= 1, where
        for point in own["mounts"]:
            assert own[f"walk{point}"]["tokens"] == [], where
        for path in (AUTOMOUNTED_TOKEN, podspec.TOKEN_FILE):
            assert own[f"file{path}"] == {"ok": False, "error": "FileNotFoundError", "errno": 2}, where
        assert report["found"] == [], where

        # The supervisor refuses each way in, although it runs as the session's UID.
        [pid] = supervisor_pids(report)
        supervisor_seen = report["processes"][pid]
        assert supervisor_seen["age"] >= SETTLED_SECONDS, where
        # The probe knows where the token is: the supervisor's mount table is not guarded.
        assert as_seen(podspec.TOKEN_DIR) in supervisor_seen["volumes"], where
        tried = dict(process_results(supervisor_seen))
        assert {"environ", "mem", "root", "cwd", "fd", f"root{podspec.TOKEN_FILE}"} <= set(tried), where
        for name, result in tried.items():
            if "errors" in result:  # a walk of one of its volumes: not even listed
                assert (result["files"], result["tokens"], result["errors"]) == (0, [], [EACCES]), where
            else:
                assert (result["ok"], result.get("errno")) == (False, EACCES), f"{name}: {where}"
        # Every other process (the pod's pause process) too; the probe's own child is the control.
        for other, seen in report["processes"].items():
            if other not in (pid, report["control"]):
                assert not [name for name, result in process_results(seen) if result["ok"]], where

        # The control: the same tries against a dumpable process of the same UID succeed.
        control = report["processes"][report["control"]]
        assert control["environ"] == {
            "ok": True,
            "bytes": control["environ"]["bytes"],
            "canary": True,
            "token": False,
        }, where
        assert control["mem"]["ok"] and control["mem"]["bytes"] > 0, where
        assert control["root"]["ok"] and control["cwd"]["ok"] and control["fd"]["ok"], where
        assert control[f"root{as_seen(names.STATE_DIR)}"]["files"] >= 1, where

        # The API server, with no token (none was found): it answers, and refuses.
        assert set(report["api"]) == {"anonymous"}, where
        assert set(report["api"]["anonymous"]) == {"selfsubjectreview", "secrets", "pods", "lease"}, where
        for request, result in report["api"]["anonymous"].items():
            assert result["status"] in (401, 403), f"{request}: {where}"


def test_the_probe_finds_a_token_the_template_asks_for_and_the_api_server_takes_it(
    cluster: BackgroundCluster, operator: OperatorProcess, ns: Namespace
) -> None:
    """The probe can fail: a template that asks for the account's token gets it automounted (the operator
    then gives that pod no heartbeat), and the probe's walk finds it and is let in with it."""
    install_heartbeat_identity(ns)
    rounds, pod = probe_report(ns, {"serviceAccountName": ACCOUNT, "automountServiceAccountToken": True})
    [supervisor] = pod["spec"]["initContainers"]
    assert podspec.TOKEN_VOLUME not in {m["name"] for m in supervisor["volumeMounts"]}
    [session] = pod["spec"]["containers"]
    assert AUTOMOUNTED in {m["mountPath"] for m in session["volumeMounts"]}  # the admission's automount
    walked = as_seen(AUTOMOUNTED)
    for when, report in rounds.items():
        where = f"{when} round: {json.dumps(report)[:6000]}"
        assert walked in report["own"]["mounts"], where
        assert report["own"][f"walk{walked}"]["tokens"] == [f"{walked}/token"], where
        assert report["own"][f"file{AUTOMOUNTED_TOKEN}"] == {"ok": True, "token": True}, where
        # Found by its own walk and reads, and through its own child's /proc/PID/root (the control's
        # root is the session's), never through another process.
        control = f"/proc/{report['control']}/root"
        assert {f"{walked}/token", AUTOMOUNTED_TOKEN, f"{control}{AUTOMOUNTED_TOKEN}"} <= set(report["found"])
        assert all(not t.startswith("/proc/") or t.startswith(f"{control}/") for t in report["found"]), where
        for token in report["found"]:
            let_in = report["api"][token]
            user = f"system:serviceaccount:{ns.name}:{ACCOUNT}"
            assert let_in["selfsubjectreview"] == {"ok": True, "status": 201, "user": user}, where
            # The account's Role allows Leases alone: the Lease read is allowed (there is none: no
            # heartbeat for this pod), secrets and pods are not.
            assert let_in["lease"]["status"] == 404, where
            assert let_in["secrets"]["status"] == let_in["pods"]["status"] == 403, where
        assert {r["status"] for r in report["api"]["anonymous"].values()} <= {401, 403}, where


VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


@pytest.mark.parametrize(
    ("resource", "allowed"),
    [
        ("leases.coordination.k8s.io", {"get", "create", "patch"}),
        ("pods", set()),
        ("pods/exec", set()),
        ("pods/log", set()),
        ("secrets", set()),
        ("configmaps", set()),
        ("serviceaccounts", set()),
        ("serviceaccounts/token", set()),
        ("events", set()),
        ("fleetdispatches.fleet.dispatch.dev", set()),
        ("roles.rbac.authorization.k8s.io", set()),
    ],
)
def test_the_heartbeat_account_may_touch_only_leases(
    cluster: BackgroundCluster, tmp_path: Path, resource: str, allowed: set[str]
) -> None:
    ns = Namespace(
        cluster, f"heartbeat-can-i-{resource.split('.', maxsplit=1)[0].replace('/', '-')}", runtime="none"
    )
    install_heartbeat_identity(ns)
    kubectl = Kubectl(cluster.write_kubeconfig(tmp_path / "kubeconfig", ns.name))
    user = f"system:serviceaccount:{ns.name}:{ACCOUNT}"
    answers = {}
    for verb in VERBS:
        result = kubectl.run("auth", "can-i", verb, resource, "-n", ns.name, f"--as={user}", check=False)
        answers[verb] = result.stdout.strip()
        assert result.returncode == (0 if answers[verb] == "yes" else 1), result.stderr
    assert {verb for verb, answer in answers.items() if answer == "yes"} == allowed, answers
    # Nor anywhere else: the Role is the namespace's.
    elsewhere = kubectl.run("auth", "can-i", "get", resource, "-n", "default", f"--as={user}", check=False)
    assert elsewhere.stdout.strip() == "no", elsewhere.stdout
