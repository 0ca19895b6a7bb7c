"""What this machine is: cpus, memory, architecture, OS, board and GPIO. The node record carries it."""

from __future__ import annotations

import glob
import logging
import os
import platform
import re
from pathlib import Path
from typing import Callable, Mapping

from oneos.gpio.pins import SIM_ENV

log = logging.getLogger("oneos.nodeagent")

#: Where device files are looked for instead of / (tests fake /dev and /sys under it).
HW_ROOT_ENV = "ONEOS_HW_ROOT"

#: label -> device files (under the root) whose presence sets it to "true".
DEVICE_LABELS = {
    "gpio": ("dev/gpiochip*",),
    "i2c": ("dev/i2c-*",),
    "spi": ("dev/spidev*",),
    "pwm": ("sys/class/pwm/pwmchip*",),
}


def cpu_count() -> int:
    """CPUs this process may use (its affinity), not only those installed."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_total() -> int:
    """Physical memory in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def describe() -> dict[str, object]:
    """The facts the node record reports about this machine."""
    return {
        "cpu": cpu_count(),
        "memory": memory_total(),
        "arch": platform.machine(),
        "os": platform.system().lower(),
    }


def label_value(text: object) -> str | None:
    """An id as a label value: lower case, runs of other characters than [a-z0-9._-] as '_',
    starting and ending with a letter or digit, at most 63 characters (a Kubernetes label
    value); None when nothing is left."""
    if text is None:
        return None
    value = re.sub(r"[^a-z0-9._-]+", "_", str(text).strip().lower())
    value = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", value[:63])
    return value or None


def platform_ids() -> tuple[str | None, str | None]:
    """(board id, chip id) as adafruit_platformdetect names them, e.g. ('RASPBERRY_PI_4B', 'BCM2XXX')."""
    try:
        from adafruit_platformdetect import Detector
        detector = Detector()
        return detector.board.id, detector.chip.id
    except Exception as exc:  # noqa: BLE001 - detection must never stop a node from starting
        log.warning("board detection failed (%s): no board or chip label", exc)
        return None, None


def hw_root(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get(HW_ROOT_ENV) or "/")


def detect_labels(root: str | os.PathLike | None = None, *, simulated_gpio: str | os.PathLike | None = None,
                  environ: Mapping[str, str] | None = None,
                  ids: Callable[[], tuple[str | None, str | None]] = platform_ids) -> dict[str, str]:
    """Labels this machine's hardware earns: board and chip (adafruit_platformdetect ids,
    lower-cased), and gpio/i2c/spi/pwm=true when their device files exist under `root`
    (default $ONEOS_HW_ROOT, else /). A simulated board ($ONEOS_GPIO_SIM, or
    `simulated_gpio` from the node's config) counts as GPIO. Absent hardware gets no label."""
    env = os.environ if environ is None else environ
    base = Path(root) if root is not None else hw_root(env)
    labels: dict[str, str] = {}
    board, chip = ids()
    for key, raw in (("board", board), ("chip", chip)):
        value = label_value(raw)
        if value:
            labels[key] = value
    for key, patterns in DEVICE_LABELS.items():
        if any(glob.glob(str(base / pattern)) for pattern in patterns):
            labels[key] = "true"
    if simulated_gpio or env.get(SIM_ENV, "").strip():
        labels["gpio"] = "true"
    return labels


def node_labels(detected: Mapping[str, str], configured: Mapping[str, str]) -> dict[str, str]:
    """The node record's labels: the detected ones, overridden by those the node is configured with."""
    return {**detected, **configured}
