"""`kubectl fleet`: look at fleet dispatches as they run, and suspend or resume them.

kubectl runs `kubectl-fleet` (this `main`) for `kubectl fleet ...`, with the rest of the command line:

  kubectl fleet status NAME        phase, attempt, live deadline and budget left, activity, counters, pool
  kubectl fleet list [-A]          dispatches with the budget left, --sort-by name|remaining|age|phase
  kubectl fleet logs NAME [-f]     the current (or last) attempt's session container log
  kubectl fleet suspend NAME       spec.suspend: true (the running attempt is stopped, none starts)
  kubectl fleet resume NAME        spec.suspend: false
  kubectl fleet retry NAME         a Failed dispatch starts a new line of attempts (fleet.dispatch.dev/retry)

with kubectl's `--kubeconfig`, `--context`, `-n/--namespace` (default: the context's namespace, else
`default`), and `-o json|yaml` for status and list. A dispatch that does not exist, credentials that do not
work or an API server that cannot be reached: one line on standard error, exit 1; a usage error exits 2.

`retry` sets the annotation to a new value (the time, to the microsecond) on a dispatch that is Failed and
has no retry pending, with its resourceVersion, so a dispatch that changed since it was read is not retried
blindly; the operator starts the new attempt and records the value (status.retryHandled).

Deliberately not here: waiting for the operator to act (`kubectl fleet status` shows it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from fleetdispatch.api import names
from fleetdispatch.plugin import view
from fleetdispatch.plugin.kube import Client, KubeError, NotFound, load_credentials
from fleetdispatch.session.protocol import format_micro_time

PROG = "kubectl fleet"
OUTPUTS = ("json", "yaml")


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    """kubectl's connection flags; on the subcommands too, so they may come before or after it."""
    parser.add_argument("--kubeconfig", metavar="PATH", default=default, help="the kubeconfig file to use")
    parser.add_argument("--context", metavar="NAME", default=default, help="the kubeconfig context to use")
    parser.add_argument(
        "-n",
        "--namespace",
        metavar="NAME",
        default=default,
        help="the namespace (default: the context's namespace, else default)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    _common(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=summary, description=summary)
        # SUPPRESS: a flag not given after the subcommand keeps the value given before it.
        _common(sub, argparse.SUPPRESS)
        return sub

    status = command("status", "a dispatch's phase, budget left, activity, counters, attempts and pool")
    status.add_argument("name")
    status.add_argument("-o", "--output", choices=OUTPUTS, help="print the status summary as data")

    listing = command("list", "the dispatches of a namespace with their remaining budget")
    listing.add_argument(
        "-A", "--all-namespaces", action="store_true", help="the dispatches of every namespace"
    )
    listing.add_argument(
        "--sort-by",
        choices=view.SORT_KEYS,
        default="name",
        help="name (default), remaining (least first), age (oldest first) or phase",
    )
    listing.add_argument("-o", "--output", choices=OUTPUTS, help="print the rows as data")

    logs = command("logs", "the session container's log of the current (or last) attempt")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="stream the log until the session ends")

    for verb, what in (
        ("suspend", "suspend a dispatch: its running attempt is stopped and none starts (spec.suspend)"),
        ("resume", "resume a suspended dispatch (spec.suspend: false)"),
    ):
        command(verb, what).add_argument("name")
    command(
        "retry", "retry a Failed dispatch: a new line of attempts (fleet.dispatch.dev/retry)"
    ).add_argument("name")
    return parser


def _dump(data: Any, output: str) -> str:
    if output == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))
    return json.dumps(data, indent=2) + "\n"


def _now() -> datetime:
    return datetime.now(UTC)


class Plugin:
    """The subcommands, over one client and one namespace."""

    def __init__(self, client: Client, namespace: str, out: TextIO) -> None:
        self.client, self.namespace, self.out = client, namespace, out

    def dispatch(self, name: str) -> dict[str, Any]:
        try:
            return self.client.get(names.FLEET_DISPATCHES.path(self.namespace, name))
        except NotFound:
            raise NotFound(
                f'Error from server (NotFound): fleetdispatch "{name}" not found in namespace '
                f'"{self.namespace}"'
            ) from None

    def status(self, name: str, output: str | None) -> None:
        dispatch = self.dispatch(name)
        pool_name = (dispatch.get("spec") or {}).get("quotaPool")
        pool, pool_error = None, None
        if pool_name:
            try:
                pool = self.client.get(names.QUOTA_POOLS.path(self.namespace, str(pool_name)))
            except NotFound:
                pass
            except KubeError as error:  # forbidden, say: the dispatch's status is still worth showing
                pool_error = str(error)
        summary = view.summarize(dispatch, _now(), pool, pool_error)
        self.out.write(_dump(summary, output) if output else view.render_status(summary))

    def list(self, all_namespaces: bool, sort_by: str, output: str | None) -> None:
        path = names.FLEET_DISPATCHES.path(None if all_namespaces else self.namespace)
        items = self.client.get(path).get("items") or []
        now = _now()
        rows = view.sort_rows([view.list_row(item, now) for item in items], sort_by)
        if output:
            self.out.write(_dump({"items": rows}, output))
        elif not rows:
            where = "any namespace" if all_namespaces else f"{self.namespace} namespace"
            print(f"No fleetdispatches found in {where}.", file=sys.stderr)
        else:
            self.out.write(view.render_list(rows, all_namespaces))

    def logs(self, name: str, follow: bool) -> None:
        attempt = int((self.dispatch(name).get("status") or {}).get("attempt") or 0)
        if attempt == 0:
            raise KubeError(f"fleetdispatch {name!r} has not started an attempt yet")
        selector = f"{names.DISPATCH_LABEL}={name}"
        pods = self.client.get(names.PODS.path(self.namespace), {"labelSelector": selector}).get("items")
        pod = view.attempt_pod(pods or [], attempt)
        if pod is None:
            raise KubeError(f"fleetdispatch {name!r}: no pod of attempt {attempt} or earlier is left")
        pod_name = str(pod["metadata"]["name"])
        container = view.session_container(pod)
        if container is None:
            raise KubeError(f"pod {pod_name} has no session container")
        params = {"container": container, **({"follow": "true"} if follow else {})}
        buffer = getattr(self.out, "buffer", None)
        for chunk in self.client.stream(
            names.PODS.path(self.namespace, pod_name, "log"), params, follow=follow
        ):
            if buffer is not None:
                buffer.write(chunk)
                buffer.flush()
            else:
                self.out.write(chunk.decode(errors="replace"))
                self.out.flush()

    def suspend(self, name: str, suspend: bool) -> None:
        try:
            self.client.patch(
                names.FLEET_DISPATCHES.path(self.namespace, name), {"spec": {"suspend": suspend}}
            )
        except NotFound:
            self.dispatch(name)  # the one-line not-found message (or the patch's own error, if it exists)
            raise
        verb = "suspended" if suspend else "resumed"
        self.out.write(f"fleetdispatch.{names.GROUP}/{name} {verb}\n")

    def retry(self, name: str) -> None:
        dispatch = self.dispatch(name)
        meta, status = dispatch.get("metadata") or {}, dispatch.get("status") or {}
        phase = status.get("phase")
        if phase != "Failed":
            raise KubeError(
                f'fleetdispatch "{name}" is {phase or "not started yet"}, not Failed: only a Failed dispatch '
                "can be retried"
            )
        pending = (meta.get("annotations") or {}).get(names.RETRY_ANNOTATION)
        if pending is not None and pending != status.get("retryHandled") and len(str(pending)) <= 253:
            raise KubeError(
                f'fleetdispatch "{name}": a retry is already requested ({names.RETRY_ANNOTATION}={pending}) '
                "and the operator has not handled it yet"
            )
        value = format_micro_time(_now())
        patch = {
            "metadata": {
                # The dispatch as checked above: a changed one is refused (409), not retried blindly.
                "resourceVersion": meta.get("resourceVersion"),
                "annotations": {names.RETRY_ANNOTATION: value},
            }
        }
        self.client.patch(names.FLEET_DISPATCHES.path(self.namespace, name), patch)
        attempt = int(status.get("attempt") or 0) + 1
        self.out.write(
            f"fleetdispatch.{names.GROUP}/{name} retried ({names.RETRY_ANNOTATION}={value}): "
            f"attempt {attempt} starts a new line of attempts\n"
        )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = out or sys.stdout
    try:
        credentials = load_credentials(args.kubeconfig, args.context)
        plugin = Plugin(Client(credentials), args.namespace or credentials.namespace or "default", out)
        if args.command == "status":
            plugin.status(args.name, args.output)
        elif args.command == "list":
            plugin.list(args.all_namespaces, args.sort_by, args.output)
        elif args.command == "logs":
            plugin.logs(args.name, args.follow)
        elif args.command == "retry":
            plugin.retry(args.name)
        else:
            plugin.suspend(args.name, args.command == "suspend")
    except KubeError as error:
        print(f"error: {error}" if not str(error).startswith("Error") else str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `kubectl fleet logs x | head`
        return 0
    except Exception as error:  # a bug of ours: one line still, as promised
        print(f"error: internal error, please report it: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
