"""The `fleetdispatch` command: one entry point, one subcommand per job.

`validate` checks manifests offline exactly as the API server (CRD schema and CEL rules) and the operator
(the models) would, so a GitOps pipeline can refuse a bad dispatch before it reaches a cluster. `supervise`
runs beside a session as its pod's sidecar (see `supervisor`). `dev` runs the dev cluster (see
`devcluster`) with the operator in it. `operator` runs the operator (see `controller`). `quota-guard` runs
inside a session, when its upstream quota is exhausted (see `quotaguard`).

Each subcommand imports its modules only when it runs, and only its own flags are declared (the operator's
come from its settings model, pydantic): `supervise` imports the standard library and `fleetdispatch.session`
alone, since the sidecar's memory budget (25 MiB, bench/supervise_memory.py) leaves no room for pydantic,
kopf, kubernetes or the CEL evaluator, which `validate` and the operator need.

`operator` takes the conventions of Kubernetes tools: `--kubeconfig` and `--context` (see
`client.credentials` for where credentials come from otherwise), `--log-level` and `--log-format text|json`
(json: one object per line with time, level, logger and message). Credentials that are missing or do not
work give one line on standard error and exit 1, never a traceback. With `--leader-election=true` it is one
of several replicas and runs kopf only while it holds the Lease (see `controller.leadership`); by hand and
in `dev` it is off: one process, acting alone.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from fleetdispatch import __version__

if TYPE_CHECKING:
    import logging

    from fleetdispatch.api.settings import OperatorSettings
    from fleetdispatch.client.credentials import Credentials

MANIFEST_SUFFIXES = (".yaml", ".yml")


STDIN = "-"


def _manifest_files(paths: Sequence[str]) -> Iterator[str]:
    for raw in paths:
        path = Path(raw)
        if raw != STDIN and path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            yield from found or [raw]  # an empty folder is named, so that it is reported
        else:
            yield raw


def _read(file: str, stdin: TextIO, limit: int) -> str:
    """The text of `file` (`-`: standard input), at most `limit` characters read: a file, a pipe or a
    device larger than that is refused without being read whole."""
    if file == STDIN:
        text = stdin.read(limit + 1)
    elif Path(file).is_dir():
        raise ValueError("a folder with no .yaml or .yml files in it")
    else:
        with open(file, "rb") as handle:
            data = handle.read(4 * limit + 1)  # a character is at most 4 bytes of UTF-8
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"not UTF-8 text (byte {error.start} cannot be decoded)") from None
    if len(text) > limit:
        raise ValueError(f"larger than {limit // 2**20} MiB, the API server's request limit")
    return text


def validate(paths: Sequence[str], out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """Check every fleet.dispatch.dev manifest under `paths` (`-` is standard input); 0 when all are valid.

    A file that cannot be read, is not YAML, holds no object, or is YAML no API server would be sent (an
    alias bomb, too deep, too large: see `validation.manifests`) is one line and counts as invalid; nothing
    here ends in a traceback."""
    from fleetdispatch.validation import manifests

    write = (out or sys.stdout).write
    checked = invalid = 0
    for file in _manifest_files(paths):
        try:
            text = _read(file, stdin or sys.stdin, manifests.MAX_FILE_CHARACTERS)
            documents = list(manifests.documents(text))
        except (OSError, ValueError) as error:
            write(f"{file}: cannot read: {error}\n")
            invalid += 1
            continue
        if not documents:
            write(f"{file}: cannot read: no objects in it (a manifest is a YAML mapping)\n")
            invalid += 1
            continue
        for manifest in documents:
            try:
                verdict = manifests.check(manifest)
            except Exception as error:  # a bug of ours: said in one line, and the other files still checked
                write(f"{file}: internal error, please report it: {type(error).__name__}: {error}\n")
                invalid += 1
                continue
            if verdict.skipped:
                continue
            checked += 1
            if verdict.valid:
                write(f"{file}: {verdict.kind} {verdict.name!r} is valid\n")
            else:
                invalid += 1
                write(f"{file}: {verdict.explain()}\n")
                if verdict.api_errors and verdict.model_error:
                    write(f"  (the operator would report: {verdict.model_error})\n")
    write(f"{checked} fleet.dispatch.dev manifests checked, {invalid} invalid\n")
    return 1 if invalid else 0


def run_dev(kubeconfig: Path, port: int, runtime: str, operator: bool, data_dir: Path | None) -> int:
    """``fleetdispatch dev``: serve the dev cluster until Ctrl-C or SIGTERM; 1 if a part of it died."""
    import asyncio

    try:
        from fleetdispatch.devcluster import stack
        from fleetdispatch.devcluster.controlplane import ControlPlaneError
    except ImportError as error:  # cryptography, for the cluster's certificates
        print(
            f"fleetdispatch dev: {error}: install the dev extra (pip install 'fleet-dispatch[dev]')",
            file=sys.stderr,
        )
        return 1

    def announce(line: str) -> None:
        print(line, flush=True)

    modes: dict[str, stack.RuntimeMode] = {"instant": "instant", "containers": "containers"}
    mode = modes.get(runtime, "local")
    try:
        return asyncio.run(
            stack.serve(
                kubeconfig_path=kubeconfig,
                port=port,
                runtime=mode,
                announce=announce,
                operator=operator,
                data_dir=data_dir,
            )
        )
    except (ControlPlaneError, RuntimeError) as error:
        print(f"fleetdispatch dev: {error}", file=sys.stderr)
        return 1


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")


def _log_formatter(log_format: str) -> logging.Formatter:
    """text: kopf's own layout (time, logger, level, `[namespace/name]` of the object, message); json: one
    object per line with time, level, logger and message (and the object, an exception, when there are)."""
    import json
    import logging

    from fleetdispatch.session import protocol

    def about(record: logging.LogRecord) -> dict[str, Any] | None:
        ref = getattr(record, "k8s_ref", None)  # kopf's per-object loggers carry the object
        return (
            {k: ref[k] for k in ("kind", "namespace", "name") if ref.get(k)}
            if isinstance(ref, dict)
            else None
        )

    class Text(logging.Formatter):
        def __init__(self) -> None:
            super().__init__("[%(asctime)s] %(name)-20.20s [%(levelname)-8.8s] %(message)s")

        def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
            ref = about(record)
            if ref and ref.get("name"):
                where = "/".join(ref[k] for k in ("namespace", "name") if k in ref)
                record.message = f"[{where}] {record.message}"
            return super().formatMessage(record)

    class Json(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            entry: dict[str, Any] = {
                "time": protocol.format_micro_time(record.created),
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
            ref = about(record)
            if ref:
                entry["object"] = ref
            if record.exc_info:
                entry["exception"] = self.formatException(record.exc_info)
            if record.stack_info:
                entry["stack"] = self.formatStack(record.stack_info)
            return json.dumps(entry, default=str)

    return Json() if log_format == "json" else Text()


def _configure_logging(level: str, log_format: str, verbose: bool) -> Callable[[str], None]:
    """Everything to standard error in `log_format`; returns how to report a fatal problem in one line
    (plain for text, a log object for json)."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_log_formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        # As kopf's own configuration does: asyncio's debug chatter only when debugging.
        quiet = logging.getLogger("asyncio")
        quiet.propagate = False
        quiet.handlers[:] = [logging.NullHandler()]
    if not verbose:
        # kopf logs every handled event at INFO: at campaign scale that is most of the log and of the CPU.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if log_format == "json":
        fail = logging.getLogger("fleetdispatch.operator")
        return fail.error
    return lambda message: print(f"fleetdispatch operator: {message}", file=sys.stderr, flush=True)


# A server that cannot be reached is asked again after these pauses (a restarting API server, a cut
# connection) before the operator gives up; a rejection (401) is final at once.
LOGIN_RETRY_SECONDS = (0.5, 1.0, 2.0)


async def _log_in(found: Credentials, retry_seconds: Sequence[float] = LOGIN_RETRY_SECONDS) -> str | None:
    """Who the API server says `found` authenticate as; a `CredentialsError` when it rejects
    them or cannot be reached, so that kopf never starts with credentials that cannot work."""
    import asyncio

    import aiohttp

    from fleetdispatch.client.credentials import CredentialsError
    from fleetdispatch.client.kubeapi import ApiError, KubeApi

    api = KubeApi(found, user_agent="fleet-dispatch")
    try:
        pauses = list(retry_seconds)
        while True:
            try:
                return await api.whoami()
            except ApiError as error:
                raise CredentialsError(
                    f"the API server at {found.server} rejects {found.source}: {error}"
                ) from None
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                if not pauses:
                    reason = " ".join(str(error).split()) or type(error).__name__
                    raise CredentialsError(
                        f"cannot reach the API server at {found.server} of {found.source}: {reason}"
                    ) from None
            await asyncio.sleep(pauses.pop(0))
    finally:
        await api.close()


async def _run_elected(options: OperatorSettings, found: Credentials, namespaces: Sequence[str]) -> None:
    """The operator as one of several replicas: kopf runs only while this one holds the Lease."""
    from fleetdispatch.client.kubeapi import KubeApi
    from fleetdispatch.controller import handlers, leadership
    from fleetdispatch.controller.metrics import Metrics, api_trace

    metrics = Metrics()  # the Lease's requests are the operator's too: counted with kopf's and the workers'
    kube = KubeApi(found, user_agent="fleet-dispatch/leader-election", trace_configs=[api_trace(metrics)])
    try:
        await leadership.run_elected(
            options,
            kube,
            found.namespace,
            lambda: handlers.run(options, namespaces=namespaces, metrics=metrics),
        )
    finally:
        await kube.close()


def run_operator(
    namespaces: Sequence[str],
    overrides: dict[str, object],
    *,
    verbose: bool = False,
    kubeconfig: str | None = None,
    context: str | None = None,
    log_level: str | None = None,
    log_format: str = "text",
) -> int:
    """``fleetdispatch operator``: the kopf operator, until SIGINT or SIGTERM; 1 when it cannot log in."""
    import asyncio
    import logging

    from fleetdispatch.api.settings import OperatorSettings, SettingsError
    from fleetdispatch.client import credentials

    fail = _configure_logging(log_level or ("DEBUG" if verbose else "INFO"), log_format, verbose)
    try:
        options = OperatorSettings.from_env(overrides=overrides)
    except SettingsError as error:
        fail(str(error))
        return 2
    try:
        found = credentials.load(kubeconfig, context)
        user = asyncio.run(_log_in(found))
    except credentials.CredentialsError as error:
        fail(f"cannot log in: {error}")
        return 1
    credentials.select(found)
    logging.getLogger("fleetdispatch.operator").info(
        "logged in to %s as %s with %s", found.server, user or "(the API server does not say)", found.source
    )

    import kopf

    from fleetdispatch.controller import handlers

    try:
        if options.leader_election:
            asyncio.run(_run_elected(options, found, namespaces))
        else:
            asyncio.run(handlers.run(options, namespaces=namespaces))
    except kopf.LoginError:  # they stopped working (revoked, expired, not renewed); kopf has logged how
        fail(f"logged out: the API server no longer accepts {found.source}")
        return 1
    return 0


def _add_operator_flags(parser: argparse.ArgumentParser) -> list[str]:
    """One flag per operator setting (`--supervisor-image` for `supervisor_image`), from the one model."""
    from fleetdispatch.api.settings import ENV_PREFIX, OperatorSettings

    names = []
    for name, info in OperatorSettings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"setting_{name}",
            metavar="VALUE",
            help=f"{info.description} (${ENV_PREFIX}{name.upper()}; default: {info.default})",
        )
        names.append(name)
    return names


COMMANDS = {
    "validate": "check FleetDispatch and QuotaPool manifests offline, as the API server and operator would",
    "dev": "run a local dev cluster: a real Kubernetes control plane, a node agent and the operator",
    "supervise": "supervise one session attempt (the session pod's sidecar)",
    "quota-guard": "inside a session: wait for an upstream quota to reset if the budget allows, else end the "
    "session QuotaExhausted (exit 75) so it is requeued; see `fleetdispatch quota-guard --help`",
    "operator": "run the operator: one supervised pod per attempt of every FleetDispatch",
}


def _validate_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        help="manifest files, folders (searched for *.yaml, *.yml), or - for standard input",
    )


def _dev_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig",
        default="fleetdispatch-dev.kubeconfig",
        help="where to write the kubeconfig for kubectl (default: %(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="the API server's port on 127.0.0.1 (0: any free port)"
    )
    parser.add_argument(
        "--runtime",
        choices=("local", "instant", "containers"),
        default="local",
        help="local: run pods' commands in Linux namespaces (needs root); instant: complete pods at once "
        "(for benchmarks); containers: a real kubelet with containerd and runc runs the images `make image` "
        "built (needs root; says what is missing and runs local otherwise)",
    )
    parser.add_argument(
        "--no-operator",
        dest="operator",
        action="store_false",
        help="the cluster alone, no operator (for `fleetdispatch operator` or a Helm-installed one)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep etcd's data in this folder across restarts (default: a temporary folder)",
    )


def _supervise_flags(parser: argparse.ArgumentParser) -> None:
    from fleetdispatch.session import config

    parser.description = (
        "Supervise one session attempt: extend its deadline while it is active, stop it when the deadline "
        "passes or its output stalls."
    )
    config.add_arguments(parser, os.environ)


def _operator_flags(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the fleet-dispatch operator (kopf). Credentials come from --kubeconfig (and --context), else "
        "$KUBECONFIG, else the in-cluster service account, else ~/.kube/config. Every setting is also read "
        "from its environment variable."
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="the kubeconfig to log in with (default: $KUBECONFIG, a list of files; else the in-cluster "
        "service account; else ~/.kube/config)",
    )
    parser.add_argument(
        "--context", metavar="NAME", help="the kubeconfig's context (default: its current one)"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="the least severe level logged (default: INFO, or DEBUG with --verbose)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default), or json: one object per line with time, level, logger and message",
    )
    parser.add_argument("--verbose", action="store_true", help="log every event kopf handles")
    parser.set_defaults(settings=_add_operator_flags(parser))


FLAGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "validate": _validate_flags,
    "dev": _dev_flags,
    "supervise": _supervise_flags,
    "operator": _operator_flags,
}


def _parser(command: str | None) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser | None]:
    """The command line, with the flags of `command` alone (declaring the others would import them), and
    the subcommand's parser (for its usage errors)."""
    parser = argparse.ArgumentParser(prog="fleetdispatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fleetdispatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    chosen = None
    for name, summary in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, add_help=name != "quota-guard")
        if name == command and name in FLAGS:
            FLAGS[name](sub)
            chosen = sub
    return parser, chosen


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["supervise"]:
        # First of all: until then the session (same UID) can read this process through /proc.
        from fleetdispatch.session.nondumpable import set_non_dumpable

        set_non_dumpable()
    if arguments[:1] == ["quota-guard"]:
        # The guard owns its command line (it also runs as `python -m fleetdispatch.session.quotaguard`).
        from fleetdispatch.session import quotaguard

        return quotaguard.main(arguments[1:], prog="fleetdispatch quota-guard")
    # The top level has only flags without values (--help, --version): the first other word is the command.
    command = next((word for word in arguments if not word.startswith("-")), None)
    parser, subcommand = _parser(command)
    args = parser.parse_args(arguments)
    if args.command == "operator":
        overrides = {name: getattr(args, f"setting_{name}") for name in args.settings}
        return run_operator(
            args.namespace,
            overrides,
            verbose=args.verbose,
            kubeconfig=args.kubeconfig,
            context=args.context,
            log_level=args.log_level,
            log_format=args.log_format,
        )
    if args.command == "validate":
        return validate(args.paths)
    if args.command == "dev":
        return run_dev(Path(args.kubeconfig), args.port, args.runtime, args.operator, args.data_dir)
    if args.command == "supervise":
        from fleetdispatch.session import config, supervisor

        return supervisor.supervise(config.from_namespace(subcommand or parser, args))
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
