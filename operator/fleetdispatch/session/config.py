"""The supervisor's configuration and its command line: `SupervisorConfig`, its flags, `to_args` and `parse`.

`SupervisorConfig` is everything one supervisor enforces. The operator's pod builder turns a spec into
`fleetdispatch supervise` arguments with one call (`to_args`), and the supervisor turns them back (`parse`,
or `add_arguments` and `from_namespace` for the `fleetdispatch supervise` subcommand): one class, so the
two sides cannot disagree on a flag. Flags left out come from the pod's environment (the session marker,
the state directory, the Lease's pod, namespace and API server), then from the defaults.

The defaults of the spec's fields are copies of the CRD's (`crds/fleetdispatches.yaml`, the source of every
spec default); tests/unit/test_supervisor_config.py holds them, the flags' defaults and the README's table
to it. Standard library only: the operator's core imports this module too, and the supervisor must not
import pydantic.

Deliberately not here: any judgement (`deadline`), and anything that runs (`supervisor`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from fleetdispatch.session import protocol

DEFAULT_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
PidNamespace = Literal["pod", "any"]
"""`pod`: the supervisor runs in the session pod's own PID namespace, where every process but PID 1 and the
supervisor's own is the session's; `any`: processes are told apart by the session's environment marker."""
PID_NAMESPACES: tuple[PidNamespace, ...] = ("pod", "any")
ENV_TOKEN_FILE = "FLEET_TOKEN_FILE"


@dataclass(frozen=True)
class SupervisorConfig:
    """What one supervisor enforces. The first eight fields are `spec.timeouts` and `spec.activity`."""

    deadline_seconds: int = 3600
    max_extension_seconds: int = 7200
    idle_output_seconds: int = 1800
    kill_grace_seconds: int = 30
    poll_seconds: float = 10
    cpu_percent_threshold: int = 10
    api_endpoints: tuple[str, ...] = (":443",)
    output_paths: tuple[str, ...] = ()
    state_dir: str = protocol.DEFAULT_STATE_DIR
    dispatch: str = ""
    attempt: str = ""
    # The Lease heartbeat; it is off unless a token file exists and a pod name is known.
    pod_name: str | None = None
    # The pod's uid (downward API), so the Lease is owned by the pod and collected with it.
    pod_uid: str | None = None
    namespace: str | None = None
    api_server: str | None = None
    token_file: str = DEFAULT_TOKEN_FILE
    ca_file: str | None = None
    heartbeat_seconds: float = 30
    # Where the final figures go on exit: the supervisor container's termination message file.
    report_file: str | None = None
    # The operator's pod shares its PID namespace (shareProcessNamespace) and says so.
    pid_namespace: PidNamespace = "any"

    @property
    def cap_seconds(self) -> int:
        """How long after start the deadline may be at most."""
        return self.deadline_seconds + self.max_extension_seconds

    def to_args(self) -> list[str]:
        """The `fleetdispatch supervise` arguments that `parse` turns back into this configuration."""
        args = [
            f"--deadline-seconds={self.deadline_seconds}",
            f"--max-extension-seconds={self.max_extension_seconds}",
            f"--idle-output-seconds={self.idle_output_seconds}",
            f"--kill-grace-seconds={self.kill_grace_seconds}",
            f"--poll-seconds={self.poll_seconds:g}",
            f"--cpu-percent-threshold={self.cpu_percent_threshold}",
        ]
        args += [f"--api-endpoint={endpoint}" for endpoint in self.api_endpoints]
        if not self.api_endpoints:
            args.append("--no-api-endpoints")
        args += [f"--output-path={path}" for path in self.output_paths]
        args += [f"--state-dir={self.state_dir}", f"--dispatch={self.dispatch}", f"--attempt={self.attempt}"]
        for flag, value in (
            ("--pod-name", self.pod_name),
            ("--pod-uid", self.pod_uid),
            ("--namespace", self.namespace),
            ("--api-server", self.api_server),
            ("--ca-file", self.ca_file),
        ):
            if value is not None:
                args.append(f"{flag}={value}")
        if self.token_file != DEFAULT_TOKEN_FILE:
            args.append(f"--token-file={self.token_file}")
        if self.report_file is not None:
            args.append(f"--report-file={self.report_file}")
        if self.heartbeat_seconds != SupervisorConfig.heartbeat_seconds:
            args.append(f"--heartbeat-seconds={self.heartbeat_seconds:g}")
        if self.pid_namespace != SupervisorConfig.pid_namespace:
            args.append(f"--pid-namespace={self.pid_namespace}")
        return args

    @classmethod
    def parse(cls, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> SupervisorConfig:
        """The configuration from a command line; flags left out come from `environ`, then the defaults."""
        parser = argparse.ArgumentParser(
            prog="fleetdispatch supervise", description="Supervise one session attempt of a FleetDispatch."
        )
        add_arguments(parser, os.environ if environ is None else environ)
        return from_namespace(parser, parser.parse_args(list(argv)))


@dataclass(frozen=True)
class Endpoint:
    """One `apiEndpoints` entry: `host` is None for `:port` (any host)."""

    host: str | None
    port: int

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"apiEndpoints entry {text!r}: expected host:port, [ipv6]:port or :port")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host or None, int(port))


def _kubernetes_api_server(environ: Mapping[str, str]) -> str | None:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class SpecNumber(NamedTuple):
    """One flag of a number in the spec; its SupervisorConfig field is the flag with underscores."""

    flag: str
    kind: type[int] | type[float]
    minimum: float
    spec_field: str
    meaning: str

    @property
    def dest(self) -> str:
        return self.flag.replace("-", "_")


# The minimums are the CRD's, except a poll's: run by hand, the supervisor may poll more than once a second.
SPEC_NUMBERS = (
    SpecNumber("deadline-seconds", int, 1, "timeouts.deadlineSeconds", "the initial budget"),
    SpecNumber(
        "max-extension-seconds", int, 0, "timeouts.maxExtensionSeconds", "the cap past the budget; 0: none"
    ),
    SpecNumber(
        "idle-output-seconds", int, 0, "timeouts.idleOutputSeconds", "stop after no output this long; 0: off"
    ),
    SpecNumber("kill-grace-seconds", int, 0, "timeouts.killGraceSeconds", "between TERM and KILL"),
    SpecNumber("poll-seconds", float, 0.01, "activity.pollSeconds", "how often the session is sampled"),
    SpecNumber(
        "cpu-percent-threshold", int, 1, "activity.cpuPercentThreshold", "percent of one core that is active"
    ),
)


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Declare the supervisor's flags on `parser` (the `fleetdispatch supervise` subcommand)."""
    default = SupervisorConfig()

    def number(kind: type[int] | type[float], minimum: float) -> Callable[[str], int | float]:
        def convert(text: str) -> int | float:
            try:
                value = kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
            if not math.isfinite(value) or value < minimum:
                raise argparse.ArgumentTypeError(f"must be at least {minimum:g}: {text!r}")
            return value

        return convert

    spec = parser.add_argument_group("the spec (spec.timeouts and spec.activity)")
    for number_flag in SPEC_NUMBERS:
        value = getattr(default, number_flag.dest)
        spec.add_argument(
            f"--{number_flag.flag}",
            dest=number_flag.dest,
            type=number(number_flag.kind, number_flag.minimum),
            default=value,
            metavar="N",
            help=f"{number_flag.spec_field}: {number_flag.meaning} (default {value:g})",
        )
    spec.add_argument(
        "--api-endpoint",
        dest="api_endpoints",
        action="append",
        metavar="HOST:PORT",
        help="activity.apiEndpoints, repeatable: host:port, [ipv6]:port or :port "
        f"(default {' '.join(default.api_endpoints)})",
    )
    spec.add_argument(
        "--no-api-endpoints",
        action="store_true",
        help="activity.apiEndpoints: []: no connection counts as activity",
    )
    spec.add_argument(
        "--output-path",
        dest="output_paths",
        action="append",
        default=[],
        metavar="PATH",
        help="activity.outputPaths, repeatable: a file relative to the state directory",
    )
    session = parser.add_argument_group("the attempt")
    session.add_argument(
        "--state-dir",
        default=environ.get(protocol.ENV_STATE_DIR) or protocol.DEFAULT_STATE_DIR,
        help=f"the shared volume (default ${protocol.ENV_STATE_DIR} or {protocol.DEFAULT_STATE_DIR})",
    )
    session.add_argument(
        "--dispatch",
        default=environ.get(protocol.ENV_DISPATCH, ""),
        help=f"namespace/name: session processes carry it in {protocol.ENV_DISPATCH} (default: from env)",
    )
    session.add_argument(
        "--attempt",
        default=environ.get(protocol.ENV_ATTEMPT, ""),
        help=f"session processes carry it in {protocol.ENV_ATTEMPT} (default: from env)",
    )
    session.add_argument(
        "--pid-namespace",
        choices=PID_NAMESPACES,
        default=default.pid_namespace,
        help="pod: the supervisor is in the session pod's own PID namespace (shareProcessNamespace), where "
        "every process but PID 1 and the supervisor's is the session's, whatever its environment; any: "
        f"session processes are those with the marker (default {default.pid_namespace})",
    )
    lease = parser.add_argument_group("the Lease heartbeat (on when the token file exists)")
    lease.add_argument(
        "--pod-name", default=environ.get("POD_NAME"), help="the Lease's name (default $POD_NAME)"
    )
    lease.add_argument(
        "--pod-uid",
        default=environ.get("POD_UID"),
        help="the pod's uid: the Lease's owner, so it goes with the pod (default $POD_UID)",
    )
    lease.add_argument(
        "--namespace",
        default=environ.get("POD_NAMESPACE"),
        help="default $POD_NAMESPACE, else the `namespace` file beside the token",
    )
    lease.add_argument(
        "--api-server",
        default=_kubernetes_api_server(environ),
        help="http(s)://host:port (default from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT)",
    )
    lease.add_argument(
        "--token-file",
        default=environ.get(ENV_TOKEN_FILE) or DEFAULT_TOKEN_FILE,
        help=f"a service account token (default ${ENV_TOKEN_FILE} or {DEFAULT_TOKEN_FILE})",
    )
    lease.add_argument(
        "--ca-file", default=None, help="the API server's CA (default: ca.crt beside the token)"
    )
    spec.add_argument(
        "--report-file",
        metavar="PATH",
        help="on exit, write the final deadline and activity here as JSON (the operator's pod sets its "
        "termination message path, /dev/termination-log)",
    )
    lease.add_argument(
        "--heartbeat-seconds",
        type=number(float, 0.01),
        default=default.heartbeat_seconds,
        metavar="N",
        help=f"the Lease is renewed at most this often (default {default.heartbeat_seconds:g})",
    )


def from_namespace(parser: argparse.ArgumentParser, args: argparse.Namespace) -> SupervisorConfig:
    """The configuration from parsed flags; a missing marker is a usage error naming flag and variable."""
    if not args.dispatch or not args.attempt:
        parser.error(
            f"--dispatch and --attempt (or {protocol.ENV_DISPATCH} and {protocol.ENV_ATTEMPT}) are required: "
            "they mark the session processes to supervise"
        )
    for endpoint in args.api_endpoints or ():
        try:
            Endpoint.parse(endpoint)
        except ValueError as error:
            parser.error(f"--api-endpoint: {error}")
    for path in args.output_paths:
        if path.startswith("/") or ".." in path.split("/"):
            parser.error(f"--output-path {path!r}: relative to --state-dir, without '..'")
    names = {f.name for f in dataclasses.fields(SupervisorConfig)}
    values = {key: value for key, value in vars(args).items() if key in names}
    if args.no_api_endpoints and args.api_endpoints:
        parser.error("--no-api-endpoints and --api-endpoint contradict each other")
    values["api_endpoints"] = (
        () if args.no_api_endpoints else tuple(args.api_endpoints or SupervisorConfig.api_endpoints)
    )
    values["output_paths"] = tuple(args.output_paths)
    return SupervisorConfig(**values)
