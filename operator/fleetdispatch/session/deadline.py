"""The deadline policy: from what the probes saw, decide whether a session lives on, and until when.

`decide(config, state, sample, now) -> (state, decision)` is a pure function: the supervisor's loop measures
(`probes`) and acts (signals, files), this module only judges. One attempt's rules:

- Activity in a poll interval is any session process above `cpu_percent_threshold` percent of one core, an
  ESTABLISHED connection to an `api_endpoints` entry, or output (a session process wrote bytes, or an
  `output_paths` file changed size). The first sighting of a process only primes its baseline, because a
  counter without an earlier reading says nothing about this interval.
- CPU share is CPU time over the monotonic time that really elapsed since the previous sample, so a late
  poll (a loaded node, a slow scan) dilutes the share instead of inflating it.
- When active: `deadline = max(deadline, min(now + 2 * poll, start + deadline_seconds +
  max_extension_seconds))`. Extension follows `now`, never shrinks the deadline and never passes the cap,
  so a session that is always busy is still stopped at the cap (the original tool extended from its first
  deadline, and so only once).
- The deadline passing stops the session with `DeadlineExceeded`; no output for `idle_output_seconds`
  stops it with `IdleTimeout` (0 disables it). The two timers are separate: an open API connection or CPU
  keeps the deadline moving but is not output, so a client idling on an open connection is still stopped.
  When both are due, the deadline wins, as in the original tool.
- The idle timer starts when the first session process is seen, because nothing can write before the
  session container starts (an image pull may take longer than the idle limit); the deadline counts from
  the supervisor's start.

Time: every instant here is on the monotonic clock the caller passes in, so a wall clock stepped backwards
or forwards (NTP, a suspended VM) neither extends nor kills. The shell converts to epoch seconds only to
express an instant (the `deadline` file, the outcome, the Lease), with one offset captured at start
(`WallClock`): the deadline it publishes is the one it enforces, and a later clock step does not move it.

`SupervisorConfig` is the supervisor's whole configuration and its command line (`to_args`, `parse`), in
one place, so that the operator's pod builder turns a spec into arguments with one call. Its defaults are
the CRD's defaults. It is standard library only: the supervisor must not import pydantic.

Deliberately not here: reading `/proc`, clocks, sleeping, signals, files, HTTP.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from fleetdispatch.session import protocol

DEFAULT_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
ENV_TOKEN_FILE = "FLEET_TOKEN_FILE"

ActivityReason = Literal["cpu", "api-connection", "output"]
StopReason = Literal["DeadlineExceeded", "IdleTimeout"]


@dataclass(frozen=True)
class SupervisorConfig:
    """What one supervisor enforces. The first six fields are `spec.timeouts` and `spec.activity`."""

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
    for flag, kind, minimum, meaning in (
        ("deadline-seconds", int, 1, "timeouts.deadlineSeconds: the initial budget"),
        ("max-extension-seconds", int, 0, "timeouts.maxExtensionSeconds: the cap past the budget; 0: none"),
        ("idle-output-seconds", int, 0, "timeouts.idleOutputSeconds: stop after no output this long; 0: off"),
        ("kill-grace-seconds", int, 0, "timeouts.killGraceSeconds: between TERM and KILL"),
        ("poll-seconds", float, 0.01, "activity.pollSeconds: how often the session is sampled"),
        ("cpu-percent-threshold", int, 1, "activity.cpuPercentThreshold: percent of one core that is active"),
    ):
        dest = flag.replace("-", "_")
        spec.add_argument(
            f"--{flag}",
            dest=dest,
            type=number(kind, minimum),
            default=getattr(default, dest),
            metavar="N",
            help=f"{meaning} (default {getattr(default, dest):g})",
        )
    spec.add_argument(
        "--api-endpoint",
        dest="api_endpoints",
        action="append",
        metavar="HOST:PORT",
        help="activity.apiEndpoints, repeatable: host:port, [ipv6]:port or :port (default :443)",
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


# -- the policy -----------------------------------------------------------------------------------------

ProcessKey = tuple[int, int]
"""A process as (pid, start time in clock ticks since boot): unique even when the pid is reused."""


@dataclass(frozen=True)
class Counters:
    """Cumulative counters of one process; `write_chars` is None when its `/proc/PID/io` is unreadable."""

    cpu_seconds: float
    write_chars: int | None = None


@dataclass(frozen=True)
class Sample:
    """What the probes saw in one poll."""

    processes: Mapping[ProcessKey, Counters] = field(default_factory=dict)
    api_connection: bool = False
    output_sizes: Mapping[str, int] = field(default_factory=dict)
    """Sizes of the `output_paths` files that exist; a missing file counts as empty."""


@dataclass(frozen=True)
class State:
    """One attempt's judgement so far; instants are monotonic seconds."""

    start: float
    deadline: float
    last_sample: float | None = None
    baselines: Mapping[ProcessKey, Counters] = field(default_factory=dict)
    output_sizes: Mapping[str, int] | None = None
    session_seen: bool = False
    last_activity: float | None = None
    activity_reason: ActivityReason | None = None
    last_output: float | None = None


@dataclass(frozen=True)
class Continue:
    """The session lives on; `extended_from` is the previous deadline when this poll moved it."""

    extended_from: float | None = None


@dataclass(frozen=True)
class Stop:
    """The session must be stopped, and why, with the figures behind the judgement."""

    reason: StopReason
    deadline: float
    cap: float
    last_activity: float | None
    activity_reason: ActivityReason | None
    last_output: float | None
    idle_seconds: float | None = None


Decision = Continue | Stop


def initial_state(config: SupervisorConfig, now: float) -> State:
    """The state at the supervisor's start: the deadline is the initial budget."""
    return State(start=now, deadline=now + config.deadline_seconds)


def cap(config: SupervisorConfig, state: State) -> float:
    """The latest instant the deadline may ever reach."""
    return state.start + config.cap_seconds


def next_check(config: SupervisorConfig, state: State) -> float:
    """The earliest instant a decision could change without new activity, so the loop can wake for it."""
    due = state.deadline
    if config.idle_output_seconds and state.last_output is not None:
        due = min(due, state.last_output + config.idle_output_seconds)
    return due


def _activity(
    config: SupervisorConfig, state: State, sample: Sample, now: float
) -> tuple[ActivityReason | None, bool]:
    """The reason this interval counts as active (None if it does not), and whether it produced output."""
    elapsed = None if state.last_sample is None else now - state.last_sample
    busy = wrote = False
    for key, counters in sample.processes.items():
        before = state.baselines.get(key)
        if before is None:
            continue
        if elapsed is not None and elapsed > 0:
            busy = busy or (counters.cpu_seconds - before.cpu_seconds) / elapsed * 100 > (
                config.cpu_percent_threshold
            )
        if counters.write_chars is not None and before.write_chars is not None:
            wrote = wrote or counters.write_chars > before.write_chars
    if state.output_sizes is not None:
        wrote = wrote or any(
            sample.output_sizes.get(path, 0) != state.output_sizes.get(path, 0)
            for path in config.output_paths
        )
    if wrote:
        return "output", True
    if busy:
        return "cpu", False
    if sample.api_connection:
        return "api-connection", False
    return None, False


def decide(config: SupervisorConfig, state: State, sample: Sample, now: float) -> tuple[State, Decision]:
    """Judge one sample taken at `now` (monotonic seconds); returns the new state and what to do."""
    reason, output = _activity(config, state, sample, now)
    first_sighting = not state.session_seen and bool(sample.processes)
    last_output = now if output or first_sighting else state.last_output
    deadline = state.deadline
    extended_from = None
    if reason is not None:
        extended = max(deadline, min(now + 2 * config.poll_seconds, cap(config, state)))
        if extended > deadline:
            extended_from, deadline = deadline, extended
    state = State(
        start=state.start,
        deadline=deadline,
        last_sample=now,
        baselines=dict(sample.processes),
        output_sizes=dict(sample.output_sizes),
        session_seen=state.session_seen or bool(sample.processes),
        last_activity=now if reason is not None else state.last_activity,
        activity_reason=reason if reason is not None else state.activity_reason,
        last_output=last_output,
    )

    def stop(why: StopReason, idle_seconds: float | None = None) -> Stop:
        return Stop(
            reason=why,
            deadline=state.deadline,
            cap=cap(config, state),
            last_activity=state.last_activity,
            activity_reason=state.activity_reason,
            last_output=state.last_output,
            idle_seconds=idle_seconds,
        )

    if now >= state.deadline:
        return state, stop(protocol.DEADLINE_EXCEEDED)
    if config.idle_output_seconds and last_output is not None:
        idle = now - last_output
        if idle >= config.idle_output_seconds:
            return state, stop(protocol.IDLE_TIMEOUT, idle)
    return state, Continue(extended_from=extended_from)


@dataclass(frozen=True)
class WallClock:
    """Expresses monotonic instants as epoch seconds, with the offset between the clocks taken once."""

    offset: float

    @classmethod
    def capture(cls, monotonic_now: float, wall_now: float) -> WallClock:
        return cls(offset=wall_now - monotonic_now)

    def epoch(self, monotonic_instant: float) -> float:
        return monotonic_instant + self.offset
