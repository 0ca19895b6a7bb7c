"""What this machine is: cpus, memory, architecture, OS. The node record carries it."""

from __future__ import annotations

import os
import platform


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
