"""Durable state of the built-in Name Server: a snapshot plus an append-only log.

Every change is one JSON line appended (and flushed to the OS, fsynced when asked)
before the request that caused it is answered, so an acknowledged write survives a
`kill -9`. A line cut short by a crash was never acknowledged and is dropped on load.
When the log grows, the whole state is written as a new snapshot and the log restarts.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Iterator

from oneos.errors import OneOSError

SNAPSHOT = "snapshot.json"
LOG = "log.jsonl"
LOCK = "LOCK"


class JournalError(OneOSError):
    """The data directory cannot be used."""


class Journal:
    """Snapshot + log in one data directory, held exclusively by one server."""

    def __init__(self, data_dir: str | Path, *, fsync: bool = False, compact_bytes: int = 32 << 20) -> None:
        self.dir = Path(data_dir)
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create data directory {self.dir}: {exc.strerror}") from None
        self._lock_file = open(self.dir / LOCK, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown pid"
            self._lock_file.close()
            raise JournalError(f"data directory {self.dir} is in use by another oneos-nameserver "
                               f"({holder}); stop it or pick another --data-dir") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"pid {os.getpid()}\n")
        self._lock_file.flush()
        self._log = None
        self._log_bytes = 0

    def load(self) -> tuple[dict[str, Any] | None, Iterator[dict[str, Any]]]:
        """The last snapshot (or None) and the log records written after it, in order."""
        snapshot = None
        path = self.dir / SNAPSHOT
        if path.exists():
            try:
                snapshot = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise JournalError(f"snapshot {path} is unreadable ({exc}); restore it from a backup") from None
        return snapshot, self._records(snapshot["index"] if snapshot else 0)

    def _records(self, after: int) -> Iterator[dict[str, Any]]:
        path = self.dir / LOG
        if not path.exists():
            return
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        # The last element is what follows the final newline: empty, or a torn write.
        for lineno, line in enumerate(lines[:-1], 1):
            try:
                record = json.loads(line)
            except ValueError:
                raise JournalError(f"log {path} is corrupt at line {lineno}; "
                                   "restore the data directory from a backup") from None
            if record["i"] > after:
                yield record

    def open_for_append(self) -> None:
        """Start appending; drops a torn last line left by a crash."""
        path = self.dir / LOG
        if path.exists():
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(path, "r+b") as f:
                    f.truncate(keep)
        self._log = open(path, "ab")
        self._log_bytes = self._log.tell()

    def append(self, record: dict[str, Any]) -> None:
        """Make one change durable before it is acknowledged."""
        line = json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n"
        self._log.write(line)
        self._log.flush()
        if self.fsync:
            os.fsync(self._log.fileno())
        self._log_bytes += len(line)

    def wants_compaction(self) -> bool:
        return self._log_bytes > self.compact_bytes

    def compact(self, snapshot: dict[str, Any]) -> None:
        """Write the whole state as the new snapshot, then start an empty log."""
        tmp = self.dir / (SNAPSHOT + ".tmp")
        with open(tmp, "w") as f:
            json.dump(snapshot, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / SNAPSHOT)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        # Records up to the snapshot's index are skipped on load, so a crash
        # before this truncation only costs replay time.
        self._log.close()
        self._log = open(self.dir / LOG, "wb")
        self._log_bytes = 0

    def close(self) -> None:
        if self._log:
            self._log.close()
            self._log = None
        self._lock_file.close()
