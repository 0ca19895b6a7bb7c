"""`oneosd`: the command that runs a OneOS runtime (oneos.nodeagent.daemon), or with --dev the
whole system on this machine (oneos.dev)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from oneos import __version__, dev
from oneos.errors import OneOSError, UsageError
from oneos.identity import Identity
from oneos.nodeagent import config as runtime_config
from oneos.nodeagent.daemon import Runtime, StoppedWaiting, setup_logging
from oneos.nodeagent.sandbox import private_folder

log = logging.getLogger("oneos.nodeagent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneosd",
        description="The OneOS runtime: joins this machine to a OneOS cluster and runs what is assigned to it.")
    parser.add_argument("runtime_id", nargs="?", metavar="RUNTIME_ID",
                        help="this runtime's id (default: the one saved in $ONEOS_HOME, else a new uuid4)")
    parser.add_argument("--dev", action="store_true",
                        help="run the whole system on this machine: Name Server, Pulsar broker, one kernel node")
    parser.add_argument("--data-dir", metavar="DIR", help="--dev: where state is kept (default $ONEOS_HOME/dev)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="--dev: where the built-in Name Server listens (default 127.0.0.1:8500)")
    parser.add_argument("--nameserver", metavar="URL", help="the Name Server (default $ONEOS_NAMESERVER, "
                                                            "else the config file, else http://127.0.0.1:8500)")
    kernel = parser.add_mutually_exclusive_group()
    kernel.add_argument("--kernel", dest="kernel", action="store_true", default=None,
                        help="this runtime may host kernel agents and lead the cluster")
    kernel.add_argument("--no-kernel", dest="kernel", action="store_false")
    parser.add_argument("--memory", metavar="SIZE", help="memory agents may use here (e.g. 512Mi)")
    parser.add_argument("--label", action="append", default=None, metavar="KEY=VALUE",
                        help="a label for placement (repeatable)")
    parser.add_argument("--join-token", metavar="ID.SECRET",
                        help="a join token from `oneosctl token create`: enrolls this runtime without an operator's "
                             "approval (default $ONEOS_JOIN_TOKEN, else the file $ONEOS_JOIN_TOKEN_FILE names)")
    parser.add_argument("--config", metavar="FILE", help="config file (default $ONEOS_HOME/config.yaml)")
    parser.add_argument("--make-key", action="store_true",
                        help="make this runtime's key file if it has none, print its public keys as one line of "
                             "JSON (for `oneosctl node approve ID --signing-key ... --box-key ...`) and exit; "
                             "asks nothing, writes no config, does not contact the Name Server")
    parser.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to keep retrying an unreachable Name Server at start (default 60)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--version", action="version", version=f"oneosd {__version__}")
    return parser


def overrides_from(args: argparse.Namespace) -> runtime_config.Overrides:
    labels = None
    if args.label:
        labels = {}
        for item in args.label:
            labels.update(runtime_config.parse_labels(item, "--label"))
    return runtime_config.Overrides(id=args.runtime_id, nameserver=args.nameserver, kernel=args.kernel,
                                    memory=args.memory, labels=labels, join_token=args.join_token,
                                    config_file=Path(args.config) if args.config else None)


def make_key(cfg: runtime_config.RuntimeConfig) -> int:
    """Make the runtime's key file as its first start would (folders as the runtime keeps them, the file 0600;
    one that others may read is refused), and print its public keys as one line of JSON."""
    created = not cfg.key_file.exists()
    for folder in cfg.folders:
        private_folder(folder, 0o711)
    identity = Identity.load_or_create(cfg.key_file)
    print(json.dumps({"id": cfg.id, "signingKey": identity.signing_key, "boxKey": identity.box_key,
                      "fingerprint": identity.fingerprint, "created": created}))
    return 0


def run_until_signalled(runtime: Runtime) -> int:
    """Start the runtime, wait for SIGTERM/SIGINT, stop it; the exit status."""
    signal.signal(signal.SIGTERM, lambda *_: runtime.request_stop())
    signal.signal(signal.SIGINT, lambda *_: runtime.request_stop())
    try:
        runtime.start()
        runtime.wait()
    except StoppedWaiting as exc:
        log.info("%s", exc)
        runtime.stop()
        return 0
    except OneOSError as exc:
        log.error("%s", exc)
        runtime.stop()
        return exc.exit_code
    runtime.stop()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("oneosd", args.verbose)
    try:
        flags = overrides_from(args)
        if args.dev and args.make_key:
            raise UsageError("--make-key is for one runtime's key; --dev enrolls its own node")
        if args.dev:
            return dev.run(flags, data_dir=args.data_dir, listen=args.listen, verbose=args.verbose)
        if args.data_dir or args.listen:
            raise UsageError("--data-dir and --listen belong to --dev (the one-machine cluster)")
        if args.make_key:
            return make_key(runtime_config.load(flags, save=False))
        cfg = runtime_config.load(flags)
    except OneOSError as exc:
        print(f"oneosd: {exc}", file=sys.stderr)
        return exc.exit_code
    setup_logging(f"oneosd {cfg.id}", args.verbose)
    try:
        runtime = Runtime(cfg, wait_s=args.wait)
    except OneOSError as exc:      # the Name Server's address, TLS files (CONSUL_CACERT...) or token file are wrong
        print(f"oneosd: {exc}", file=sys.stderr)
        return exc.exit_code
    return run_until_signalled(runtime)


def entry() -> None:
    """The console script: main(), then an exit that the Pulsar client library cannot turn into an abort."""
    from oneos.bus.client import exit_process
    try:
        code = main()
    except KeyboardInterrupt:   # Ctrl-C before the handlers that stop in order were in place
        code = 130
    exit_process(code)


if __name__ == "__main__":
    entry()
