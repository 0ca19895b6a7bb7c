"""Secrets kept in files that only their owner may read (mode 0600): ACL tokens.

A secret file that others may read is refused, not used: whoever could read it could act as
its owner, and a warning would go unread.
"""

from __future__ import annotations

import os
from pathlib import Path

from oneos.errors import OneOSError


def read_secret(path: str | Path, what: str) -> str:
    """The secret in `path` (surrounding whitespace dropped); OneOSError saying what to fix otherwise."""
    path = Path(path)
    try:
        with open(path) as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read().strip()
    except OSError as exc:
        raise OneOSError(f"{what} {path}: cannot read it ({(exc.strerror or str(exc)).lower()})") from None
    if mode & 0o077:
        raise OneOSError(f"{what} {path} may be read by others (mode {mode & 0o777:04o}); "
                         f"run `chmod 600 {path}` if the secret is still yours to keep")
    if not text:
        raise OneOSError(f"{what} {path} is empty; put the token's secret in it")
    return text


def write_secret(path: str | Path, secret: str) -> None:
    """Write `secret` to `path` with mode 0600 from the start (never readable by others, even briefly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secret + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
