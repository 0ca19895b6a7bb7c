"""Resource quantities as Kubernetes writes them: 128Mi, 1Gi, 500M, 0.5 or 500m cpu."""

from __future__ import annotations

import re

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T|k)?\s*$")
_FACTORS = {None: 1, "K": 10**3, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_memory(value: str | int) -> int:
    """Bytes in a memory quantity; raises ValueError naming the accepted forms."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a memory size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    m = _MEMORY.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a memory size; use bytes or a suffix such as 512Mi, 1Gi, 500M")
    return int(float(m.group(1)) * _FACTORS[m.group(2)])


def format_memory(n: int) -> str:
    """The shortest exact binary form: 128Mi, 1Gi, 1536Ki, or bytes."""
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        size = _FACTORS[suffix]
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def parse_cpu(value: str | int | float) -> float:
    """CPUs in a cpu quantity: 2, 0.5 or "500m"."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a cpu amount")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a cpu amount; use a number of cpus (0.5) or millicpus (500m)") from None
