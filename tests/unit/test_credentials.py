"""Credentials as users give them, loaded for real: kubeconfigs of several contexts and files, an exec
credential plugin that is a real program (its runs counted, to show it is run again before its token
expires), client certificates over real TLS, token files rewritten while in use (rotation), in-cluster
config; and `KubeApi` sending what they give to a real HTTPS server. Generated kubeconfigs and service
accounts are read by `load` and by the `kubernetes` package itself, which must agree: a plain context is read
without the package (it costs a command most of a second), any other by it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from aiohttp import web
from hypothesis import example, given, note, settings
from hypothesis import strategies as st
from kubernetes.client import Configuration
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

from fleetdispatch.client import credentials
from fleetdispatch.client.credentials import Credentials, CredentialsError
from fleetdispatch.client.kubeapi import KubeApi
from fleetdispatch.devcluster.pki import Authority, KeyPair
from waiting import eventually

PLUGIN = """#!{python}
# An exec credential plugin, as `aws eks get-token` is one: an ExecCredential on standard output.
import json, os, sys, time
from pathlib import Path

from fleetdispatch.session import protocol

counter = Path(os.environ["PLUGIN_COUNTER"])
runs = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(runs))
if runs >= int(os.environ.get("PLUGIN_FAIL_FROM") or 1_000_000):
    print("boom: no credentials for this cluster", file=sys.stderr)
    print("(see the provider's login)", file=sys.stderr)
    sys.exit(1)
request = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
expires = protocol.format_time(time.time() + float(os.environ["PLUGIN_LIFETIME"]))
status = {{"token": f"token-{{runs}}", "expirationTimestamp": expires}}
print(json.dumps({{"apiVersion": request["apiVersion"], "kind": "ExecCredential", "status": status}}))
"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def serving(pki: Authority) -> KeyPair:
    return pki.issue("server", "test-apiserver", server_names=("127.0.0.1",), client=False)


@pytest.fixture(scope="module")
def client_pair(pki: Authority) -> KeyPair:
    return pki.issue("alice", "alice", organizations=("developers",))


def plugin(tmp_path: Path, lifetime: float, fail_from: int | None = None) -> dict[str, Any]:
    """A kubeconfig `exec` stanza running a real plugin program; its runs are counted in `runs`."""
    script = tmp_path / "get-token"
    script.write_text(PLUGIN.format(python=sys.executable))
    script.chmod(0o755)
    env = [
        {"name": "PLUGIN_COUNTER", "value": str(tmp_path / "runs")},
        {"name": "PLUGIN_LIFETIME", "value": str(lifetime)},
    ]
    if fail_from is not None:
        env.append({"name": "PLUGIN_FAIL_FROM", "value": str(fail_from)})
    return {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(script),
        "env": env,
        "interactiveMode": "Never",
    }


def runs(tmp_path: Path) -> int:
    counter = tmp_path / "runs"
    return int(counter.read_text()) if counter.exists() else 0


def kubeconfig(
    path: Path,
    clusters: dict[str, dict[str, Any]],
    users: dict[str, dict[str, Any]],
    contexts: dict[str, dict[str, Any]],
    current: str | None = None,
) -> Path:
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": value} for name, value in clusters.items()],
        "users": [{"name": name, "user": value} for name, value in users.items()],
        "contexts": [{"name": name, "context": value} for name, value in contexts.items()],
    }
    if current is not None:
        document["current-context"] = current
    path.write_text(yaml.safe_dump(document))
    return path


class ApiServer:
    """A real HTTPS server (plain HTTP without `serving`) that records what each request carried."""

    def __init__(self, serving: KeyPair | None = None, ca: Path | None = None) -> None:
        self.seen: list[dict[str, Any]] = []
        self._serving, self._ca = serving, ca
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _answer(self, request: web.Request) -> web.Response:
        certificate = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(pair[0] for pair in (certificate or {}).get("subject", ()))
        self.seen.append(
            {"authorization": request.headers.get("Authorization"), "client": subject.get("commonName")}
        )
        return web.json_response({"kind": "Status", "status": "Success"})

    async def __aenter__(self) -> ApiServer:
        app = web.Application()
        app.router.add_get("/api", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        context = None
        if self._serving is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self._ca))
            context.load_cert_chain(str(self._serving.certificate), str(self._serving.key))
            context.verify_mode = ssl.CERT_OPTIONAL
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if context else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def get(found: Credentials) -> None:
    api = KubeApi(found)
    try:
        await api.request("GET", "/api")
    finally:
        await api.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No kubeconfig and no cluster from the machine running the tests."""
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield


# ---- kubeconfig: contexts, files, users --------------------------------------------------------------


def test_a_kubeconfig_of_several_contexts_gives_each_context_its_own_cluster_user_and_namespace(
    tmp_path: Path, pki: Authority, client_pair: KeyPair, clean_env: None
) -> None:
    ca = pki.certificate_path
    path = kubeconfig(
        tmp_path / "config",
        clusters={
            "prod": {"server": "https://prod.example:6443", "certificate-authority": str(ca)},
            "dev": {"server": "https://127.0.0.1:6443/", "certificate-authority-data": b64(ca.read_bytes())},
            "local": {"server": "http://127.0.0.1:8080"},
        },
        users={
            "deployer": {"token": "prod-token"},
            "alice": {
                "client-certificate-data": b64(client_pair.certificate.read_bytes()),
                "client-key-data": b64(client_pair.key.read_bytes()),
            },
        },
        contexts={
            "prod": {"cluster": "prod", "user": "deployer", "namespace": "fleet"},
            "dev": {"cluster": "dev", "user": "alice"},
            "local": {"cluster": "local"},
        },
        current="prod",
    )

    prod = credentials.load(str(path))
    assert (prod.server, prod.authorization(), prod.ca_file) == (
        "https://prod.example:6443",
        "Bearer prod-token",
        str(ca),
    )
    assert prod.namespace == "fleet"
    assert "context 'prod'" in prod.source

    dev = credentials.load(str(path), "dev")
    assert dev.server == "https://127.0.0.1:6443"
    assert dev.authorization() is None
    assert dev.ca_file is not None and Path(dev.ca_file).read_bytes() == ca.read_bytes()
    assert dev.certificate_file is not None and dev.key_file is not None
    assert Path(dev.certificate_file).read_bytes() == client_pair.certificate.read_bytes()
    assert Path(dev.key_file).read_bytes() == client_pair.key.read_bytes()

    local = credentials.load(str(path), "local")
    assert (local.server, local.authorization(), local.ssl_context()) == ("http://127.0.0.1:8080", None, True)

    with pytest.raises(CredentialsError) as unknown:
        credentials.load(str(path), "staging")
    assert str(unknown.value) == f"kubeconfig {path} has no context 'staging' (it has: prod, dev, local)"


def test_kubeconfig_in_the_environment_merges_several_files_as_kubectl_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pki: Authority, clean_env: None
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (second / "ca.crt").write_bytes(pki.certificate_path.read_bytes())
    kubeconfig(
        first / "config",
        clusters={"one": {"server": "https://one.example"}},
        users={"me": {"token": "from-the-first-file"}},
        contexts={"one": {"cluster": "one", "user": "me"}},
        current="one",
    )
    kubeconfig(
        second / "config",
        # A relative path is relative to the file that says it.
        clusters={"two": {"server": "https://two.example", "certificate-authority": "ca.crt"}},
        users={"me": {"token": "shadowed"}, "you": {"token": "yours"}},
        contexts={"two": {"cluster": "two", "user": "me"}, "yours": {"cluster": "two", "user": "you"}},
        current="two",
    )
    listed = os.pathsep.join([str(first / "config"), str(tmp_path / "missing"), str(second / "config")])
    monkeypatch.setenv("KUBECONFIG", listed)

    # The first file to set a current context wins, and the first to define a name.
    found = credentials.load()
    assert (found.server, found.authorization()) == ("https://one.example", "Bearer from-the-first-file")
    two = credentials.load(context="two")
    assert (two.server, two.authorization()) == ("https://two.example", "Bearer from-the-first-file")
    assert two.ca_file == str(second / "ca.crt")
    assert credentials.load(context="yours").authorization() == "Bearer yours"

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(CredentialsError, match=r"^no kubeconfig: none of the files in \$KUBECONFIG"):
        credentials.load()


def test_what_is_wrong_with_a_kubeconfig_is_said_in_one_line(tmp_path: Path, clean_env: None) -> None:
    def problem(kubeconfig: str | None = None) -> str:
        with pytest.raises(CredentialsError) as raised:
            credentials.load(kubeconfig)
        message = str(raised.value)
        assert "\n" not in message
        return message

    assert problem(str(tmp_path / "absent")) == (
        f"cannot read kubeconfig {tmp_path / 'absent'}: No such file or directory"
    )
    assert problem(str(tmp_path)) == f"cannot read kubeconfig {tmp_path}: Is a directory"
    (tmp_path / "broken").write_text("clusters: [\n")
    assert problem(str(tmp_path / "broken")).startswith(f"kubeconfig {tmp_path / 'broken'} is not YAML: ")
    (tmp_path / "list").write_text("- a\n- b\n")
    assert problem(str(tmp_path / "list")) == (
        f"kubeconfig {tmp_path / 'list'} is not a kubeconfig (not a YAML mapping)"
    )
    uncurrent = kubeconfig(
        tmp_path / "uncurrent",
        clusters={"c": {"server": "https://c.example"}},
        users={},
        contexts={"a": {"cluster": "c"}, "b": {"cluster": "c"}},
    )
    assert problem(str(uncurrent)) == (
        f"kubeconfig {uncurrent} has no current-context: choose one with --context (a, b)"
    )
    serverless = kubeconfig(
        tmp_path / "serverless", clusters={"c": {}}, users={}, contexts={"a": {"cluster": "c"}}, current="a"
    )
    assert problem(str(serverless)) == f"kubeconfig {serverless}, context 'a': cluster 'c' has no server"
    missing_ca = kubeconfig(
        tmp_path / "missing-ca",
        clusters={"c": {"server": "https://c.example", "certificate-authority": "nowhere/ca.crt"}},
        users={},
        contexts={"a": {"cluster": "c"}},
        current="a",
    )
    assert "File does not exist" in problem(str(missing_ca))
    # Nothing at all: no kubeconfig and not in a cluster.
    assert problem().startswith("no credentials: not in a cluster")


# ---- exec credential plugins --------------------------------------------------------------------------


def test_an_exec_plugins_token_is_renewed_before_it_expires_and_only_then(
    tmp_path: Path, clean_env: None
) -> None:
    path = kubeconfig(
        tmp_path / "config",
        clusters={"eks": {"server": "https://eks.example"}},
        users={"iam": {"exec": plugin(tmp_path, lifetime=6)}},
        contexts={"eks": {"cluster": "eks", "user": "iam"}},
        current="eks",
    )
    found = credentials.load(str(path))
    assert runs(tmp_path) == 1  # run at load, so a plugin that cannot log in fails at once
    assert found.renewable is not None
    first_expiry = found.renewable.expiry
    assert first_expiry is not None
    renew_at = found.renewable.renew_at()
    assert renew_at is not None and renew_at < first_expiry

    for _ in range(5):
        assert found.authorization() == "Bearer token-1"
    info = found.connection_info()
    assert (info.scheme, info.token, info.expiration) == ("Bearer", "token-1", renew_at)
    assert runs(tmp_path) == 1  # a token that is still good is not asked for again

    eventually(lambda: found.authorization() == "Bearer token-2", 10, "the renewed token")
    renewed = datetime.datetime.now(datetime.UTC)
    assert renew_at <= renewed < first_expiry  # before the old token expired
    assert runs(tmp_path) == 2
    assert found.renewable.expiry is not None and found.renewable.expiry > first_expiry
    assert found.authorization() == "Bearer token-2"
    assert found.connection_info().token == "token-2"
    assert runs(tmp_path) == 2


def test_kubeapi_sends_the_renewed_token_of_an_exec_plugin(tmp_path: Path, clean_env: None) -> None:
    async def scenario() -> list[str | None]:
        async with ApiServer() as server:
            path = kubeconfig(
                tmp_path / "config",
                clusters={"gke": {"server": server.url}},
                users={"gcp": {"exec": plugin(tmp_path, lifetime=4)}},
                contexts={"gke": {"cluster": "gke", "user": "gcp"}},
                current="gke",
            )
            found = credentials.load(str(path))
            assert found.renewable is not None
            api = KubeApi(found)
            try:
                await api.request("GET", "/api")
                await api.request("GET", "/api")
                renew_at = found.renewable.renew_at()
                assert renew_at is not None
                await asyncio.sleep((renew_at - datetime.datetime.now(datetime.UTC)).total_seconds() + 0.1)
                # Concurrent requests when the renewal is due: the plugin runs once, in a thread.
                await asyncio.gather(*(api.request("GET", "/api") for _ in range(5)))
            finally:
                await api.close()
            return [seen["authorization"] for seen in server.seen]

    assert asyncio.run(scenario()) == ["Bearer token-1"] * 2 + ["Bearer token-2"] * 5
    assert runs(tmp_path) == 2


def test_a_failing_exec_plugin_is_one_line_with_its_own_error(
    tmp_path: Path, clean_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = kubeconfig(
        tmp_path / "config",
        clusters={"aks": {"server": "https://aks.example"}},
        users={"azure": {"exec": plugin(tmp_path, lifetime=600, fail_from=1)}},
        contexts={"aks": {"cluster": "aks", "user": "azure"}},
        current="aks",
    )
    with caplog.at_level(logging.DEBUG), pytest.raises(CredentialsError) as raised:
        credentials.load(str(path))
    assert str(raised.value) == (
        f"kubeconfig {path}, context 'aks': the credential plugin '{tmp_path / 'get-token'}' failed: "
        "exec: process returned 1. boom: no credentials for this cluster (see the provider's login)"
    )
    assert runs(tmp_path) == 1
    # The kubernetes package's own log line of the failure is taken into the error, not logged as well.
    assert not [r for r in caplog.records if "boom" in r.getMessage()]


def test_a_renewal_that_fails_keeps_the_token_until_it_expires_then_the_login_fails(
    tmp_path: Path, clean_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = kubeconfig(
        tmp_path / "config",
        clusters={"eks": {"server": "https://eks.example"}},
        users={"iam": {"exec": plugin(tmp_path, lifetime=4, fail_from=2)}},
        contexts={"eks": {"cluster": "eks", "user": "iam"}},
        current="eks",
    )
    found = credentials.load(str(path))
    assert found.renewable is not None

    def renewal_tried() -> bool:
        found.authorization()  # renews when due
        return runs(tmp_path) == 2

    with caplog.at_level(logging.WARNING, logger="fleetdispatch.client.credentials"):
        eventually(renewal_tried, 10, "a renewal tried")
    assert found.authorization() == "Bearer token-1"  # kept: it has not expired yet
    warnings = [r.getMessage() for r in caplog.records if r.name == "fleetdispatch.client.credentials"]
    assert any("renewing the token failed" in w and "boom" in w for w in warnings), warnings
    assert runs(tmp_path) == 2  # and not run again at once: retried after RENEW_RETRY_SECONDS

    expiry = found.renewable.expiry
    assert expiry is not None
    time.sleep(max(0.0, (expiry - datetime.datetime.now(datetime.UTC)).total_seconds()) + 0.1)
    with pytest.raises(CredentialsError, match="the token has expired: exec: process returned 1"):
        found.connection_info()


# ---- client certificates and tokens over real TLS ----------------------------------------------------


def test_client_certificates_and_tokens_reach_a_real_tls_server(
    tmp_path: Path, pki: Authority, serving: KeyPair, client_pair: KeyPair, clean_env: None
) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with ApiServer(serving, pki.certificate_path) as server:
            path = kubeconfig(
                tmp_path / "config",
                clusters={"here": {"server": server.url, "certificate-authority": str(pki.certificate_path)}},
                users={
                    "alice": {
                        "client-certificate": str(client_pair.certificate),
                        "client-key": str(client_pair.key),
                    },
                    "robot": {"token": "robot-token"},
                },
                contexts={
                    "alice": {"cluster": "here", "user": "alice"},
                    "robot": {"cluster": "here", "user": "robot"},
                },
                current="alice",
            )
            await get(credentials.load(str(path)))
            await get(credentials.load(str(path), "robot"))
            return server.seen

    assert asyncio.run(scenario()) == [
        {"authorization": None, "client": "alice"},
        {"authorization": "Bearer robot-token", "client": None},
    ]


# ---- token files, rotated ------------------------------------------------------------------------------


def test_a_rotated_in_cluster_token_is_read_again(
    tmp_path: Path, pki: Authority, serving: KeyPair, clean_env: None
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    token = account / "token"
    token.write_text("first-token\n")
    (account / "ca.crt").write_bytes(pki.certificate_path.read_bytes())
    (account / "namespace").write_text("fleet-system")

    async def scenario() -> list[str | None]:
        async with ApiServer(serving, pki.certificate_path) as server:
            port = server.url.rsplit(":", 1)[1]
            found = credentials.in_cluster(
                {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port},
                token_file=str(token),
                ca_file=str(account / "ca.crt"),
                namespace_file=str(account / "namespace"),
                token_reread_seconds=0.5,
            )
            assert (found.server, found.namespace) == (server.url, "fleet-system")
            api = KubeApi(found)
            try:
                await api.request("GET", "/api")
                # The kubelet writes the new token (atomically, through a symlink swap in real life).
                replacement = account / "token.new"
                replacement.write_text("second-token\n")
                replacement.replace(token)
                await api.request("GET", "/api")  # within the period: the token read last
                await asyncio.sleep(0.6)
                await api.request("GET", "/api")
                token.unlink()  # in the middle of a rotation: keep the last good token
                await asyncio.sleep(0.6)
                await api.request("GET", "/api")
            finally:
                await api.close()
            return [seen["authorization"] for seen in server.seen]

    assert asyncio.run(scenario()) == [
        "Bearer first-token",
        "Bearer first-token",
        "Bearer second-token",
        "Bearer second-token",
    ]


def test_a_kubeconfig_token_file_is_read_again_and_relative_to_its_kubeconfig(
    tmp_path: Path, clean_env: None
) -> None:
    (tmp_path / "token").write_text("old\n")
    path = kubeconfig(
        tmp_path / "config",
        clusters={"c": {"server": "https://c.example"}},
        users={"u": {"tokenFile": "token"}},
        contexts={"c": {"cluster": "c", "user": "u"}},
        current="c",
    )
    found = credentials.load(str(path))
    assert found.token_file == str(tmp_path / "token")
    assert found.authorization() == "Bearer old"
    (tmp_path / "token").write_text("new\n")
    rereading = Credentials(
        server=found.server, token_file=found.token_file, token=found.token, token_reread_seconds=0.2
    )
    assert rereading.authorization() == "Bearer new"
    (tmp_path / "token").write_text("newer\n")
    assert rereading.authorization() == "Bearer new"  # not before its period
    eventually(lambda: rereading.authorization() == "Bearer newer", 5, "the rewritten token")


# ---- where credentials come from, and kopf's view of them ----------------------------------------------


def test_the_order_kubeconfig_flag_then_kubeconfig_variable_then_in_cluster(
    tmp_path: Path, clean_env: None
) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "ca.crt").write_text("not checked until used")
    for name in ("flag", "variable"):
        kubeconfig(
            tmp_path / name,
            clusters={"c": {"server": f"https://{name}.example"}},
            users={},
            contexts={"c": {"cluster": "c"}},
            current="c",
        )
    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443", "HOME": str(tmp_path)}
    in_a_pod_with_a_kubeconfig = {**pod, "KUBECONFIG": str(tmp_path / "variable")}
    assert credentials.load(str(tmp_path / "flag"), environ=in_a_pod_with_a_kubeconfig).server == (
        "https://flag.example"
    )
    assert credentials.load(environ=in_a_pod_with_a_kubeconfig).server == "https://variable.example"
    assert credentials.in_cluster_available(pod, token_file=str(account / "token"))
    assert not credentials.in_cluster_available({}, token_file=str(account / "token"))
    assert not credentials.in_cluster_available(pod, token_file=str(tmp_path / "none"))
    # Not in a pod after all (no token file at the service account's path): the kubeconfig's turn.
    with pytest.raises(CredentialsError, match=r"^no credentials: not in a cluster"):
        credentials.load(environ=pod)
    found = credentials.in_cluster(pod, token_file=str(account / "token"), ca_file=str(account / "ca.crt"))
    assert (found.server, found.authorization()) == ("https://10.96.0.1:443", "Bearer pod-token")
    with pytest.raises(CredentialsError, match=r"^in-cluster service account: Service token file does not"):
        credentials.in_cluster(pod, token_file=str(tmp_path / "none"), ca_file=str(account / "ca.crt"))


def test_kopf_gets_the_same_credentials_and_built_ones_still_work(tmp_path: Path, pki: Authority) -> None:
    built = Credentials(server="https://h:6443", ca_file=str(pki.certificate_path), token="t", namespace="ns")
    info = built.connection_info()
    assert isinstance(info, kopf.ConnectionInfo)
    assert (info.server, info.ca_path, info.scheme, info.token, info.default_namespace, info.expiration) == (
        "https://h:6443",
        str(pki.certificate_path),
        "Bearer",
        "t",
        "ns",
        None,
    )
    # From kopf's own login: inline data becomes private files.
    pem = pki.certificate_path.read_bytes()
    connection = kopf.ConnectionInfo(
        server="https://h:6443/", ca_data=pem, certificate_data=pem, private_key_data=b"key", token="k"
    )
    converted = Credentials.from_connection(connection, token_file=None)
    assert (converted.server, converted.ca_data, converted.authorization()) == (
        "https://h:6443",
        pem.decode(),
        "Bearer k",
    )
    assert converted.certificate_file is not None and Path(converted.certificate_file).read_bytes() == pem
    assert converted.key_file is not None and Path(converted.key_file).read_bytes() == b"key"
    for file in (converted.certificate_file, converted.key_file):
        Path(file).unlink()


# ---- read as the kubernetes package reads them ------------------------------------------------------------

# A kubeconfig's references to files, materialized under the example's folder: relative to the file that
# names them ("ca.crt" exists beside a/config only), through the other folder, absolute, missing, or with a
# "~" (which neither reading expands).
REFERENCES = ("here", "through-a", "absolute", "missing", "home")
SERVERS = ("https://h.example:6443", "https://h.example:6443/", "http://h.example:8080", "https://[::1]:6443")


def _reference(kind: str, name: str, root: Path) -> str:
    return {
        "here": name,
        "through-a": f"../a/{name}",
        "absolute": str(root / "a" / name),
        "missing": f"missing-{name}",
        "home": f"~/{name}",
    }[kind]


def _material(choice: tuple[str, str] | None, field: str, name: str, root: Path) -> dict[str, Any]:
    """`field` (a file reference) or `field-data` (good or broken base64) for a generated choice."""
    if choice is None:
        return {}
    how, which = choice
    if how == "data":
        data = b64((root / "a" / name).read_bytes()) if which == "good" else "not*base64"
        return {f"{field}-data": data}
    return {field: _reference(which, name, root)}


materials = (
    st.none()
    | st.tuples(st.just("data"), st.sampled_from(["good", "broken"]))
    | st.tuples(st.just("file"), st.sampled_from(REFERENCES))
)
clusters = st.fixed_dictionaries(
    {
        "server": st.sampled_from(SERVERS),
        "ca": materials,
        # A string is unusual: the package takes its truth ("false" skips the check); so is a null.
        "insecure": st.sampled_from([None, True, False, "false", "null"]),
        "extra": st.sampled_from([{}, {"tls-server-name": "h"}, {"proxy-url": "http://proxy:3128"}]),
    }
)
users = st.fixed_dictionaries(
    {
        "certificate": materials,
        "key": materials,
        "token": st.sampled_from([None, "tok", " spaced token\n", ""]),
        "token_file": st.none() | st.sampled_from(REFERENCES),
        # Fields the package reads in its own ways: basic auth, impersonation (ignored), a null.
        "extra": st.sampled_from([{}, {}, {"username": "u", "password": "p"}, {"as": "x"}, {"token": None}]),
    }
)
layouts = st.fixed_dictionaries(
    {
        "listed": st.booleans(),  # $KUBECONFIG of a/config and b/config, else --kubeconfig a/config
        "cluster_in": st.sampled_from("ab"),
        "user_in": st.sampled_from("ab"),
        "context_in": st.sampled_from("ab"),
        "shadowed": st.booleans(),  # the other file defines the same names too
        "userless": st.booleans(),
    }
)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of a generated example's files each (a module's: hypothesis runs a test many times)."""
    return tmp_path_factory.mktemp("worlds")


def _world(base: Path, pki: Authority, client_pair: KeyPair) -> Path:
    root = base / uuid.uuid4().hex
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
    (root / "a" / "ca.crt").write_bytes(pki.certificate_path.read_bytes())
    (root / "a" / "client.crt").write_bytes(client_pair.certificate.read_bytes())
    (root / "a" / "client.key").write_bytes(client_pair.key.read_bytes())
    (root / "a" / "token").write_text("from-a-file\n")
    (root / "b" / "token").write_text("from-b-file")
    return root


def _content(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _bearer(header: str | None) -> str | None:
    """The Authorization header as `Credentials` sends it: a Bearer token without its whitespace."""
    if header and header.startswith("Bearer "):
        token = header.partition(" ")[2].strip()
        return f"Bearer {token}" if token else None
    return header


def _as_kubernetes_reads(files: list[Path], context: str) -> tuple[Any, ...] | str:
    """What the kubernetes package makes of a context: the server, the CA's, certificate's and key's
    contents, whether the server is verified, the header; or its error, in one line."""
    configuration = Configuration()
    try:
        merged = KubeConfigMerger(os.pathsep.join(map(str, files))).config  # type: ignore[no-untyped-call]
        loader = KubeConfigLoader(  # type: ignore[no-untyped-call]
            config_dict=merged, active_context=context, config_base_path=None
        )
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except Exception as error:
        return " ".join(str(error).split())
    header = configuration.api_key.get("BearerToken")
    return (
        configuration.host,
        _content(configuration.ssl_ca_cert),
        _content(configuration.cert_file),
        _content(configuration.key_file),
        bool(configuration.verify_ssl),
        _bearer(header),
    )


def _quirk(user_in: str, cluster_in: str) -> dict[str, dict[str, Any]]:
    """A client certificate and key named relative to the user's file, in another file than the cluster's:
    the package takes them relative to the cluster's file."""
    return {
        "cluster": {"server": SERVERS[0], "ca": ("file", "through-a"), "insecure": None, "extra": {}},
        "user": {
            "certificate": ("file", "here"),
            "key": ("file", "here"),
            "token": None,
            "token_file": "here",
            "extra": {},
        },
        "layout": {
            "listed": True,
            "cluster_in": cluster_in,
            "user_in": user_in,
            "context_in": "a",
            "shadowed": False,
            "userless": False,
        },
    }


@settings(max_examples=300, deadline=None)
@given(case=st.fixed_dictionaries({"cluster": clusters, "user": users, "layout": layouts}))
@example(case=_quirk(user_in="b", cluster_in="a"))
@example(case=_quirk(user_in="a", cluster_in="b"))
def test_a_generated_kubeconfig_is_read_as_the_kubernetes_package_reads_it(
    worlds: Path, pki: Authority, client_pair: KeyPair, case: dict[str, dict[str, Any]]
) -> None:
    cluster, user, layout = case["cluster"], case["user"], case["layout"]
    root = _world(worlds, pki, client_pair)
    if not layout["listed"]:
        layout = {**layout, "cluster_in": "a", "user_in": "a", "context_in": "a"}
    cluster_stanza: dict[str, Any] = {"server": cluster["server"], **cluster["extra"]}
    cluster_stanza |= _material(cluster["ca"], "certificate-authority", "ca.crt", root)
    if cluster["insecure"] is not None:
        cluster_stanza["insecure-skip-tls-verify"] = (
            None if cluster["insecure"] == "null" else cluster["insecure"]
        )
    user_stanza: dict[str, Any] = {}
    user_stanza |= _material(user["certificate"], "client-certificate", "client.crt", root)
    user_stanza |= _material(user["key"], "client-key", "client.key", root)
    if user["token"] is not None:
        user_stanza["token"] = user["token"]
    if user["token_file"] is not None:
        user_stanza["tokenFile"] = _reference(user["token_file"], "token", root)
    user_stanza |= user["extra"]
    # (A context naming a user that is empty is refused before either reading: "no user".)
    userless = layout["userless"] or not user_stanza
    context_stanza = {"cluster": "the-cluster", **({} if userless else {"user": "the-user"})}

    documents: dict[str, dict[str, list[dict[str, Any]]]] = {
        folder: {"clusters": [], "users": [], "contexts": []} for folder in "ab"
    }
    for kind, name, stanza, where in (
        ("clusters", "the-cluster", cluster_stanza, layout["cluster_in"]),
        ("users", "the-user", user_stanza, layout["user_in"]),
        ("contexts", "the-context", context_stanza, layout["context_in"]),
    ):
        documents[where][kind].append({"name": name, kind[:-1]: stanza})
        if layout["shadowed"]:  # later in the list: the first file's definition wins
            other = "b" if where == "a" else "a"
            shadow = {"server": "https://shadow.example"} if kind == "clusters" else {"token": "shadow"}
            if kind == "contexts":
                shadow = {"cluster": "the-cluster"}
            documents[other][kind].append({"name": name, kind[:-1]: shadow})
    files = [root / folder / "config" for folder in "ab"]
    for folder, path in zip("ab", files, strict=True):
        path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", **documents[folder]}))
    if not layout["listed"]:
        files = files[:1]
    note(yaml.safe_dump(documents))

    expected = _as_kubernetes_reads(files, "the-context")
    environ = {"KUBECONFIG": os.pathsep.join(map(str, files))} if layout["listed"] else {}
    try:
        found = credentials.load(None if layout["listed"] else str(files[0]), "the-context", environ)
    except CredentialsError as error:
        where, _, message = str(error).partition(", context 'the-context': ")
        assert where and message == expected
        return
    assert isinstance(expected, tuple), f"the package failed: {expected}"
    # The header as loaded: `authorization()` reads a token file again (and, as kubectl does, reads it when
    # the token is empty, where the package sends none).
    header = found.renewable.header if found.renewable else found.token and f"Bearer {found.token}"
    assert (
        found.server,
        _content(found.ca_file),
        _content(found.certificate_file),
        _content(found.key_file),
        not found.insecure,
        header or None,
    ) == expected


@settings(max_examples=100, deadline=None)
@given(
    case=st.fixed_dictionaries(
        {
            "host": st.sampled_from(["10.96.0.1", "fd00::1", "kubernetes.default.svc", "", None]),
            "port": st.sampled_from(["443", "", None]),
            "token": st.sampled_from(["pod-token", "pod-token\n", " ", "", None]),
            "ca": st.sampled_from(["pem", "", None]),
        }
    )
)
def test_the_in_cluster_account_is_read_as_the_kubernetes_package_reads_it(
    worlds: Path, pki: Authority, case: dict[str, str | None]
) -> None:
    host, port, token, ca = case["host"], case["port"], case["token"], case["ca"]
    account = worlds / uuid.uuid4().hex
    account.mkdir()
    if token is not None:
        (account / "token").write_text(token)
    if ca is not None:
        (account / "ca.crt").write_text(pki.certificate_path.read_text() if ca == "pem" else "")
    environ = {
        name: value
        for name, value in (("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port))
        if value is not None
    }
    token_file, ca_file = str(account / "token"), str(account / "ca.crt")

    configuration = Configuration()
    loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=token_file,
        cert_filename=ca_file,
        try_refresh_token=False,
        environ=environ,
    )
    try:
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
        expected: Any = (configuration.host, configuration.ssl_ca_cert, configuration.api_key["BearerToken"])
    except Exception as error:
        expected = f"in-cluster service account: {error}"
    try:
        found = credentials.in_cluster(environ, token_file=token_file, ca_file=ca_file)
    except CredentialsError as error:
        assert str(error) == expected
        return
    assert isinstance(expected, tuple), expected
    # The package's header is "bearer <the file's content>": the token is what follows the scheme.
    server, ca_file, header = expected
    assert (found.server, found.ca_file, found.token) == (server, ca_file, header[7:].strip() or None)
    assert found.authorization() == (f"Bearer {found.token}" if found.token else None)


def test_a_plain_context_is_read_without_the_kubernetes_package_any_other_with_it(
    tmp_path: Path, pki: Authority, client_pair: KeyPair, clean_env: None
) -> None:
    (tmp_path / "token").write_text("from-the-file\n")
    ca = {"certificate-authority-data": b64(pki.certificate_path.read_bytes())}
    path = kubeconfig(
        tmp_path / "config",
        clusters={
            "checked": {"server": "https://127.0.0.1:6443", **ca},
            "unchecked": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True},
            "quoted": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": "false"},
        },
        users={
            "alice": {
                "client-certificate-data": b64(client_pair.certificate.read_bytes()),
                "client-key": str(client_pair.key),
            },
            "robot": {"tokenFile": "token"},
            "basic": {"username": "u", "password": "p"},
            "iam": {"exec": plugin(tmp_path, lifetime=600)},
        },
        contexts={
            "alice": {"cluster": "checked", "user": "alice"},
            "robot": {"cluster": "unchecked", "user": "robot"},
            "basic": {"cluster": "checked", "user": "basic"},
            "quoted": {"cluster": "quoted", "user": "robot"},
            "iam": {"cluster": "checked", "user": "iam"},
        },
    )
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "ca.crt").write_bytes(pki.certificate_path.read_bytes())
    code = (
        "import sys\n"
        "from fleetdispatch.client import credentials\n"
        "if sys.argv[1] == 'in-cluster':\n"
        "    environ = {'KUBERNETES_SERVICE_HOST': '10.96.0.1', 'KUBERNETES_SERVICE_PORT': '443'}\n"
        f"    found = credentials.in_cluster(environ, token_file={str(account / 'token')!r}, "
        f"ca_file={str(account / 'ca.crt')!r})\n"
        "else:\n"
        f"    found = credentials.load({str(path)!r}, sys.argv[1])\n"
        "print(found.authorization(), found.insecure, 'kubernetes' in sys.modules)\n"
    )

    def reading(context: str) -> str:
        return subprocess.run(
            [sys.executable, "-c", code, context], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert reading("alice") == "None False False"
    assert reading("robot") == "Bearer from-the-file True False"
    assert reading("in-cluster") == "Bearer pod-token False False"
    assert reading("basic") == f"Basic {b64(b'u:p')} False True"
    assert reading("quoted") == "Bearer from-the-file True True"  # the package's reading of "false"
    assert reading("iam") == "Bearer token-1 False True"
