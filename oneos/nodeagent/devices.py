"""A node's devices: registered in the Name Server, and served to the agents that use them.

Devices are declared in the node's config, by name (KIND/NAME) with their properties:

    devices:
      gpio/D4: {pin: D4, direction: in}
      gpio/D7: {pin: D7, direction: out}

At start the node registers each one at `oneos/devices/<kind>/<name>` (see
schemas/device.schema.json): the record names the owner and outlives its session, so a
device name stays known (the compiler turns `/dev/gpio/D4` into a requirement) and an agent
that requires it waits, Pending with the reason, while the owner is down. A name that
another node has registered is refused: names are the cluster's, not the node's.

Serving: an agent that requires a gpio device and names `/dev/gpio/NAME` in its argv gets
a FIFO in its working directory in its place; `stdin: {device}` / `stdout: {device}` join
its stdin/stdout to the device. A device is served by an `oneos-gpio` process (watch for
an input pin, write for an output pin), the same program a pipeline stage would run, so
the node agent needs no GPIO library of its own. The helpers die with the node agent, even
when it is killed with SIGKILL (oneos/children.py): a helper left behind would hold the pin.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from oneos import children, state
from oneos.documents import DocumentError
from oneos.errors import OneOSError
from oneos.nameserver.client import NameServer
from oneos.nodeagent.sandbox import open_folder
from oneos.paths import inside
from oneos.service import Service

log = logging.getLogger("oneos.nodeagent")

DIRECTIONS = ("in", "out")
WRITER_DRAIN_S = 5.0   # how long an agent's last lines may take to reach its output device
STOP_GRACE_S = 5.0     # after SIGTERM, before SIGKILL


class DeviceError(OneOSError):
    """A device of the node's config cannot be registered or served."""


def check(devices: dict[str, dict[str, Any]]) -> None:
    """The properties a kind of device needs: gpio needs its `pin` (and `direction` in|out, default in)."""
    for name, props in devices.items():
        kind = name.split("/", 1)[0]
        if kind != "gpio":
            continue
        if not isinstance(props.get("pin"), str) or not props["pin"]:
            raise DeviceError(f"config: devices.{name}: a gpio device needs its pin, e.g. {{pin: D4, direction: in}}")
        if props.get("direction", "in") not in DIRECTIONS:
            raise DeviceError(f"config: devices.{name}.direction: {props['direction']!r} is not in or out")


def register(ns: NameServer, node_id: str, devices: dict[str, dict[str, Any]]) -> None:
    """Register this node as the owner of its devices; DeviceError if another node owns one of the names."""
    check(devices)
    for name, props in sorted(devices.items()):
        key = state.device_key(name)
        _, entry = ns.get(key)
        current = None
        if entry is not None:
            try:
                current = state.decode(entry, "device")
            except DocumentError:
                current = None
        if current and current["node"] != node_id:
            raise DeviceError(f"device {name} is registered to node {current['node']}; a device name is the "
                              f"cluster's: rename it in this node's config, or `oneosctl delete device {name}` "
                              "if that node is gone for good")
        if current and current["settings"] == props:
            continue
        doc = {"device": name, "node": node_id, "settings": props, "registeredAt": state.utcnow()}
        if not state.put_document(ns, key, "device", doc, cas=entry.modify_index if entry else 0):
            raise DeviceError(f"device {name} was registered by someone else at the same moment; start again")
        log.info("registered device %s (%s)", name, ", ".join(f"{k}={v}" for k, v in props.items()))


def _gpio_argv(props: dict[str, Any], reading: bool) -> list[str]:
    """The oneos-gpio command that serves a pin: watch it (the agent reads) or write it (the agent writes)."""
    return [os.path.join(os.path.dirname(sys.executable), "oneos-gpio"), "watch" if reading else "write",
            props["pin"]]


class DeviceServer(Service):
    """The device streams of one process start: FIFOs for argv paths, pipes for stdin/stdout.

    Its helper processes are started by argv(), stdin() and stdout(), from the thread that
    waits for the agent; `close()` when the agent ended, `stop()` to end them at once.
    """

    def __init__(self, workdir: Path, devices: dict[str, dict[str, Any]], env: dict[str, str],
                 owner: Callable[[int], None] | None = None) -> None:
        """`owner(fd)` gives a FIFO (and the folders made for it) to the agent's user (sandbox.Sandbox.own)."""
        super().__init__(f"devices of {workdir.name}")
        self.workdir = workdir
        self.owner = owner
        self.devices = devices
        self.env = env
        self.procs: list[subprocess.Popen] = []
        self.writers: list[subprocess.Popen] = []   # stdout -> device: drained before the agent counts as ended

    def _props(self, name: str) -> dict[str, Any]:
        props = self.devices.get(name)
        if props is None:
            raise DeviceError(f"device {name} is not on this node (its config does not declare it)")
        if not name.startswith("gpio/"):
            raise DeviceError(f"device {name}: only gpio devices can be served as files")
        return props

    def _spawn(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        if self.stopping.is_set():
            raise DeviceError(f"the devices of {self.workdir.name} are being stopped")
        proc = children.spawn(argv, env=self.env, stderr=subprocess.DEVNULL, **kwargs)
        self.procs.append(proc)
        return proc

    def argv(self, argv: list[str], required: list[str]) -> list[str]:
        """argv with each /dev/KIND/NAME of a required device replaced by a FIFO that serves it."""
        out = list(argv)
        for i, word in enumerate(argv[1:], start=1):
            name = word[len("/dev/"):] if word.startswith("/dev/") else None
            if name not in required:
                continue
            props = self._props(name)
            fifo = inside(self.workdir, "dev", name, what="device")
            # Through descriptors, following no link: the working directory is the agent's.
            folder = open_folder(self.workdir, fifo.relative_to(self.workdir).parent.parts, self.owner)
            try:
                try:
                    os.unlink(fifo.name, dir_fd=folder)
                except FileNotFoundError:
                    pass
                os.mkfifo(fifo.name, dir_fd=folder)
                # O_RDWR does not wait for the other end: the server holds the FIFO while the agent opens it.
                fd = os.open(fifo.name, os.O_RDWR | os.O_NOFOLLOW, dir_fd=folder)
            finally:
                os.close(folder)
            try:
                if self.owner is not None:
                    self.owner(fd)
                reading = props.get("direction", "in") == "in"
                # (A FIFO's server holds both ends, so it never sees an end: it is stopped with the agent.)
                self._spawn(_gpio_argv(props, reading), **({"stdout": fd} if reading else {"stdin": fd}))
            finally:
                os.close(fd)
            out[i] = str(fifo)
        return out

    def stdin(self, name: str) -> int:
        """A file descriptor to give the agent as stdin: the device's values as lines."""
        proc = self._spawn(_gpio_argv(self._props(name), True), stdout=subprocess.PIPE)
        return proc.stdout.fileno()

    def stdout(self, name: str) -> int:
        """A file descriptor to give the agent as stdout: each line it writes sets the device."""
        proc = self._spawn(_gpio_argv(self._props(name), False), stdin=subprocess.PIPE)
        self.writers.append(proc)
        return proc.stdin.fileno()

    def after_start(self) -> None:
        """The agent has its ends: close ours, so the servers see EOF / EPIPE when the agent ends."""
        for proc in self.procs:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()

    def close(self) -> None:
        """The agent ended: let the writers apply what it wrote (its stdout has ended), stop the rest."""
        for proc in self.writers:
            try:
                proc.wait(WRITER_DRAIN_S)
            except subprocess.TimeoutExpired:
                pass
        self.stop()

    def _interrupt(self) -> None:
        for proc in self.procs:
            children.signal_group(proc, signal.SIGTERM)

    def join(self) -> None:
        """Wait until every helper has ended (SIGKILL after a grace period)."""
        for proc in self.procs:
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                children.signal_group(proc, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        self.writers.clear()
        super().join()

