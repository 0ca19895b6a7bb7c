"""How the command-line tools print: kubectl-style tables, ages, -o json|yaml, and streams as they come."""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime, timezone
from typing import Any, BinaryIO, Sequence

from oneos.documents import dump_yaml


def age(timestamp: str, now: datetime | None = None) -> str:
    """kubectl's short age: 42s, 5m, 3h, 2d."""
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "?"
    seconds = max(0, int(((now or datetime.now(timezone.utc)) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, three spaces apart, as kubectl prints them."""
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines) + "\n"


def structured(value: Any, fmt: str) -> str:
    """A document as JSON or YAML text."""
    if fmt == "json":
        return json.dumps(value, indent=2) + "\n"
    return dump_yaml(value)


def signal_name(status: int) -> str | None:
    """SIGTERM for 143: the signal an exit status of 128+N reports, as bash reports it; else None."""
    if 128 < status <= 128 + 64:
        try:
            return signal.Signals(status - 128).name
        except ValueError:
            return None
    return None


class Sink:
    """Where one stream's bytes go: a binary file, written and flushed as they come; several threads
    may write to one Sink, a chunk at a time."""

    def __init__(self, target: BinaryIO, before_first: Any = None) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.before_first = before_first

    def __call__(self, data: bytes) -> None:
        with self.lock:
            if self.before_first is not None:
                self.before_first()
                self.before_first = None
            self.target.write(data)
            self.target.flush()
