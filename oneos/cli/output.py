"""How the command-line tools print: kubectl-style tables, ages, and -o json|yaml."""

from __future__ import annotations

import json
import shlex
import signal
from datetime import datetime, timezone
from typing import Any, Sequence

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


def command(argv: Sequence[str]) -> str:
    """An argv as one line a person can read and paste into a shell."""
    return shlex.join(argv).replace("\n", "\\n")


def signal_name(status: int) -> str | None:
    """SIGTERM for 143: the signal an exit status of 128+N reports, as bash reports it; else None."""
    if 128 < status <= 128 + 64:
        try:
            return signal.Signals(status - 128).name
        except ValueError:
            return None
    return None
