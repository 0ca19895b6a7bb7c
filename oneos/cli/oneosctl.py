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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from oneos import __version__, diff, enrollment, manifests, state
from oneos.bus.client import TOKEN_FILE_ENV
from oneos.children import command_line
from oneos.cli import output
from oneos.compiler import CompileError, compile_pipeline
from oneos.documents import DocumentError, check, load_file, load_text
from oneos.errors import OneOSError, UsageError
from oneos.durations import parse_seconds
from oneos.identity import IdentityError, public_key
from oneos.nameserver.acl import GLOBAL_MANAGEMENT_ID
from oneos.nameserver.client import NameServer, NameServerError
from oneos.secretfiles import read_secret

PROG = "oneosctl"
STDIN = "-"
STDIN_NAME = "<stdin>"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def _add_filename(parser: argparse.ArgumentParser, help: str, positional: bool = True) -> None:
    """The kubectl-style -f/--filename option: repeatable, several files after one -f; with
    `positional`, the files may also be named without -f (`apply pipeline.yaml`), both mixed."""
    about = (f"; '-' reads stdin; a directory means its {', '.join(MANIFEST_SUFFIXES)} files")
    if positional:
        parser.add_argument("files", nargs="*", action="extend", metavar="FILE", help=f"{help}{about}")
    parser.add_argument(
        "-f", "--filename", dest="files", metavar="FILE", action="extend", nargs="+", default=[],
        help=f"{help}, as kubectl takes it; repeat -f or list several files after one"
             + ("" if positional else about),
    )


def _files(args: argparse.Namespace) -> list[str]:
    """The files named, with or without -f; UsageError when there are none."""
    if not args.files:
        raise UsageError(f"{args.command}: name the manifests: `{PROG} {args.command} FILE...` or "
                         f"`{PROG} {args.command} -f FILE`")
    return args.files


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
        usage=f"{PROG} validate [-h] FILE... | -f FILE...",
    )
    _add_filename(p, "manifest to check")
    p.set_defaults(run=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate every file named; 0 when all are valid, 2 when any is not."""
    status = 0
    for given in _files(args):
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
    p.add_argument("--pulsar-url", required=True, metavar="URL",
                   help="the Pulsar broker, pulsar://HOST:PORT (pulsar+ssl://HOST:PORT for TLS)")
    p.add_argument("--cluster", default="oneos", help="the cluster's name (default oneos)")
    p.add_argument("--namespace", default="public/default", metavar="TENANT/NAMESPACE",
                   help="Pulsar namespace for the pipes' topics (default public/default)")
    p.add_argument("--pulsar-admin-url", metavar="URL",
                   help="the Pulsar cluster's admin API, http://HOST:8080: deleted pipelines' topics are deleted "
                        "through it (leave it out for pulsar-lite, which has none)")
    p.add_argument("--pulsar-tls-trust-certs", metavar="FILE",
                   help="for a pulsar+ssl:// URL: the CA certificates (PEM) that sign the brokers' certificates, "
                        "at this absolute path on every machine (default: certifi's CA bundle)")
    p.add_argument("--no-pulsar-tls-hostname-verification", dest="pulsar_tls_hostname_verification",
                   action="store_false", help="accept a broker certificate that does not name the URL's host")
    p.add_argument("--pulsar-auth", choices=["none", "token"], default="none",
                   help="token: the Pulsar cluster wants a token from every client, each from its own file "
                        "(a node's pulsar.tokenFile, or ONEOS_PULSAR_TOKEN_FILE); none (default) for pulsar-lite")
    p.add_argument("--blob-grace", metavar="DURATION",
                   help="how long a shipped file no manifest references is kept before it is deleted (default 60s)")
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
    if args.pulsar_tls_trust_certs and not args.pulsar_url.startswith("pulsar+ssl://"):
        raise UsageError(f"--pulsar-tls-trust-certs is for TLS, and --pulsar-url {args.pulsar_url} is not "
                         "pulsar+ssl://; give the broker's TLS URL, pulsar+ssl://HOST:6651")
    boot = state.new_boot_record(cluster=args.cluster, pulsar_url=args.pulsar_url, namespace=args.namespace,
                                 kernel_nodes=args.kernel_node, session_ttl=args.session_ttl,
                                 lock_delay=args.lock_delay, pulsar_admin_url=args.pulsar_admin_url,
                                 blob_grace=args.blob_grace, pulsar_tls_trust_certs=args.pulsar_tls_trust_certs,
                                 pulsar_tls_hostname_verification=args.pulsar_tls_hostname_verification,
                                 pulsar_authentication=args.pulsar_auth)
    check("boot", boot, "the boot record from these options")
    ns = _client(args)
    wrote_boot, wrote_init = state.bootstrap(ns, boot, state.default_init(args.init), force=args.force)
    for wrote, what, key in ((wrote_boot, "boot record", state.BOOT), (wrote_init, "init manifest", boot["initManifest"])):
        print(f"{what} written to {key}" if wrote else
              f"{what} already at {key}: left as it is (--force replaces it)")
    if enrollment.install_policies(ns):
        print(f"policies written: {enrollment.ANONYMOUS_POLICY} (given to the anonymous token: runtimes may ask to "
              f"join), {enrollment.KERNEL_POLICY}, {enrollment.OPERATOR_POLICY}")
    return 0


# ----------------------------------------------------------- acl bootstrap


def _add_acl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("acl", help="bootstrap the Name Server's ACLs",
                       description="Make the first management token of a Name Server started with --acl, and "
                                   "write OneOS's policies.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    boot = verbs.add_parser(
        "bootstrap", help="make the management token (once), keep it in a file, write OneOS's policies",
        description="PUT /v1/acl/bootstrap, write the management token's secret to FILE (made, mode 0600, "
                    "never printed), then OneOS's policies. Run again with FILE there, it checks that the token "
                    "still works and rewrites the policies only if they changed.")
    boot.add_argument("--token-out", required=True, metavar="FILE",
                      help="where the management token's secret goes (must not exist before the bootstrap)")
    boot.set_defaults(run=cmd_acl_bootstrap)


def cmd_acl_bootstrap(args: argparse.Namespace) -> int:
    """Bootstrap the Name Server's ACLs once; say whether this run did (a provisioning tool reads it)."""
    path = Path(args.token_out)
    ns = NameServer(args.nameserver)
    if not ns.acl_enabled():
        raise OneOSError(f"the Name Server at {ns.url} has no ACLs (it was started without --acl): there is "
                         "nothing to bootstrap; start it with --acl, or leave this step out")
    if path.exists():
        ns = NameServer(args.nameserver, token=read_secret(path, "--token-out"))
        if not _management(ns):
            raise OneOSError(f"the Name Server at {ns.url} does not take the token in {path} as a management "
                             "token: it was bootstrapped with another (or the file is from another Name Server); "
                             f"put its management token in {path}, or move {path} away if the Name Server is new")
        outdated = enrollment.outdated_policies(ns)
        if outdated:
            enrollment.install_policies(ns)
        print(f"acl already bootstrapped: management token in {path}"
              + (f"; policies updated: {', '.join(outdated)}" if outdated else ""))
        return 0
    fd = _create_secret_file(path)
    try:
        made = ns.acl_bootstrap()
        if made is None:
            raise OneOSError(f"the Name Server at {ns.url} was bootstrapped already, by someone else: its management "
                             f"token is theirs; put it in {path} (mode 0600) and run this again")
        os.write(fd, (made["SecretID"] + "\n").encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    enrollment.install_policies(NameServer(args.nameserver, token=made["SecretID"]))
    print(f"acl bootstrapped: management token in {path}")
    return 0


def _management(ns: NameServer) -> bool:
    """Whether the Name Server knows the token `ns` sends as one of the global-management policy."""
    try:
        token = ns.acl_token_self()
    except NameServerError as exc:
        if exc.status == 403:
            return False
        raise
    return any(p.get("ID") == GLOBAL_MANAGEMENT_ID for p in (token or {}).get("Policies") or [])


def _create_secret_file(path: Path) -> int:
    """A new file at `path`, mode 0600 (its missing folders made 0700), open for writing; refused when one is there."""
    for folder in reversed([p for p in path.absolute().parents if not p.exists()]):
        folder.mkdir(mode=0o700, exist_ok=True)
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise OneOSError(f"{path} appeared meanwhile; run the command again") from None
    except OSError as exc:
        raise OneOSError(f"cannot make {path} ({(exc.strerror or str(exc)).lower()}); give a --token-out "
                         "where this user may write") from None


# --------------------------------------------------------------------- apply


def _add_apply(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("apply", help="create or update pipelines from manifests",
                       usage=f"{PROG} apply [-h] [--dry-run] [-v] [--nameserver URL] FILE... | -f FILE...",
                       description="Create or update each pipeline in the manifests. A pipeline whose spec did "
                                   "not change is left alone (\"unchanged\"). On an update only the agents "
                                   "whose work changed restart (their spec, their links, their shipped files' "
                                   "content); the others keep running.")
    _add_filename(p, "manifest to apply")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would change (+ added, - removed, ~ changed) and which agents would "
                        "restart, start, stop or keep running; change nothing")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print what changed and which agents restart, as --dry-run does")
    p.set_defaults(run=cmd_apply)


def cmd_apply(args: argparse.Namespace) -> int:
    loaded = load_pipelines(_files(args), "applied")
    ns = _client(args)
    detailed = args.dry_run or args.verbose
    for doc, base in loaded:
        where = agents_where(ns, doc["metadata"]["name"]) if detailed else {}
        done = manifests.apply_pipeline(ns, doc, base, dry_run=args.dry_run)
        print(f"pipeline/{done.name} {done.outcome}{' (dry run)' if args.dry_run else ''}")
        if done.replaced:
            print(f"{PROG}: pipeline {done.name}: {'would replace' if args.dry_run else 'replaced'} its stored "
                  f"manifest, which could not be used: {done.replaced}", file=sys.stderr)
        if detailed and done.outcome != "unchanged":
            change = diff.diff_pipelines(done.previous, done.manifest)
            for line in change.change_lines() + change.plan_lines(where):
                print(f"  {line}")
    return 0


def load_pipelines(files: list[str], done: str) -> list[tuple[dict, Path]]:
    """Every Pipeline manifest in `files`, with the folder its shipped files are relative to;
    DocumentError for a file that is not valid or holds another kind (`done`: what is done with them)."""
    loaded = []
    for given in files:
        for name in manifest_paths(given):
            base = Path.cwd() if name == STDIN else Path(name).resolve().parent
            loaded += [(doc, base) for doc in read_manifests(name)]
    for doc, _ in loaded:
        if doc["kind"] != "Pipeline":
            raise DocumentError(f"{doc['kind']} {doc['metadata']['name']}: only Pipeline manifests are {done}; "
                                "the init manifest is installed with `oneosctl bootstrap --init FILE --force`")
    return loaded


def agents_where(ns: NameServer, pipeline: str) -> dict[str, str]:
    """agent -> its state and node now ("Running on n2"), for the agents of a pipeline that have a status."""
    found = {}
    for st in state.read_statuses(ns, pipeline).values():
        if st["pipeline"] == pipeline:
            found[st["agent"]] = agent_state(st) + (f" on {st['node']}" if st.get("node") else "")
    return found


# -------------------------------------------------------------------- delete


def _add_delete(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "delete", help="delete pipelines (and stop their agents) by name or by their manifests",
        usage=f"{PROG} delete [-h] [--nameserver URL] (pipeline|device) NAME... | -f FILE...",
        description="Delete the pipelines named, or those the manifests name (-f, as kubectl), and stop their "
                    "agents; a device registration, by its name. A name that is not there is \"not found\" "
                    "and the exit status is 1; the others are deleted all the same.")
    p.add_argument("resource", nargs="?", choices=["pipeline", "pipelines", "device", "devices"])
    p.add_argument("names", nargs="*", metavar="NAME")
    _add_filename(p, "delete the pipelines this manifest names", positional=False)
    p.set_defaults(run=cmd_delete)


def cmd_delete(args: argparse.Namespace) -> int:
    if args.files:
        if args.resource or args.names:
            raise UsageError("delete: give either -f FILE or RESOURCE NAME..., not both")
        args.resource, args.names = "pipeline", [doc["metadata"]["name"]
                                                 for doc, _ in load_pipelines(args.files, "deleted")]
    elif not args.resource or not args.names:
        raise UsageError(f"delete: name what to delete: `{PROG} delete pipeline NAME...` or "
                         f"`{PROG} delete -f FILE`")
    ns = _client(args)
    status = 0
    if args.resource.startswith("device"):
        registered, bad = state.read_devices_and_problems(ns)
        for name in args.names:
            if name in registered or name in bad:
                ns.delete(state.device_key(name))   # its node registers it again when it starts
                print(f"device/{name} deleted")
            else:
                print(f"{PROG}: device {name!r} not found", file=sys.stderr)
                status = 1
        return status
    for name in args.names:
        if manifests.delete_pipeline(ns, name):
            print(f"pipeline/{name} deleted")
        else:
            print(f"{PROG}: pipeline {name!r} not found", file=sys.stderr)
            status = 1
    return status


# ------------------------------------------------------------------ describe


def _add_describe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="show a pipeline's agents: where they run, their restarts and last exit, "
                                        "and why any is pending or failed",
                       description="Describe the pipelines named, or every pipeline when none is named (as "
                                   "kubectl describe does). A pipeline whose stored manifest cannot be used is "
                                   "described as Invalid, with why; a name that is not there is \"not found\" "
                                   "and the exit status is 1, the others are described all the same.")
    p.add_argument("resource", choices=["pipeline", "pipelines"])
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(run=cmd_describe)


def cmd_describe(args: argparse.Namespace) -> int:
    ns = _client(args)
    names = args.names
    if not names:
        pipelines, problems = state.read_pipelines(ns)
        names = sorted({*pipelines, *problems})
        if not names:
            print(f"No pipelines on the cluster at {ns.url}.")
            return 0
    status, described = 0, []
    for name in names:
        try:
            described.append(_describe_one(ns, name))
        except DocumentError as exc:
            described.append(_describe_invalid(ns, name, str(exc)))
        except OneOSError as exc:       # not found: said, and the others described all the same
            print(f"{PROG}: {exc}", file=sys.stderr)
            status = 1
    if described:
        print("\n\n".join(described))
    return status


def _describe_one(ns: NameServer, name: str) -> str:
    """What describe prints of one pipeline; DocumentError if its stored manifest cannot be used."""
    doc = manifests.read_pipeline(ns, name)
    meta, spec = doc["metadata"], doc["spec"]
    statuses, bad = state.read_statuses_and_problems(ns, name)
    statuses = _seen_now(ns, statuses)
    lines = [f"Name:         {meta['name']}", f"UID:          {meta['uid']}",
             f"Generation:   {meta['generation']}", f"Created:      {meta['createdAt']} ({output.age(meta['createdAt'])} ago)",
             f"Status:       {pipeline_phase(doc, statuses)}", "Agents:"]
    rows = []
    notes = []
    for agent in spec["agents"]:
        key = state.agent_id(meta["name"], agent["name"])
        st = statuses.get(key, {})
        rows.append([agent["name"], st.get("node", "<none>"), agent_state(st), restarts(st), last_exit(st),
                     command_line(agent["run"])])
        if key in bad:
            notes.append(f"  {agent['name']}: its status cannot be read: {bad[key]}")
        elif st.get("reason"):
            hint = f"; see `{PROG} logs {meta['name']}/{agent['name']}`" if st["state"] == "Failed" else ""
            notes.append(f"  {agent['name']}: {st['state']}: {st['reason']}{hint}")
    lines += ["  " + line for line in output.table(["NAME", "NODE", "STATE", "RESTARTS", "LAST EXIT", "COMMAND"],
                                                   rows).splitlines()]
    if notes:
        lines += ["Reasons:"] + notes
    refused = [(agent["name"], statuses.get(state.agent_id(meta["name"], agent["name"]), {}).get("refusedFrames", 0))
               for agent in spec["agents"]]
    if any(count for _, count in refused):
        lines.append("Refused frames (their MAC failed: forged, altered, or from another link):")
        lines += [f"  {name}: {count}" for name, count in refused if count]
    limited = [(agent["name"], statuses.get(state.agent_id(meta["name"], agent["name"]), {}).get("limits"))
               for agent in spec["agents"]]
    if any(limits for _, limits in limited):
        lines.append("Limits (from resources, as the node set them):")
        lines += [f"  {name}: {limits_text(limits)}" for name, limits in limited if limits]
    links = spec.get("links", [])
    lines.append("Links:" + ("" if links else "        <none>"))
    lines += [f"  {link['from']} -> {link['to']}" for link in links]
    return "\n".join(lines)


def limits_text(limits: dict) -> str:
    """What an agent's status says of its limits, in words: which mechanism, and what it does not limit."""
    if limits["by"] == "cgroup":
        parts = [f"memory {limits['memory']}" if "memory" in limits else "memory not limited",
                 f"cpu {limits['cpu']:g}" if "cpu" in limits else "cpu not limited"]
        return ", ".join(parts) + " (cgroup v2)"
    return f"memory {limits['memory']} (address space {limits['addressSpace']}), cpu not limited (rlimit)"


def _describe_invalid(ns: NameServer, name: str, why: str) -> str:
    """describe of a pipeline whose stored manifest cannot be used: its name, why, what to do, and what
    is known of its agents from their statuses."""
    mark = manifests.read_invalid_mark(ns, name)
    lines = [f"Name:         {name}", "Status:       Invalid",
             f"Reason:       {mark['reason'] if mark else why}"]
    lines.append(f"Since:        {mark['since']} ({output.age(mark['since'])} ago)" if mark else
                 "Since:        (the controller has not marked it yet)")
    lines.append(f"Fix:          apply its manifest again (`{PROG} apply -f FILE`), or delete it "
                 f"(`{PROG} delete pipeline {name}`)")
    not_ready = _not_ready(ns)
    statuses = state.read_statuses(ns, name)
    rows = [[st["agent"], st.get("node", "<none>"), agent_state(as_seen(st, not_ready)), restarts(st), last_exit(st)]
            for _, st in sorted(statuses.items())]
    lines.append("Agents:" + ("" if rows else "       <none>"))
    if rows:
        lines += ["  " + line for line in output.table(["NAME", "NODE", "STATE", "RESTARTS", "LAST EXIT"],
                                                       rows).splitlines()]
    return "\n".join(lines)


#: States a node reports while it runs an agent: Unknown while that node is NotReady.
LIVE_STATES = ("Starting", "Running", "Restarting")


def _not_ready(ns: NameServer) -> dict[str, str]:
    """node -> why it is NotReady, for the nodes whose session renewals are overdue now."""
    return state.not_ready_nodes(ns, datetime.now(timezone.utc))


def _seen_now(ns: NameServer, statuses: dict[str, dict]) -> dict[str, dict]:
    """agent id -> status, each as the tables show it now (as_seen)."""
    not_ready = _not_ready(ns)
    return {key: as_seen(st, not_ready) for key, st in statuses.items()}


def as_seen(status: dict, not_ready: dict[str, str]) -> dict:
    """A status as the tables show it: Unknown, with the reason, while the node that reported it is NotReady."""
    if status.get("node") in not_ready and status.get("state") in LIVE_STATES:
        return dict(status, state="Unknown",
                    reason=f"{not_ready[status['node']]}; it last reported {status['state']}")
    return status


def agent_state(status: dict) -> str:
    """Exited(0), Running, Pending... as `get agents` shows a status."""
    if not status:
        return "Unknown"
    if status["state"] in ("Exited", "Failed", "Restarting") and "exitCode" in status:
        return f"{status['state']}({status['exitCode']})"
    return status["state"]


def restarts(status: dict) -> str:
    """How many times the agent was restarted, and when last, as kubectl shows it: 3 (12s ago)."""
    count = status.get("restarts", 0)
    if count and "startedAt" in status:
        return f"{count} ({output.age(status['startedAt'])} ago)"
    return str(count)


def last_exit(status: dict) -> str:
    """The last exit status, with its signal and when if known: 1 (4s ago), 143 SIGTERM (2m ago); - if none."""
    if "exitCode" not in status:
        return "-"
    code = status["exitCode"]
    text = f"{code} {output.signal_name(code)}" if output.signal_name(code) else str(code)
    # The node records when an agent ended for good (finishedAt), and when it went to Restarting.
    when = {"Exited": status.get("finishedAt"), "Failed": status.get("finishedAt"),
            "Restarting": status.get("updatedAt")}.get(status["state"])
    return f"{text} ({output.age(when)} ago)" if when else text


def pipeline_phase(doc: dict, statuses: dict[str, dict]) -> str:
    """One word for a pipeline: Failed, Pending, Unknown (an agent's node is NotReady), Completed, Running
    or Starting."""
    name = doc["metadata"]["name"]
    states = [statuses.get(state.agent_id(name, a["name"]), {}).get("state") for a in doc["spec"]["agents"]]
    if "Failed" in states:
        return "Failed"
    if "Pending" in states:
        return "Pending"
    if "Unknown" in states:
        return "Unknown"
    if all(s == "Exited" for s in states):
        return "Completed"
    if all(s in ("Running", "Exited") for s in states):
        return "Running"
    return "Starting"

# ----------------------------------------------------------------------- run


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="run a shell pipeline across the cluster, as bash would run it here",
        description="Compile PIPELINE, place its stages, stream the last stage's output here byte for byte, "
                    "and exit with its status, as bash would; the pipeline is deleted afterwards. Ctrl-C, "
                    "SIGTERM and SIGHUP delete it too and exit 128+signal; a pipeline deleted elsewhere ends "
                    "the run with status 1. On a terminal, the last stage writes to a pseudo-terminal, so "
                    "its lines come as they are written.")
    p.add_argument("pipeline", metavar="PIPELINE", help="e.g. 'seq 1 100000 | grep 7 | wc -l'")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say on stderr where each stage was placed, once all are running")
    p.add_argument("--timeout", metavar="DURATION", type=_duration, default=None,
                   help="give up when a stage has waited this long for a node (Pending), e.g. 30s or 2m: "
                        "say which and why, delete the pipeline, exit 1 (default: wait until one fits)")
    p.set_defaults(run=cmd_run)


def _duration(text: str) -> float:
    """A positive Go-style duration (30s, 1m30s), in seconds, for argparse."""
    from oneos.durations import parse_seconds
    try:
        seconds = parse_seconds(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration such as 30s, 2m or 1m30s")
    return seconds


def cmd_run(args: argparse.Namespace) -> int:
    from oneos.cli.run import run
    return run(_client(args), args.pipeline, verbose=args.verbose, timeout=args.timeout)


# ---------------------------------------------------------------------- logs


def _add_logs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "logs", help="print a pipeline's output, or an agent's log (its stderr), from wherever it runs",
        description="`logs PIPELINE` prints the pipeline's output: the stdout of its agents that no other agent "
                    "reads (its last stages), each byte once across their restarts. `logs PIPELINE/AGENT` (or an "
                    "agent's name alone, if only one pipeline has it and no pipeline has that name) prints the "
                    "agent's log: its stderr and OneOS's lines about it.")
    p.add_argument("agent", metavar="PIPELINE|PIPELINE/AGENT", help="a pipeline (its output) or an agent (its log)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing as it grows, across restarts, until it ends for good")
    p.add_argument("-p", "--previous", action="store_true", help="the log of the run before the current one")
    p.set_defaults(run=cmd_logs)


def cmd_logs(args: argparse.Namespace) -> int:
    from oneos.cli.logs import logs
    return logs(_client(args), args.agent, sys.stdout.buffer, follow=args.follow, previous=args.previous)


# ----------------------------------------------------------------------- get


def _add_get(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("get", help="list nodes, pipelines or agents, or show the boot record",
                       description="Show cluster state from the Name Server, as a table or as documents. "
                                   "Names narrow the list: node ids, pipeline names, or for agents a "
                                   "pipeline name or PIPELINE/AGENT.")
    p.add_argument("resource", choices=sorted(GETTERS), help="what to show")
    p.add_argument("names", nargs="*", metavar="NAME", help="show only these")
    _add_output(p, ["table", "json", "yaml"], "table (default), or the documents as json or yaml")
    p.set_defaults(run=cmd_get)


def cmd_get(args: argparse.Namespace) -> int:
    if args.names and args.resource == "boot":
        raise OneOSError("get boot takes no names: there is one boot record")
    return GETTERS[args.resource](_client(args), args.output, args.names)


def _select(kind: str, items: list[dict[str, Any]], names: list[str], matches: Callable[[dict, str], bool],
            unreadable: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The items that some name matches (all of them without names); OneOSError for a name that matches none
    (nor any of `unreadable`, the names that matched something that could not be read)."""
    if not names:
        return items
    missing = [n for n in names if n not in unreadable and not any(matches(item, n) for item in items)]
    if missing:
        raise OneOSError(f"{kind} {', '.join(repr(n) for n in missing)} not found; "
                         f"`oneosctl get {kind}s` lists them")
    return [item for item in items if any(matches(item, n) for n in names)]


def _unreadable(what: str, hint: str, problems: dict[str, str], names: list[str],
                matches: Callable[[str, str], bool] = str.__eq__) -> list[str]:
    """One stderr line per stored document that cannot be read (`problems`: its name -> why; only those
    some name matches, if names are given): `what` and `hint` with {name} in them say what it is and
    what to do; the names that matched one."""
    for name, why in sorted(problems.items()):
        if not names or any(matches(name, n) for n in names):
            print(f"{PROG}: {what.format(name=name)} cannot be read: {why}; {hint.format(name=name)}",
                  file=sys.stderr)
    return [n for n in names if any(matches(name, n) for name in problems)]


def _shown_none(unreadable: list[str], items: list[dict[str, Any]], matches: Callable[[dict, str], bool]) -> int:
    """The exit status of a `get`: 1 when a name given matched nothing that could be read, else 0."""
    return 1 if any(not any(matches(item, n) for item in items) for n in unreadable) else 0


def _print_structured(list_kind: str, items: list[dict[str, Any]], names: list[str], fmt: str) -> None:
    """One named item as its document, as kubectl prints it; otherwise a list."""
    if len(names) == 1 and len(items) == 1:
        sys.stdout.write(output.structured(items[0], fmt))
    else:
        sys.stdout.write(output.structured({"kind": list_kind, "items": items}, fmt))


def _show(list_kind: str, items: list[dict[str, Any]], names: list[str], fmt: str, empty: str,
          headers: list[str], rows: Callable[[], list[list[Any]]], quiet: bool = False) -> int:
    """What every `get` prints: the documents (json, yaml), or `empty` on stderr (not when `quiet`: lines
    about unreadable ones said enough), or the table of `rows()`."""
    if fmt != "table":
        _print_structured(list_kind, items, names, fmt)
    elif not items:
        if not quiet:
            print(empty, file=sys.stderr)
    else:
        sys.stdout.write(output.table(headers, rows()))
    return 0


def _pairs(mapping: dict[str, Any]) -> str:
    """k=v,k=v sorted by key, or <none>: labels and settings in a table cell."""
    return ",".join(f"{k}={v}" for k, v in sorted(mapping.items())) or "<none>"


PENDING = "Pending approval"
NOT_APPROVED = "NotApproved"


def _get_nodes(ns: NameServer, fmt: str, names: list[str]) -> int:
    keys = state.read_keys(ns)
    nodes, problems = state.read_nodes(ns, now=datetime.now(timezone.utc), keys=keys)
    for problem in problems:
        print(f"{PROG}: warning: skipped an invalid node record: {problem}", file=sys.stderr)
    joined = [_node_item(n) for n in nodes]
    asking = [_pending_item(r) for i, r in sorted(enrollment.pending(ns, keys).items())
              if i not in {n["id"] for n in joined}]
    items = _select("node", joined + asking, names, lambda r, n: r["id"] == n)
    for node in nodes:
        if names and node.record["id"] not in names:
            continue
        if node.distrust is not None:
            if node.distrust[0] != NOT_APPROVED:     # said below, with the pending requests
                print(f"{PROG}: {node.distrust[1]}", file=sys.stderr)
        elif node.silent is not None:
            print(f"{PROG}: {node.not_ready_reason()}; its agents are Unknown until it renews, and placed "
                  "elsewhere if its session ends", file=sys.stderr)
    for item in items:
        if item["state"] == NOT_APPROVED:
            print(f"{PROG}: node {item['id']} has no registered key: it was never approved, or was revoked; "
                  f"`oneosctl node revoke {item['id']}` ends its session", file=sys.stderr)
    with_keys = any(item["state"] == PENDING for item in asking)
    headers = ["ID", "STATE", "LEADER", "KERNEL", "LABELS", "AGE"] + (["KEY"] if with_keys else [])
    return _show("NodeList", items, names, fmt, f"No nodes have joined the cluster at {ns.url}.", headers,
                 lambda: [_node_row(r, keys, with_keys) for r in items])


def _node_row(item: dict[str, Any], keys: dict[str, dict[str, Any]], with_key: bool) -> list[Any]:
    """A node's row in `get nodes`; a pending one's KERNEL says whether it asks to be one."""
    if item["state"] == PENDING:
        kernel, since = "asks" if item["wantsKernel"] else "no", item["requestedAt"]
    else:
        kernel, since = "yes" if item["kernel"] else "no", item["startedAt"]
    row = [item["id"], item["state"], "yes" if item.get("leader") else "no", kernel, _pairs(item["labels"]),
           output.age(since)]
    if with_key:
        row.append(item.get("fingerprint") or keys.get(item["id"], {}).get("fingerprint", "<none>"))
    return row


def _pending_item(request: dict[str, Any]) -> dict[str, Any]:
    """A runtime that asked to join, as `get nodes` shows it: what it says of itself, and its key's fingerprint."""
    item = {k: v for k, v in request.items() if k not in ("signature", "proof", "signingKey", "boxKey")}
    return dict(item, state=PENDING, labels=request.get("labels") or {})


def _node_item(node: state.NodeView) -> dict[str, Any]:
    """A node as `get nodes -o json` prints it: its record, whether it leads, and its state now (NotReady
    once its renewals are overdue; NotApproved or SignatureInvalid when its record cannot be trusted), and
    `kernel` and `labels` as its approval or the boot record says, not as its record claims (its approval's
    labels are its labels, as placement takes them)."""
    item = dict(node.record, leader=node.leader, state=node.state)
    if node.kernel is not None:
        item["kernel"] = node.kernel
    if node.labels is not None:
        item["labels"] = node.labels
    return item


def _get_boot(ns: NameServer, fmt: str, names: list[str]) -> int:
    sys.stdout.write(output.structured(state.read_boot(ns), "yaml" if fmt == "table" else fmt))
    return 0


def _get_pipelines(ns: NameServer, fmt: str, names: list[str]) -> int:
    stored, problems = manifests.list_pipelines(ns)
    unreadable = _unreadable("pipeline {name}", f"`{PROG} describe pipeline {{name}}` says more", problems, names)
    named = lambda doc, n: doc["metadata"]["name"] == n   # noqa: E731
    docs = _select("pipeline", stored, names, named, unreadable)

    def rows() -> list[list[Any]]:
        statuses = _seen_now(ns, state.read_statuses(ns))
        table = []
        for doc in docs:
            name = doc["metadata"]["name"]
            agents = doc["spec"]["agents"]
            running = sum(1 for a in agents
                          if statuses.get(state.agent_id(name, a["name"]), {}).get("state") == "Running")
            table.append([name, f"{running}/{len(agents)}", pipeline_phase(doc, statuses),
                          output.age(doc["metadata"]["createdAt"])])
        return table
    return _show("PipelineList", docs, [n for n in names if n not in unreadable], fmt,
                 f"No pipelines on the cluster at {ns.url}.", ["NAME", "RUNNING", "STATUS", "AGE"], rows,
                 quiet=bool(problems)) or _shown_none(unreadable, docs, named)


def _get_agents(ns: NameServer, fmt: str, names: list[str]) -> int:
    statuses, bad = state.read_statuses_and_problems(ns)
    named = lambda agent, n: n in (agent.partition("/")[0], agent)   # noqa: E731 - PIPELINE/AGENT or PIPELINE
    unreadable = _unreadable("the status of agent {name}", "its node rewrites it when the agent's state changes",
                             {k.replace(".", "/", 1): why for k, why in bad.items()}, names, named)
    status_named = lambda st, n: named(f"{st['pipeline']}/{st['agent']}", n)   # noqa: E731
    items = _select("agent", [statuses[k] for k in sorted(statuses)], names, status_named, unreadable)
    # Only PIPELINE/AGENT names one agent: a pipeline's name lists its agents.
    return _show("AgentList", items, [n for n in names if "/" in n and n not in unreadable], fmt,
                 f"No agents on the cluster at {ns.url}.", ["NAME", "NODE", "STATE", "RESTARTS", "LAST EXIT", "AGE"],
                 lambda: _agent_rows(items, _not_ready(ns)), quiet=bool(bad)) or _shown_none(unreadable, items,
                                                                                             status_named)


def _agent_rows(items: list[dict[str, Any]], not_ready: dict[str, str]) -> list[list[Any]]:
    return [[f"{st['pipeline']}/{st['agent']}", st.get("node", "<none>"), agent_state(as_seen(st, not_ready)),
             restarts(st), last_exit(st), output.age(st["startedAt"]) if "startedAt" in st else "-"] for st in items]


def _get_devices(ns: NameServer, fmt: str, names: list[str]) -> int:
    registered, bad = state.read_devices_and_problems(ns)
    unreadable = _unreadable("the registration of device {name}", "its node registers it again when it starts; "
                             f"`{PROG} delete device {{name}}` removes it", bad, names)
    named = lambda d, n: d["device"] == n   # noqa: E731
    items = _select("device", [registered[k] for k in sorted(registered)], names, named, unreadable)

    def rows() -> list[list[Any]]:
        shown = {n.record["id"]: n.state for n in state.read_nodes(ns, now=datetime.now(timezone.utc))[0]}
        return [[d["device"], d["node"], {"NotReady": "NodeNotReady", None: "NodeDown"}.get(shown.get(d["node"]),
                                                                                          "Ready"),
                 _pairs(d["settings"])] for d in items]
    return _show("DeviceList", items, [n for n in names if n not in unreadable], fmt,
                 f"No devices registered on the cluster at {ns.url}.", ["DEVICE", "NODE", "STATE", "SETTINGS"], rows,
                 quiet=bool(bad)) or _shown_none(unreadable, items, named)


GETTERS: dict[str, Callable[[NameServer, str, list[str]], int]] = {
    "devices": _get_devices,
    "device": _get_devices,
    "nodes": _get_nodes,
    "node": _get_nodes,
    "boot": _get_boot,
    "pipelines": _get_pipelines,
    "pipeline": _get_pipelines,
    "agents": _get_agents,
    "agent": _get_agents,
}


# ---------------------------------------------------------- node, token


def _add_node(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="approve or revoke a node",
                       description="Let a runtime that asked to join in (`get nodes` lists it as Pending approval, "
                                   "with its key's fingerprint), or remove a node for good.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    approve = verbs.add_parser("approve", help="register the key a runtime asked to join with",
                               description="Register the key of the runtime that asked to join under this id, and "
                                           "(when the Name Server has ACLs) give it a token of its own, sealed to "
                                           "its key. Compare the fingerprint with the one the runtime logs.")
    approve.add_argument("id", metavar="ID")
    approve.add_argument("--kernel", action="store_true", help="as a kernel node (runs kernel agents, may lead)")
    approve.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                         help="a label the approval gives it (repeatable)")
    approve.add_argument("--fingerprint", metavar="SHA256:...", help="refuse unless the request's key has this one")
    approve.add_argument("--signing-key", metavar="KEY",
                         help="with --box-key: register these keys (as `oneosd ID --make-key` prints them on the "
                              "node) with no join request; prints `node/ID approved`, `unchanged` or `configured`")
    approve.add_argument("--box-key", metavar="KEY", help="the node's X25519 public key (with --signing-key)")
    approve.set_defaults(run=cmd_node_approve)
    revoke = verbs.add_parser("revoke", help="remove a node for good",
                              description="Delete the node's registered key, its token and policy, and its "
                                          "sessions: its record goes, its agents are placed elsewhere, and it can "
                                          "write nothing more.")
    revoke.add_argument("id", metavar="ID")
    revoke.set_defaults(run=cmd_node_revoke)


def _labels(items: list[str]) -> dict[str, str]:
    from oneos.nodeagent.config import parse_labels
    labels: dict[str, str] = {}
    for item in items:
        labels.update(parse_labels(item, "--label"))
    return labels


def cmd_node_approve(args: argparse.Namespace) -> int:
    if args.signing_key is not None or args.box_key is not None:
        return _approve_keys(args)
    ns = _client(args)
    request = enrollment.read_requests(ns).get(args.id)
    if request is None:
        raise OneOSError(f"node {args.id} has not asked to join (no valid request at "
                         f"{state.joinrequest_key(args.id)}); start it (`oneosd {args.id}`), then approve it")
    problem = enrollment.request_problem(request)
    if problem:
        raise OneOSError(f"the join request of {args.id} is not to be trusted: {problem}; refused")
    if args.fingerprint and args.fingerprint != request["fingerprint"]:
        raise OneOSError(f"the join request of {args.id} has key {request['fingerprint']}, not {args.fingerprint}: "
                         "refused (is someone else asking under this id?)")
    who = os.environ.get("USER") or "an operator"
    record = enrollment.approve(ns, args.id, request["signingKey"], request["boxKey"], kernel=args.kernel,
                                labels=_labels(args.label), approved_by=f"oneosctl node approve ({who})")
    token = "with a token of its own" if record.get("tokenAccessor") else "(the Name Server has no ACLs: no token)"
    print(f"node {args.id} approved{' as a kernel node' if record['kernel'] else ''}, key {record['fingerprint']}, "
          f"{token}")
    return 0


def _approve_keys(args: argparse.Namespace) -> int:
    """`node approve ID --signing-key K --box-key K`: the keys read off the node, registered as they are, in a
    way a provisioning tool can run again (one line: node/ID approved, unchanged or configured)."""
    if args.signing_key is None or args.box_key is None:
        raise UsageError("--signing-key and --box-key go together (both from `oneosd ID --make-key` on the node); "
                         "give neither to approve the join request the node made")
    if args.fingerprint:
        raise UsageError("--fingerprint checks a join request's key; with --signing-key the key is given: leave it out")
    try:
        signing_key = public_key(args.signing_key, "--signing-key")
        box_key = public_key(args.box_key, "--box-key")
    except IdentityError as exc:
        raise UsageError(str(exc)) from None
    from oneos.nodeagent.config import check_id
    check_id(args.id, "node id")
    who = os.environ.get("USER") or "an operator"
    outcome, _ = enrollment.register(_client(args), args.id, signing_key, box_key, kernel=args.kernel,
                                     labels=_labels(args.label), approved_by=f"oneosctl node approve ({who})")
    print(f"node/{args.id} {outcome}")
    return 0


def cmd_node_revoke(args: argparse.Namespace) -> int:
    done = enrollment.revoke(_client(args), args.id)
    print(f"node {args.id} revoked: removed {', '.join(done)}")
    return 0


def _add_token(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="make, list or delete join tokens",
                       description="A join token lets runtimes in without an operator's approval: "
                                   "`oneosd ID --join-token ID.SECRET`. The controller approves each one that "
                                   "proves it holds the token, while the token has uses left and has not expired.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="make a join token (printed once)")
    create.add_argument("--ttl", default="1h", metavar="DURATION", help="how long it is valid (default 1h)")
    create.add_argument("--uses", type=int, default=1, metavar="N", help="how many runtimes it lets in (default 1)")
    create.add_argument("--kernel", action="store_true", help="the runtimes it lets in are kernel nodes")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label given to the runtimes it lets in (repeatable)")
    create.add_argument("--description", default="", help="what it is for")
    create.set_defaults(run=cmd_token_create)
    listing = verbs.add_parser("list", help="list join tokens (never their secrets)")
    listing.set_defaults(run=cmd_token_list)
    delete = verbs.add_parser("delete", help="delete a join token")
    delete.add_argument("id", metavar="ID")
    delete.set_defaults(run=cmd_token_delete)


def cmd_token_create(args: argparse.Namespace) -> int:
    try:
        ttl = parse_seconds(args.ttl)
    except ValueError as exc:
        raise UsageError(f"--ttl {args.ttl!r}: {exc}") from None
    token = enrollment.create_join_token(_client(args), ttl, kernel=args.kernel, labels=_labels(args.label),
                                         uses=args.uses, description=args.description)
    print(token)
    print(f"{PROG}: join token made (valid {args.ttl}, {args.uses} use{'s' if args.uses != 1 else ''}"
          f"{', kernel nodes' if args.kernel else ''}); start a runtime with `oneosd ID --join-token {token}`; "
          "it is not shown again", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = enrollment.read_join_tokens(_client(args))
    if not tokens:
        print("No join tokens.", file=sys.stderr)
        return 0
    sys.stdout.write(output.table(["ID", "USES LEFT", "KERNEL", "LABELS", "EXPIRES", "DESCRIPTION"], [
        [t["id"], t["usesLeft"], "yes" if t["kernel"] else "no", _pairs(t.get("labels") or {}),
         "expired" if enrollment.expired(t) else t["expiresAt"], t.get("description", "")]
        for _, t in (tokens[k] for k in sorted(tokens))]))
    return 0


def cmd_token_delete(args: argparse.Namespace) -> int:
    ns = _client(args)
    if ns.get(state.jointoken_key(args.id))[1] is None:
        raise OneOSError(f"join token {args.id} not found; `oneosctl token list` lists them")
    ns.delete(state.jointoken_key(args.id))
    print(f"join token {args.id} deleted")
    return 0


# ------------------------------------------------------------------- compile


def _add_compile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compile", help="print the manifest a shell pipeline compiles to",
        description="Compile a shell one-liner, such as 'seq 100 | grep 7 | wc -l', to a Pipeline manifest and "
                    "print it. Local program files it names (./ctl.py, python3 ctl.py) are looked up in the "
                    "current directory. If the cluster's Name Server answers, /dev/KIND/NAME paths of its "
                    "registered devices (and oneos-gpio's pins) become device requirements; without it they "
                    "stay plain paths. A construct that cannot be compiled is shown with a caret under its "
                    "column, and the exit status is 2.")
    p.add_argument("pipeline", metavar="PIPELINE", help="the one-liner, quoted as one argument")
    p.add_argument("--name", help="the pipeline's name (default: the stage names joined by '-')")
    _add_output(p, ["yaml", "json"], "yaml (default) or json")
    p.set_defaults(run=cmd_compile)


def _known_devices(args: argparse.Namespace) -> set[str]:
    """The devices registered in the cluster, if its Name Server answers; none when it does not."""
    try:
        return set(state.read_devices(NameServer(args.nameserver, timeout=2.0)))
    except OneOSError:
        return set()


def cmd_compile(args: argparse.Namespace) -> int:
    """Print the manifest of args.pipeline; 2 with the caret message when it cannot be compiled."""
    try:
        doc = compile_pipeline(args.pipeline, name=args.name, base_dir=Path.cwd(), devices=_known_devices(args))
    except CompileError as err:  # its message already starts with "oneosctl: "
        print(err, file=sys.stderr)
        return err.exit_code
    sys.stdout.write(output.structured(doc, args.output))
    return 0


# --------------------------------------------------------------------- main

# Each entry adds one subcommand; new subcommands (apply, get, describe, ...) add theirs here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_validate,
    _add_compile,
    _add_bootstrap,
    _add_get,
    _add_apply,
    _add_describe,
    _add_delete,
    _add_run,
    _add_logs,
    _add_node,
    _add_token,
    _add_acl,
]


# Global options go before or after the subcommand (`oneosctl get pipelines --nameserver URL`),
# as kubectl takes them: the main parser sets their defaults, and each subcommand's parser has
# them too with default=SUPPRESS, so that it sets them only when they are given after it.
OUTPUT_FORMATS = ["table", "json", "yaml"]


def _add_globals(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    parser.add_argument("--nameserver", metavar="URL", default=default,
                        help="the Name Server (default $ONEOS_NAMESERVER, else http://127.0.0.1:8500)")
    parser.add_argument("--token-file", metavar="FILE", default=default,
                        help="a file (mode 0600) with the Name Server ACL token to send (default $ONEOS_TOKEN, "
                             "else $CONSUL_HTTP_TOKEN, else $ONEOS_HOME/token when it exists)")


def _add_output(parser: argparse.ArgumentParser, formats: list[str], help: str) -> None:
    """-o/--output of a command that prints documents; the first of `formats` is its default."""
    parser.add_argument("-o", "--output", choices=formats, default=argparse.SUPPRESS, help=help)
    parser.set_defaults(output_formats=formats)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog=prog, description="Declarative control of a OneOS cluster.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_globals(parser, default=None)
    parser.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default=None,
                        help="how commands that print documents (get, compile) print them")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for command in {id(p): p for p in sub.choices.values()}.values():
        _add_globals(command)
    return parser


def _check_output(args: argparse.Namespace) -> None:
    """-o given before the subcommand: only for one that prints documents, in a format it has."""
    formats = getattr(args, "output_formats", None)
    if formats is None:
        if args.output is not None:
            raise UsageError(f"-o/--output is for the commands that print documents (get, compile), "
                             f"not {args.command}")
    elif args.output is None:
        args.output = formats[0]
    elif args.output not in formats:
        raise UsageError(f"{args.command} -o/--output: {args.output!r} is not one of {', '.join(formats)}")


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run oneosctl with `argv` (default: the process's arguments); return the exit status. `prog` is the
    command's name in usage and help (the `oneos` shell runs its one-off commands through here)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        _check_output(args)
    except UsageError as err:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    try:
        if args.token_file:
            # Every client this command makes finds it there (oneos.nameserver.client.find_token).
            os.environ["ONEOS_TOKEN"] = read_secret(args.token_file, "--token-file")
        return args.run(args)
    except OneOSError as err:
        # Document and compile errors already say where (FILE: ..., or the line with a caret).
        print(err if isinstance(err, (DocumentError, CompileError)) else f"{PROG}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`oneosctl ... | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not complain
        return 141
    except Exception as err:
        pulsar = sys.modules.get("pulsar")   # loaded only by the commands that use the bus
        if pulsar is None or not isinstance(err, pulsar.PulsarException):
            raise
        if isinstance(err, (pulsar.AuthenticationError, pulsar.AuthorizationError)):
            print(f"{PROG}: the Pulsar broker refused this client ({type(err).__name__}); check the token in "
                  f"${TOKEN_FILE_ENV} and what the cluster lets it do", file=sys.stderr)
            return 1
        print(f"{PROG}: the Pulsar broker refused or failed ({type(err).__name__}: {err}); "
              "check it is running at the boot record's pulsar.url (`oneosctl get boot`)", file=sys.stderr)
        return 1


def entry() -> None:
    """The console script: main(), then an exit that the Pulsar client library cannot turn into an abort."""
    from oneos.bus.client import exit_process
    exit_process(main())


if __name__ == "__main__":
    entry()
