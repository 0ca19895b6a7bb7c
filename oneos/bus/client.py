"""The one Pulsar client of a process: `connect(url)` opens it, `close(client)` closes it.

A `pulsar.Client` owns the connections and I/O threads that every producer and consumer
of the process share, so a process opens one and hands it to its writers and readers.
The client library logs at INFO on stdout by default, which would mix with a pipeline's
output (oneosctl run streams it to stdout): here it logs warnings and errors on stderr.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from typing import TYPE_CHECKING

from oneos.errors import OneOSError

if TYPE_CHECKING:
    import pulsar

log = logging.getLogger(__name__)

_URL = re.compile(r"^pulsar(\+ssl)?://\S+$")

OPERATION_TIMEOUT = 10.0   # seconds for lookups, creating producers/consumers, closing
CONNECTION_TIMEOUT = 5.0   # seconds for one TCP connection attempt to a broker


def connect(url: str, *, operation_timeout: float = OPERATION_TIMEOUT,
            connection_timeout: float = CONNECTION_TIMEOUT, logger: logging.Logger | None = None) -> "pulsar.Client":
    """A Pulsar client for `url` (pulsar://HOST:PORT or pulsar+ssl://...), logging to stderr.

    Creating the client does not connect yet: an unreachable broker shows up as an error
    when the first producer or consumer is created, after `operation_timeout` seconds.
    `logger`, a Python logger, replaces the stderr one: for a process that leaves with
    `exit_process` (no interpreter shutdown) and wants to filter what the library says.
    """
    import pulsar   # here, not at the top: ~10 MB that an idle process does without
    if not _URL.match(url):
        raise OneOSError(f"Pulsar URL {url!r} is not pulsar://HOST:PORT or pulsar+ssl://HOST:PORT; "
                         f"fix pulsar.url in the boot record")
    return pulsar.Client(url, operation_timeout_seconds=max(1, round(operation_timeout)),
                         connection_timeout_ms=int(connection_timeout * 1000), logger=logger or _stderr_logger())


def close(client: "pulsar.Client") -> None:
    """Close the client and every producer and consumer it made; never raises."""
    try:
        client.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort: the broker may be gone
        log.debug("closing the Pulsar client: %s", exc)


def _stderr_logger() -> "pulsar.FileLogger | logging.Logger":
    # The C++ file logger writes without calling back into Python (a Python logger is called
    # from the client's threads and is gone during interpreter shutdown). /dev/stderr cannot
    # be opened when stderr is a socket (systemd's journal): then Python logging it is.
    import pulsar
    try:
        os.close(os.open("/dev/stderr", os.O_WRONLY | os.O_APPEND))
        return pulsar.FileLogger(pulsar.LoggerLevel.Warn, "/dev/stderr")
    except OSError:
        logger = logging.getLogger("pulsar")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
        return logger


def exit_process(code: int) -> None:
    """End this process with `code`, without the Pulsar client library's exit-time destructors.

    pulsar-client can abort at interpreter exit ("terminate called without an active
    exception", apache/pulsar-client-python#256) even after every client was closed, which
    turns a clean exit into SIGABRT. Once the program is done, flush what it wrote and leave
    at once; a process that never loaded the library exits normally.
    """
    if "pulsar" not in sys.modules:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
