"""`oneosctl`: declarative control of a OneOS cluster, kubectl-style.

Each subcommand is one function `cmd_<name>(args) -> int` plus one `_add_<name>`
that declares its arguments; `build_parser` lists them. Errors a person can act
on (OneOSError) print one line per problem and set the exit status; no tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from oneos import __version__, state
from oneos.cli import output
from oneos.documents import DocumentError, check, load_file, load_text
from oneos.errors import OneOSError
from oneos.nameserver.client import NameServer

PROG = "oneosctl"
STDIN = "-"
STDIN_NAME = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _add_filename(parser: argparse.ArgumentParser, help: str) -> None:
    """The kubectl-style -f/--filename option: repeatable, several files after one -f."""
    parser.add_argument(
        "-f", "--filename", dest="files", metavar="FILE", action="extend", nargs="+", required=True,
        help=f"{help}; repeat -f or list several files after one; '-' reads stdin; a directory means its "
             f"{', '.join(MANIFEST_SUFFIXES)} files",
    )


def manifest_paths(name: str) -> list[str]:
    """The file `name` as a list, or a directory's manifest files; '-' is stdin."""
    if name == STDIN or not os.path.isdir(name):
        return [name]
    found = sorted(str(p) for p in Path(name).iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
    if not found:
        raise DocumentError(f"{name}: no {', '.join(MANIFEST_SUFFIXES)} files in this directory")
    return found


def read_manifests(name: str) -> list[dict]:
    """The valid manifests in file `name` ('-' for stdin); DocumentError says what is wrong."""
    if name == STDIN:
        return load_text(sys.stdin.read(), STDIN_NAME, Path.cwd())
    return load_file(name)


# ------------------------------------------------------------------ validate


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate", help="check manifests without applying them",
        description="Check manifests against the OneOS schemas and rules, without contacting the cluster. "
                    "Prints FILE: valid for each valid file, else one line per problem on stderr and exits 2.",
    )
    _add_filename(p, "manifest to check")
    p.set_defaults(run=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate every file named; 0 when all are valid, 2 when any is not."""
    status = 0
    for given in args.files:
        try:
            names = manifest_paths(given)
        except DocumentError as err:
            print(err, file=sys.stderr)
            status = err.exit_code
            continue
        for name in names:
            try:
                read_manifests(name)
            except DocumentError as err:
                print(err, file=sys.stderr)
                status = err.exit_code
            else:
                print(f"{STDIN_NAME if name == STDIN else name}: valid")
    return status


# ----------------------------------------------------------------- bootstrap


def _client(args: argparse.Namespace) -> NameServer:
    return NameServer(args.nameserver)


def _add_bootstrap(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bootstrap", help="write the boot record and the init manifest of a new cluster",
        description="Write the boot record (oneos/boot) and the init manifest where they are absent, by "
                    "compare-and-set: running it twice changes nothing. --force replaces them.")
    p.add_argument("--pulsar-url", required=True, metavar="URL", help="the Pulsar broker, pulsar://HOST:PORT")
    p.add_argument("--cluster", default="oneos", help="the cluster's name (default oneos)")
    p.add_argument("--namespace", default="public/default", metavar="TENANT/NAMESPACE",
                   help="Pulsar namespace for the pipes' topics (default public/default)")
    p.add_argument("--session-ttl", default="10s", metavar="DURATION",
                   help="node liveness TTL, 10s..86400s (default 10s): a dead node is gone within twice this")
    p.add_argument("--lock-delay", default="15s", metavar="DURATION",
                   help="how long a dead leader's lock stays untaken (default 15s)")
    p.add_argument("--kernel-node", action="append", default=[], metavar="ID",
                   help="a runtime id that is a kernel node (repeatable)")
    p.add_argument("--init", metavar="FILE", help="init manifest (default: manifests/init.yaml shipped with OneOS)")
    p.add_argument("--force", action="store_true", help="replace a boot record and init manifest already there")
    p.set_defaults(run=cmd_bootstrap)


def cmd_bootstrap(args: argparse.Namespace) -> int:
    """Write what a new cluster needs, where absent."""
    boot = state.new_boot_record(cluster=args.cluster, pulsar_url=args.pulsar_url, namespace=args.namespace,
                                 kernel_nodes=args.kernel_node, session_ttl=args.session_ttl,
                                 lock_delay=args.lock_delay)
    check("boot", boot, "the boot record from these options")
    ns = _client(args)
    wrote_boot, wrote_init = state.bootstrap(ns, boot, state.default_init(args.init), force=args.force)
    for wrote, what, key in ((wrote_boot, "boot record", state.BOOT), (wrote_init, "init manifest", boot["initManifest"])):
        print(f"{what} written to {key}" if wrote else
              f"{what} already at {key}: left as it is (--force replaces it)")
    return 0


# ----------------------------------------------------------------------- get


def _add_get(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", help="list nodes, or show the boot record",
                       description="Show cluster state from the Name Server, as a table or as documents.")
    p.add_argument("resource", choices=sorted(GETTERS), help="what to show")
    p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table",
                   help="table (default), or the documents as json or yaml")
    p.set_defaults(run=cmd_get)


def cmd_get(args: argparse.Namespace) -> int:
    return GETTERS[args.resource](_client(args), args.output)


def _get_nodes(ns: NameServer, fmt: str) -> int:
    nodes, problems = state.read_nodes(ns)
    for problem in problems:
        print(f"{PROG}: warning: skipped an invalid node record: {problem}", file=sys.stderr)
    if fmt != "table":
        items = [dict(n.record, leader=n.leader) for n in nodes]
        sys.stdout.write(output.structured({"kind": "NodeList", "items": items}, fmt))
        return 0
    if not nodes:
        print(f"No nodes have joined the cluster at {ns.url}.", file=sys.stderr)
        return 0
    rows = [[r["id"], r["state"], "yes" if n.leader else "no", "yes" if r["kernel"] else "no",
             ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "<none>", output.age(r["startedAt"])]
            for n in nodes for r in [n.record]]
    sys.stdout.write(output.table(["ID", "STATE", "LEADER", "KERNEL", "LABELS", "AGE"], rows))
    return 0


def _get_boot(ns: NameServer, fmt: str) -> int:
    sys.stdout.write(output.structured(state.read_boot(ns), "yaml" if fmt == "table" else fmt))
    return 0


GETTERS: dict[str, Callable[[NameServer, str], int]] = {
    "nodes": _get_nodes,
    "node": _get_nodes,
    "boot": _get_boot,
}


# --------------------------------------------------------------------- main

# Each entry adds one subcommand; new subcommands (apply, get, describe, ...) add theirs here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_validate,
    _add_bootstrap,
    _add_get,
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog=PROG, description="Declarative control of a OneOS cluster.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--nameserver", metavar="URL", default=None,
                        help="the Name Server (default $ONEOS_NAMESERVER, else http://127.0.0.1:8500)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run oneosctl with `argv` (default: the process's arguments); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.run(args)
    except OneOSError as err:
        print(f"{PROG}: {err}" if not isinstance(err, DocumentError) else err, file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`oneosctl ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not complain
        return 141


if __name__ == "__main__":
    sys.exit(main())
