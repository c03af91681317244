"""The `fleetdispatch` command: one entry point, one subcommand per job.

`validate` checks manifests offline exactly as the API server (CRD schema and CEL rules) and the operator
(the models) would, so a GitOps pipeline can refuse a bad dispatch before it reaches a cluster. `supervise`
runs beside a session as its pod's sidecar (see `supervisor`). `dev` runs the dev cluster (see
`devcluster`) with the operator in it. `operator` runs the operator (see `controller`). `quota-guard` runs
inside a session, when its upstream quota is exhausted (see `quotaguard`).

Each subcommand imports its module only when it runs: the supervisor's memory budget (30 MiB) leaves no
room for pydantic, the CEL evaluator or kopf, which `validate` and the operator need.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from fleetdispatch import __version__
from fleetdispatch.session import deadline

MANIFEST_SUFFIXES = (".yaml", ".yml")


STDIN = "-"


def _manifest_files(paths: Sequence[str]) -> Iterator[str]:
    for raw in paths:
        path = Path(raw)
        if raw != STDIN and path.is_dir():
            yield from sorted(
                str(p) for p in path.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()
            )
        else:
            yield raw


def _read(file: str, stdin: TextIO) -> str:
    return stdin.read() if file == STDIN else Path(file).read_text(encoding="utf-8")


def validate(paths: Sequence[str], out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """Check every fleet.dispatch.dev manifest under `paths` (`-` is standard input); 0 when all are valid."""
    from fleetdispatch.validation import manifests

    write = (out or sys.stdout).write
    checked = invalid = 0
    for file in _manifest_files(paths):
        try:
            documents = list(manifests.documents(_read(file, stdin or sys.stdin)))
        except (OSError, ValueError) as error:
            write(f"{file}: cannot read: {error}\n")
            invalid += 1
            continue
        for manifest in documents:
            verdict = manifests.check(manifest)
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

    mode: stack.RuntimeMode = "instant" if runtime == "instant" else "local"
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


def run_operator(namespaces: Sequence[str], overrides: dict[str, object], verbose: bool) -> int:
    """``fleetdispatch operator``: the kopf operator, until SIGINT or SIGTERM."""
    import asyncio
    import logging

    import kopf

    from fleetdispatch.api.settings import OperatorSettings, SettingsError
    from fleetdispatch.controller import handlers

    try:
        options = OperatorSettings.from_env(overrides=overrides)
    except SettingsError as error:
        print(f"fleetdispatch operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=verbose)
    if not verbose:
        # kopf logs every handled event at INFO: at campaign scale that is most of the log and of the CPU.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(handlers.run(options, namespaces=namespaces))
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


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["quota-guard"]:
        # The guard owns its command line (it also runs as `python -m fleetdispatch.session.quotaguard`).
        from fleetdispatch.session import quotaguard

        return quotaguard.main(arguments[1:], prog="fleetdispatch quota-guard")
    parser = argparse.ArgumentParser(prog="fleetdispatch", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fleetdispatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "validate",
        help="check FleetDispatch and QuotaPool manifests offline, as the API server and operator would",
    )
    check.add_argument(
        "paths",
        nargs="+",
        help="manifest files, folders (searched for *.yaml, *.yml), or - for standard input",
    )
    dev = commands.add_parser(
        "dev",
        help="run a local dev cluster: a real Kubernetes control plane, a node agent and the operator",
    )
    dev.add_argument(
        "--kubeconfig",
        default="fleetdispatch-dev.kubeconfig",
        help="where to write the kubeconfig for kubectl (default: %(default)s)",
    )
    dev.add_argument(
        "--port", type=int, default=0, help="the API server's port on 127.0.0.1 (0: any free port)"
    )
    dev.add_argument(
        "--runtime",
        choices=("local", "instant"),
        default="local",
        help="local: run pods' commands in Linux namespaces (needs root); instant: complete pods at once "
        "(for benchmarks)",
    )
    dev.add_argument(
        "--no-operator",
        dest="operator",
        action="store_false",
        help="the cluster alone, no operator (for `fleetdispatch operator` or a Helm-installed one)",
    )
    dev.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep etcd's data in this folder across restarts (default: a temporary folder)",
    )
    supervise = commands.add_parser(
        "supervise",
        help="supervise one session attempt (the session pod's sidecar)",
        description="Supervise one session attempt: extend its deadline while it is active, stop it when "
        "the deadline passes or its output stalls.",
    )
    deadline.add_arguments(supervise, os.environ)
    commands.add_parser(
        "quota-guard",
        add_help=False,
        help="inside a session: wait for an upstream quota to reset if the budget allows, else end the "
        "session QuotaExhausted (exit 75) so it is requeued; see `fleetdispatch quota-guard --help`",
    )
    operate = commands.add_parser(
        "operator",
        help="run the operator: one supervised pod per attempt of every FleetDispatch",
        description="Run the fleet-dispatch operator (kopf). Credentials come from the in-cluster service "
        "account, else the kubeconfig ($KUBECONFIG or ~/.kube/config). Every setting is also read from "
        "its environment variable.",
    )
    operate.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    operate.add_argument("--verbose", action="store_true", help="log every event kopf handles")
    settings = _add_operator_flags(operate)
    args = parser.parse_args(arguments)
    if args.command == "operator":
        overrides = {name: getattr(args, f"setting_{name}") for name in settings}
        return run_operator(args.namespace, overrides, args.verbose)
    if args.command == "validate":
        return validate(args.paths)
    if args.command == "dev":
        return run_dev(Path(args.kubeconfig), args.port, args.runtime, args.operator, args.data_dir)
    if args.command == "supervise":
        from fleetdispatch.session import supervisor

        return supervisor.supervise(deadline.from_namespace(supervise, args))
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
