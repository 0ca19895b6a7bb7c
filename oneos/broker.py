"""`oneos-broker`: the embedded Pulsar broker (pulsar-lite) at the address OneOS gives it.

It writes pulsar-lite's config (metrics moved off 0.0.0.0:8080 to a loopback port) and
then becomes pulsar-lite (exec), so signals reach the broker itself. Without --listen it
serves the Pulsar URL of the boot record: that is how the init manifest runs it, as a
kernel agent. Defaults may come from the environment: ONEOS_BROKER_DATA (else
$ONEOS_DATA_DIR/pulsar, the node's data folder a node agent gives its agents, else
./pulsar) and ONEOS_BROKER_METRICS (else a free loopback port).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.parse
from pathlib import Path

from oneos.errors import OneOSError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def binary() -> str:
    """The pulsar-lite executable shipped in the pulsar-lite package."""
    try:
        from pulsar_lite.binary_finder import find_pulsar_lite_binary
        return find_pulsar_lite_binary()
    except (ImportError, FileNotFoundError):
        raise OneOSError("pulsar-lite is not installed (pip install pulsar-lite); it has builds for "
                         "Linux x86_64 and macOS arm64 only, elsewhere point the boot record at a Pulsar cluster") from None


def argv_for(listen: str, data_dir: Path, metrics: str, log_level: str = "warn") -> list[str]:
    """Write pulsar-lite's config in data_dir and return the command line that runs it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "pulsar-lite.toml"
    config.write_text(f'# Written by oneos-broker.\n[metrics]\nenabled = true\naddr = "{metrics}"\n')
    return [binary(), "--config", str(config), "--addr", listen, "--db-path", str(data_dir / "db"),
            "--log-level", log_level]


def _listen_from_boot(nameserver: str | None) -> str:
    from oneos import state
    from oneos.nameserver.client import NameServer
    boot = state.read_boot(NameServer(nameserver))
    url = urllib.parse.urlsplit(boot["pulsar"]["url"])
    return f"{url.hostname}:{url.port or 6650}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oneos-broker", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", metavar="HOST:PORT", help="broker address (default: the boot record's Pulsar URL)")
    data_default = os.environ.get("ONEOS_BROKER_DATA") or (
        str(Path(os.environ["ONEOS_DATA_DIR"]) / "pulsar") if os.environ.get("ONEOS_DATA_DIR") else "pulsar")
    parser.add_argument("--data-dir", metavar="DIR", default=data_default,
                        help="where messages are stored (default $ONEOS_BROKER_DATA, else $ONEOS_DATA_DIR/pulsar, "
                             "else ./pulsar)")
    parser.add_argument("--metrics", metavar="HOST:PORT", default=os.environ.get("ONEOS_BROKER_METRICS"),
                        help="Prometheus metrics address (default $ONEOS_BROKER_METRICS, else a free loopback port)")
    parser.add_argument("--nameserver", metavar="URL", help="the Name Server to read the boot record from")
    parser.add_argument("--log-level", default="warn", choices=["error", "warn", "info", "debug", "trace"])
    args = parser.parse_args(argv)
    try:
        listen = args.listen or _listen_from_boot(args.nameserver)
        host, _, port = listen.rpartition(":")
        if not port.isdigit():
            raise OneOSError(f"--listen {listen!r} is not HOST:PORT")
        if not port_free(host or "0.0.0.0", int(port)):
            raise OneOSError(f"cannot listen on {listen}: the address is in use; stop what uses it or pick another port")
        metrics = args.metrics or f"127.0.0.1:{free_port()}"
        command = argv_for(listen, Path(args.data_dir).resolve(), metrics, args.log_level)
    except OneOSError as exc:
        print(f"oneos-broker: {exc}", file=sys.stderr)
        return 1
    print(f"oneos-broker: pulsar-lite on pulsar://{listen} (metrics http://{metrics}/metrics), "
          f"data in {Path(args.data_dir).resolve()}", file=sys.stderr, flush=True)
    os.execv(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
