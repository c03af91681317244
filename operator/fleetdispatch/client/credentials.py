"""Credentials for the Kubernetes API, found the way kubectl and controller-runtime find them.

`load` is the one way the operator finds them, in this order: the kubeconfig given (`--kubeconfig`, and
`--context` or its current context); else `$KUBECONFIG` (several files, merged as kubectl merges them: the
first file to define a name wins, and the first to set a current context); else the in-cluster service
account (`$KUBERNETES_SERVICE_HOST` and its token file); else `~/.kube/config`.

A context whose user has only a client certificate and key (files or data) and a token or token file,
and whose cluster has a server, a CA (file or data) or `insecure-skip-tls-verify`, is read here, as the
`kubernetes` package reads it (its quirks too: a client certificate's relative path is relative to the
cluster's file): importing that package costs a command most of a second. Any other context is read by the
package, and the in-cluster service account is read here as its `InClusterConfigLoader` reads it
(tests/unit/test_credentials.py holds both readings against the package's).

The `kubernetes` package reads the rest and runs what it names: exec credential plugins (EKS's
`aws eks get-token`, GKE's `gke-gcloud-auth-plugin`, AKS's `kubelogin`) and auth providers. Its refresh
hook (`Configuration.refresh_api_key_hook`) renews a token that expires; `Credentials.authorization()`
calls it before the expiry (5 minutes before, as the package does, or half-way through a token's life when
that is shorter), so no request is sent with an expired token. A token file (the in-cluster service
account's, which the kubelet rotates, or a kubeconfig's `tokenFile`) is read again every minute.

`Credentials.connection_info()` is the same credentials for kopf's login, with the expiry at which kopf
logs in again. `select` and `selected` hand the command line's choice to that login.

A problem is a `CredentialsError` whose message is one line: what is wrong and where (the file, the
context, the plugin's own error).

Deliberately not here: a cluster's `tls-server-name` and `proxy-url` (the operator's client does not use
them), renewing a client certificate that an exec plugin gave (it is read once), and kubectl's
`--user`/`--cluster` overrides.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import math
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVICE_ACCOUNT_TOKEN = f"{SERVICE_ACCOUNT_DIR}/token"
SERVICE_ACCOUNT_CA = f"{SERVICE_ACCOUNT_DIR}/ca.crt"
SERVICE_ACCOUNT_NAMESPACE = f"{SERVICE_ACCOUNT_DIR}/namespace"
DEFAULT_KUBECONFIG = "~/.kube/config"
TOKEN_REREAD_SECONDS = 60.0
# The kubernetes package's margin (kube_config.EXPIRY_SKEW_PREVENTION_DELAY): its hook renews a token once
# it is this close to its expiry, so renewing any earlier would not run the plugin.
RENEW_BEFORE = datetime.timedelta(minutes=5)
# After a renewal that failed (or gave no later expiry), how long until the plugin is run again.
RENEW_RETRY_SECONDS = 10.0


class CredentialsError(Exception):
    """No usable credentials; the message is one line that says what is wrong and where."""


def _one_line(error: object) -> str:
    return " ".join(str(error).split())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# Where the kubernetes package's loaders put the Authorization header: `BearerToken` in its releases after
# 36.0.1, `authorization` before (kopf's own login reads both, too).
_HEADER_KEY, _OLD_HEADER_KEY = "BearerToken", "authorization"


def _header(configuration: Any) -> str | None:
    """The header a loader set, without calling the refresh hook."""
    header = configuration.api_key.get(_HEADER_KEY) or configuration.api_key.get(_OLD_HEADER_KEY)
    return str(header) if header else None


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger(__name__)


@contextlib.contextmanager
def _kubernetes_log() -> Iterator[list[str]]:
    """What the kubernetes package's kubeconfig loader logs while it runs: it logs a failing exec plugin
    (with its exit code and standard error) to the root logger and carries on without a token, so the
    error is collected here, and kept off the log, to be reported as a `CredentialsError`."""
    import logging  # here: only the kubernetes package's reading logs (kubectl fleet need not load it)

    messages: list[str] = []
    root = logging.getLogger()

    def collect(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and f"kubernetes{os.sep}config" in record.pathname:
            messages.append(_one_line(record.getMessage()))
            return False
        return True

    # The module-level `logging.error` configures a stderr handler when the root has none: never that.
    quiet = logging.NullHandler() if not root.handlers else None
    if quiet is not None:
        root.addHandler(quiet)
    root.addFilter(collect)
    try:
        yield messages
    finally:
        root.removeFilter(collect)
        if quiet is not None:
            root.removeHandler(quiet)


class RenewableToken:
    """An Authorization header from the kubernetes package's `Configuration`, renewed through its refresh
    hook before the token expires (an exec plugin's or an auth provider's token)."""

    def __init__(self, configuration: Any, loader: Any, what: str) -> None:
        self._configuration = configuration
        self._loader = loader
        self._what = what
        self._lock = threading.Lock()
        # The header the loader set, read without calling the hook (which would renew a short-lived token).
        self.header = _header(configuration)
        self._obtained = _now()
        self._retry_at = -math.inf
        self.error: str | None = None

    @property
    def expiry(self) -> datetime.datetime | None:
        """When the current token expires, when its plugin said (`status.expirationTimestamp`)."""
        expiry = vars(self._loader).get("expiry")
        return expiry if isinstance(expiry, datetime.datetime) else None

    def renew_at(self) -> datetime.datetime | None:
        expiry = self.expiry
        if expiry is None:
            return None
        return expiry - min(RENEW_BEFORE, max(expiry - self._obtained, datetime.timedelta(0)) / 2)

    def due(self) -> bool:
        """Whether the next `authorization()` renews the token (it may run a plugin: seconds)."""
        renew_at = self.renew_at()
        return renew_at is not None and _now() >= renew_at and time.monotonic() >= self._retry_at

    def expired(self) -> bool:
        expiry = self.expiry
        return expiry is not None and _now() >= expiry

    def authorization(self) -> str | None:
        with self._lock:
            if self.due():
                self._renew()
            return self.header

    def _renew(self) -> None:
        before = self.expiry
        with _kubernetes_log() as errors:
            try:
                header = self._configuration.get_api_key_with_prefix(_HEADER_KEY, alias=_OLD_HEADER_KEY)
            except Exception as error:  # the package's loader raises what its parts raise
                errors.append(_one_line(error))
        renewed = not errors and (before is None or (self.expiry is not None and self.expiry > before))
        if not renewed:
            self._retry_at = time.monotonic() + RENEW_RETRY_SECONDS
            self.error = errors[-1] if errors else "the plugin gave no later expiry"
            _logger().warning(
                "%s: renewing the token failed, keeping the current one: %s", self._what, self.error
            )
            return
        self.header, self._obtained, self.error = header, _now(), None
        _logger().info("%s: token renewed, valid until %s", self._what, self.expiry)


class _TokenFile:
    """The last good token of a token file, read again once `period` seconds have passed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: str | None = None
        self._read_at = -math.inf

    def token(self, path: str, period: float) -> str | None:
        with self._lock:
            if time.monotonic() - self._read_at >= period:
                # On a read error keep the token we have: a rotation writes the file anew, which may fail
                # a read in between, and an expired token shows up as a 401 where it is used.
                with contextlib.suppress(OSError):
                    self._token = Path(path).read_text(encoding="utf-8").strip() or self._token
                self._read_at = time.monotonic()
            return self._token


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate to it: a bearer token (static, from a token file, or
    renewable), a client certificate, or none; and the server's CA."""

    server: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    certificate_file: str | None = None
    key_file: str | None = None
    namespace: str | None = None
    source: str = "explicit credentials"
    token_reread_seconds: float = TOKEN_REREAD_SECONDS
    renewable: RenewableToken | None = field(default=None, compare=False, repr=False)
    _file: _TokenFile = field(default_factory=_TokenFile, init=False, compare=False, repr=False)

    def authorization(self) -> str | None:
        """The Authorization header's value now: a renewable token renewed when due (this may run a plugin
        and block), a token file read again when its period has passed."""
        if self.renewable is not None:
            return self.renewable.authorization()
        token = self.token
        if self.token_file:
            token = self._file.token(self.token_file, self.token_reread_seconds) or token
        return f"Bearer {token}" if token else None

    def renewal_due(self) -> bool:
        """Whether `authorization()` would renew a token now (an async caller runs it in a thread then)."""
        return self.renewable is not None and self.renewable.due()

    def ssl_context(self) -> ssl.SSLContext | bool:
        """For aiohttp: True (the system's CAs) for plain http, else a context with the cluster's CA (or no
        verification when `insecure`) and the client certificate, which `insecure` must not drop: the
        server would then take the caller for `system:anonymous`."""
        if not self.server.startswith("https"):
            return True
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.certificate_file:
            context.load_cert_chain(self.certificate_file, self.key_file)
        return context

    def connection_info(self) -> Any:
        """These credentials as kopf's `ConnectionInfo`, expiring when the token is due for renewal (kopf
        then logs in again); a renewable token that has expired and could not be renewed raises."""
        import kopf

        header = self.authorization()
        if self.renewable is not None and self.renewable.expired():
            raise CredentialsError(f"{self.source}: the token has expired: {self.renewable.error}")
        scheme, _, token = (header or "").partition(" ")
        return kopf.ConnectionInfo(
            server=self.server,
            ca_path=self.ca_file,
            ca_data=None if self.ca_file else self.ca_data,
            insecure=self.insecure,
            scheme=scheme or None,
            token=token or None,
            certificate_path=self.certificate_file,
            private_key_path=self.key_file,
            default_namespace=self.namespace,
            expiration=self.renewable.renew_at() if self.renewable is not None else None,
        )

    @classmethod
    def from_connection(cls, info: Any, token_file: str | None = None) -> Credentials:
        """From a `kopf.ConnectionInfo`: its files as paths, its inline data written to private files.

        `token_file` is where the token came from, to be re-read: a projected service account token is
        rotated by the kubelet while the operator runs.
        """

        def as_file(path: Any, data: Any, suffix: str) -> str | None:
            if path:
                return str(path)
            if not data:
                return None
            file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for the process lifetime
                prefix="fleetdispatch-", suffix=suffix, delete=False
            )
            file.write(data if isinstance(data, bytes) else str(data).encode())
            file.close()
            return file.name

        ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        return cls(
            server=str(info.server).rstrip("/"),
            token=info.token,
            token_file=token_file,
            ca_file=str(info.ca_path) if info.ca_path else None,
            ca_data=ca_data,
            insecure=bool(info.insecure),
            certificate_file=as_file(info.certificate_path, info.certificate_data, ".crt"),
            key_file=as_file(info.private_key_path, info.private_key_data, ".key"),
            namespace=info.default_namespace,
            source="kopf's login",
        )


# ---- finding them -------------------------------------------------------------------------------------


def load(
    kubeconfig: str | None = None, context: str | None = None, environ: Mapping[str, str] | None = None
) -> Credentials:
    """The credentials, in controller-runtime's order (see the module's docstring)."""
    environ = os.environ if environ is None else environ
    if (
        kubeconfig is None
        and not environ.get("KUBECONFIG")
        and context is None
        and in_cluster_available(environ)
    ):
        return in_cluster(environ)
    return from_kubeconfig(kubeconfig, context, environ)


def in_cluster_available(environ: Mapping[str, str], token_file: str = SERVICE_ACCOUNT_TOKEN) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST") and environ.get("KUBERNETES_SERVICE_PORT")) and (
        os.path.isfile(token_file)
    )


def in_cluster(
    environ: Mapping[str, str] | None = None,
    *,
    token_file: str = SERVICE_ACCOUNT_TOKEN,
    ca_file: str = SERVICE_ACCOUNT_CA,
    namespace_file: str = SERVICE_ACCOUNT_NAMESPACE,
    token_reread_seconds: float = TOKEN_REREAD_SECONDS,
) -> Credentials:
    """The pod's service account: the server from `$KUBERNETES_SERVICE_HOST`/`_PORT`, the token file read
    again every `token_reread_seconds` (the kubelet rotates it), the CA beside it.

    Read as the kubernetes package's `InClusterConfigLoader` reads it, with its messages."""
    environ = os.environ if environ is None else environ
    try:
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        if host is None or port is None:
            raise CredentialsError("Service host/port is not set.")
        if not host or not port:
            raise CredentialsError("Service host/port is set but empty.")
        # Go's net.JoinHostPort: an IPv6 address in brackets.
        server = f"https://[{host}]:{port}" if ":" in host or "%" in host else f"https://{host}:{port}"
        if not os.path.isfile(token_file):
            raise CredentialsError("Service token file does not exist.")
        token = Path(token_file).read_text(encoding="utf-8")
        if not token:
            raise CredentialsError("Token file exists but empty.")
        if not os.path.isfile(ca_file):
            raise CredentialsError("Service certification file does not exist.")
        if not Path(ca_file).read_text(encoding="utf-8"):
            raise CredentialsError("Cert file exists but empty.")
    except (CredentialsError, OSError, UnicodeDecodeError) as error:
        raise CredentialsError(f"in-cluster service account: {_one_line(error)}") from None
    namespace = None
    with contextlib.suppress(OSError):
        namespace = Path(namespace_file).read_text(encoding="utf-8").strip() or None
    return Credentials(
        server=server,
        token=token.strip() or None,
        token_file=token_file,
        ca_file=ca_file,
        namespace=namespace,
        source=f"in-cluster service account ({token_file})",
        token_reread_seconds=token_reread_seconds,
    )


def _kubeconfig_files(
    kubeconfig: str | None, environ: Mapping[str, str]
) -> tuple[list[tuple[str, dict[str, Any]]], str]:
    """The kubeconfig files to merge, read and parsed, and how to name them in a message."""
    import yaml

    if kubeconfig is not None:
        paths, where, explicit = [kubeconfig], f"kubeconfig {kubeconfig}", True
    elif environ.get("KUBECONFIG"):
        listed = environ["KUBECONFIG"]
        paths, where, explicit = [p for p in listed.split(os.pathsep) if p], f"$KUBECONFIG ({listed})", False
    else:
        paths, where, explicit = [DEFAULT_KUBECONFIG], f"kubeconfig {DEFAULT_KUBECONFIG}", False
    documents = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not explicit and not path.exists():
            continue  # kubectl skips the files of $KUBECONFIG that do not exist
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            raise CredentialsError(f"cannot read kubeconfig {path}: {_one_line(reason)}") from None
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise CredentialsError(f"kubeconfig {path} is not YAML: {_one_line(error)}") from None
        if document is None:
            continue  # an empty file, as kubectl takes it
        if not isinstance(document, dict):
            raise CredentialsError(f"kubeconfig {path} is not a kubeconfig (not a YAML mapping)")
        documents.append((str(path), document))
    if not documents:
        if environ.get("KUBECONFIG"):
            raise CredentialsError(f"no kubeconfig: none of the files in {where} exists")
        in_cluster_note = "not in a cluster (no $KUBERNETES_SERVICE_HOST and service account token)"
        raise CredentialsError(
            f"no credentials: {in_cluster_note}, no $KUBECONFIG, and no {DEFAULT_KUBECONFIG}; "
            "give one with --kubeconfig"
        )
    return documents, where


def _named(documents: list[tuple[str, dict[str, Any]]], kind: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The entries of one list (clusters, contexts, users) by name, with their file: the first wins."""
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for path, document in documents:
        for entry in document.get(kind) or ():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                found.setdefault(entry["name"], (path, entry.get(kind[:-1]) or {}))
    return found


def from_kubeconfig(
    kubeconfig: str | None = None, context: str | None = None, environ: Mapping[str, str] | None = None
) -> Credentials:
    """One context of a kubeconfig (`kubeconfig`, else `$KUBECONFIG`, else ~/.kube/config): `context`, or
    the current context; its exec plugin, if any, is run now."""
    environ = os.environ if environ is None else environ
    documents, where = _kubeconfig_files(kubeconfig, environ)
    contexts = _named(documents, "contexts")
    choices = ", ".join(contexts) or "none"
    if context is None:
        context = next((str(d["current-context"]) for _, d in documents if d.get("current-context")), None)
        if context is None:
            raise CredentialsError(f"{where} has no current-context: choose one with --context ({choices})")
    if context not in contexts:
        raise CredentialsError(f"{where} has no context {context!r} (it has: {choices})")
    what = f"{where}, context {context!r}"
    settings = contexts[context][1]
    user_name = settings.get("user")
    user_file, user = _named(documents, "users").get(str(user_name), ("", {}))
    if user_name and not user:
        raise CredentialsError(f"{what}: no user {user_name!r}")
    cluster_name = settings.get("cluster")
    cluster_file, cluster = _named(documents, "clusters").get(str(cluster_name), ("", {}))
    if not cluster.get("server"):
        raise CredentialsError(f"{what}: cluster {cluster_name!r} has no server")

    try:
        if _plain(documents, settings, user, cluster):
            read = _read_plainly(user, user_file, cluster, cluster_file)
        else:
            read = _read_with_kubernetes(documents, context)
    except Exception as error:  # ConfigException, and whatever its file, base64 and plugin reads raise
        raise CredentialsError(f"{what}: {_one_line(error)}") from None
    header = read.header
    plugin = user.get("exec") or user.get("auth-provider")
    if isinstance(plugin, dict) and (read.errors or not (header or read.certificate_file)):
        name = plugin.get("command") or plugin.get("name") or "?"
        reason = read.errors[-1] if read.errors else "it gave neither a token nor a client certificate"
        raise CredentialsError(f"{what}: the credential plugin {name!r} failed: {reason}")
    common: dict[str, Any] = {
        "server": read.host,
        "ca_file": read.ca_file,
        "insecure": not read.verify_ssl,
        "certificate_file": read.certificate_file,
        "key_file": read.key_file,
        "namespace": settings.get("namespace") or None,
        "source": f"{what} (user {user_name})" if user_name else what,
    }
    if plugin or (header and not header.startswith("Bearer ")):
        # Renewable (a plugin's), or another scheme (Basic): the header comes from the package's hook.
        renewable = RenewableToken(read.configuration, read.loader, common["source"])
        return Credentials(**common, renewable=renewable)
    token = header.partition(" ")[2].strip() if header else None
    token_file = None
    if user.get("tokenFile") and not user.get("token"):
        token_file = os.path.join(os.path.dirname(user_file), os.path.expanduser(str(user["tokenFile"])))
    return Credentials(**common, token=token, token_file=token_file)


@dataclass(frozen=True)
class _Read:
    """A kubeconfig context as the kubernetes package's `Configuration` holds it once its loader ran."""

    host: str
    ca_file: str | None = None
    certificate_file: str | None = None
    key_file: str | None = None
    verify_ssl: bool = True
    header: str | None = None
    # The package's own objects, when it read the context: their refresh hook renews a plugin's token.
    configuration: Any = None
    loader: Any = None
    # What the package logged as it read (a failing exec plugin).
    errors: tuple[str, ...] = ()


def _read_with_kubernetes(documents: list[tuple[str, dict[str, Any]]], context: str) -> _Read:
    from kubernetes.client import Configuration
    from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

    configuration = Configuration()
    with _kubernetes_log() as errors:
        files = os.pathsep.join(path for path, _ in documents)
        merged = KubeConfigMerger(files).config  # type: ignore[no-untyped-call]
        loader = KubeConfigLoader(  # type: ignore[no-untyped-call]
            config_dict=merged, active_context=context, config_base_path=None
        )
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    return _Read(
        host=str(configuration.host),
        ca_file=configuration.ssl_ca_cert or None,
        certificate_file=configuration.cert_file or None,
        key_file=configuration.key_file or None,
        verify_ssl=bool(configuration.verify_ssl),
        header=_header(configuration),
        configuration=configuration,
        loader=loader,
        errors=tuple(errors),
    )


# The fields of a user and of a cluster that `_read_plainly` reads as the kubernetes package does. A user
# with any other (`exec`, `auth-provider`, `username`/`password`, ...) is the package's to read.
_PLAIN_USER = frozenset(
    {"client-certificate", "client-certificate-data", "client-key", "client-key-data", "token", "tokenFile"}
)
_PLAIN_CLUSTER = frozenset({"server", "certificate-authority", "certificate-authority-data"})
# Fields the package sets on its `Configuration` or ignores, and the credentials do not use.
_UNUSED = frozenset({"tls-server-name", "proxy-url", "extensions"})


def _plain(
    documents: list[tuple[str, dict[str, Any]]],
    settings: dict[str, Any],
    user: dict[str, Any],
    cluster: dict[str, Any],
) -> bool:
    """Whether `_read_plainly` gives this context exactly as the kubernetes package would: files whose
    lists the package merges as `_named` does, and a user and cluster of the usual fields, each a
    non-empty string (`insecure-skip-tls-verify` a boolean). Anything else, and the package's own errors
    for it, are left to the package."""

    def text(value: object) -> bool:
        return isinstance(value, str) and value != ""

    for path, document in documents:
        if os.pathsep in path:
            return False  # the package splits the list of files on it
        for kind in ("clusters", "contexts", "users"):
            entries = document.get(kind)
            if entries is None:
                continue
            if not isinstance(entries, list):
                return False
            if not all(isinstance(entry, dict) and isinstance(entry.get("name"), str) for entry in entries):
                return False
    if not isinstance(user, dict) or not isinstance(cluster, dict):
        return False
    user_name = settings.get("user")
    if not (user_name is None or text(user_name)) or not text(settings.get("cluster")):
        return False
    for stanza, plain in ((user, _PLAIN_USER), (cluster, _PLAIN_CLUSTER)):
        for key, value in stanza.items():
            if key in _UNUSED:
                if value is None:
                    return False  # the package fails on it
            elif key == "insecure-skip-tls-verify" and stanza is cluster:
                if not isinstance(value, bool):
                    return False  # the package takes a string for its truth: "false" skips the check
            elif key not in plain or not text(value):
                return False
    return True


def _read_plainly(user: dict[str, Any], user_file: str, cluster: dict[str, Any], cluster_file: str) -> _Read:
    """What the kubernetes package's `KubeConfigLoader` makes of a `_plain` context, in its order (the
    token, then the CA, the certificate and the key) and with its messages."""
    token = user.get("token")
    if token is None and "tokenFile" in user:
        with open(_relative_to(user_file, user["tokenFile"]), encoding="utf-8") as file:
            token = file.read()
    host = str(cluster["server"]).rstrip("/")
    ca_file = certificate_file = key_file = None
    if host.startswith("https"):
        # All three relative to the cluster's file, as the package takes them.
        ca_file = _file_or_data(cluster, "certificate-authority", cluster_file)
        certificate_file = _file_or_data(user, "client-certificate", cluster_file)
        key_file = _file_or_data(user, "client-key", cluster_file)
    return _Read(
        host=host,
        ca_file=ca_file,
        certificate_file=certificate_file,
        key_file=key_file,
        verify_ssl=not cluster.get("insecure-skip-tls-verify", False),
        header=f"Bearer {token}" if token else None,
    )


def _relative_to(kubeconfig: str, path: str) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(os.path.dirname(kubeconfig)), path))


def _file_or_data(stanza: dict[str, Any], key: str, kubeconfig: str) -> str | None:
    """`key-data` (base64) as a private file, else the file `key` names; the package's `FileOrData`."""
    if f"{key}-data" in stanza:
        return _data_file(base64.standard_b64decode(str(stanza[f"{key}-data"]).encode()))
    if key not in stanza:
        return None
    path = _relative_to(kubeconfig, str(stanza[key]))
    if not os.path.isfile(path):
        raise CredentialsError(f"File does not exist: {path}")
    return path


_data_files: dict[bytes, str] = {}


def _data_file(content: bytes) -> str:
    """A private file with `content`, one per content, removed when the process exits (as the package
    keeps them)."""
    if not os.path.isfile(_data_files.get(content, "")):  # not written yet, or removed since
        if not _data_files:
            atexit.register(_remove_data_files)
        descriptor, name = tempfile.mkstemp(prefix="fleetdispatch-")
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        _data_files[content] = name
    return _data_files[content]


def _remove_data_files() -> None:
    for name in _data_files.values():
        with contextlib.suppress(OSError):
            os.remove(name)
    _data_files.clear()


# ---- the command line's choice, for kopf's login --------------------------------------------------------

_selected: Credentials | None = None


def select(credentials: Credentials | None) -> None:
    """Make these the credentials `selected` gives (`fleetdispatch operator` does, before kopf starts)."""
    global _selected  # noqa: PLW0603 - one choice per process, made by its command line
    _selected = credentials


def selected() -> Credentials:
    """The credentials the command line selected, else found by `load` (as under `kopf run -m`) and kept:
    one object per process, so a renewal by one user of it serves all (kopf's login and the client)."""
    if _selected is None:
        select(load())
    assert _selected is not None
    return _selected
