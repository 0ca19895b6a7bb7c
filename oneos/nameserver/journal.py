"""Durable state of the built-in Name Server: a snapshot plus append-only logs.

Every change is one JSON line. The store hands the journal batches of lines (group commit);
a batch is written and synced (the log is opened with O_DSYNC, unless --no-fsync) before any
of its writes is acknowledged. A batch whose synced write fails is cut off the log again before the next one is written,
so a refused write never comes back; while that cut cannot be made, every write is refused.
On load, the log is read up to its last good record: a tail cut short by a crash, or bytes
that are not a record, were never acknowledged and are dropped (and kept aside in a file).

Compaction writes the whole state as a new snapshot without stopping writers: the current
log is renamed to `log-<index>.jsonl` (its last record's index) and writes go on in a new
`log.jsonl` while the snapshot is written next to it, renamed into place, and only then are
the rotated logs removed. At every moment the snapshot plus the logs hold every write.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from oneos.errors import OneOSError

SNAPSHOT = "snapshot.json"
LOG = "log.jsonl"
LOCK = "LOCK"
_ROTATED = re.compile(r"log-([0-9]+)\.jsonl")
SNAPSHOT_CHUNK = 500           # entries serialized at a time, then the GIL is offered to writers
COMPACTION_RETRY_S = 10.0
COMPACT_BYTES = 32 << 20       # a log this long is compacted into the snapshot
DSYNC = getattr(os, "O_DSYNC", 0)  # Linux and most Unixes: see Journal._append_flags

log = logging.getLogger("oneos.nameserver")


class JournalError(OneOSError):
    """The data directory cannot be used."""


class JournalWriteError(OneOSError):
    """A batch could not be made durable; none of its writes happened."""


def describe_os_error(exc: OSError) -> str:
    """`No space left on device (ENOSPC)`: the OS's words and the code people search for."""
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{exc.strerror or exc}" + (f" ({name})" if name else "")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Snapshot + logs in one data directory, held exclusively by one server."""

    def __init__(self, data_dir: str | Path, *, fsync: bool = True, compact_bytes: int = COMPACT_BYTES) -> None:
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
        self._fd: int | None = None
        self._good = 0                  # bytes of log.jsonl that hold acknowledged records
        self._cut_pending = False       # a failed batch is still to be cut off the log
        self._torn_at: int | None = None
        self._retry_compaction_at = 0.0

    # -- load -------------------------------------------------------------

    def _rotated(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.dir.iterdir():
            m = _ROTATED.fullmatch(path.name)
            if m:
                found.append((int(m.group(1)), path))
        return sorted(found)

    def load(self) -> tuple[dict[str, Any] | None, Iterator[dict[str, Any]]]:
        """The last snapshot (or None) and the log records written after it, in order."""
        snapshot = None
        path = self.dir / SNAPSHOT
        if path.exists():
            try:
                snapshot = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise JournalError(f"snapshot {path} is unreadable ({exc}); restore it from a backup") from None
        after = snapshot["index"] if snapshot else 0
        return snapshot, self._records(after)

    def _records(self, after: int) -> Iterator[dict[str, Any]]:
        files = [p for last, p in self._rotated() if last > after] + [self.dir / LOG]
        last_index = 0
        for n, path in enumerate(files):
            if not path.exists():
                continue
            data = path.read_bytes()
            pos = 0
            while pos < len(data):
                end = data.find(b"\n", pos)
                record = _parse(data[pos:end]) if end != -1 else None
                if record is None or record["i"] < last_index:
                    if n != len(files) - 1:
                        raise JournalError(f"log {path} is corrupt at byte {pos}, before the newer log "
                                           f"{files[-1].name}; restore the data directory from a backup")
                    self._torn_at = pos
                    break
                last_index = record["i"]
                if last_index > after:
                    yield record
                pos = end + 1

    def open_for_append(self) -> None:
        """Start appending to log.jsonl; a torn tail found by load() is cut off (and kept aside)."""
        path = self.dir / LOG
        self._fd = os.open(path, self._append_flags(), 0o644)
        size = os.fstat(self._fd).st_size
        if self._torn_at is not None and self._torn_at < size:
            with open(path, "rb") as f:
                f.seek(self._torn_at)
                tail = f.read()
            kept = self.dir / f"{LOG}.dropped-{int(time.time())}"
            try:
                kept.write_bytes(tail)
                where = f"kept in {kept.name}"
            except OSError as exc:
                where = f"not kept: {describe_os_error(exc)}"
            os.ftruncate(self._fd, self._torn_at)
            self._sync(self._fd)
            log.warning("journal %s: dropped its last %d bytes from byte %d, a write cut short by a crash or "
                        "a disk error, never acknowledged (%s)", path, size - self._torn_at, self._torn_at, where)
            size = self._torn_at
        self._good = size

    # -- append -----------------------------------------------------------

    def append_batch(self, lines: Iterable[bytes]) -> None:
        """Make a batch of records durable, or raise JournalWriteError with the log as it was."""
        data = b"".join(lines)
        try:
            if self._cut_pending:
                self._cut()
            if self._fd is None:
                self._fd = os.open(self.dir / LOG, self._append_flags(), 0o644)
                self._good = os.fstat(self._fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if not DSYNC:
                self._sync(self._fd)
        except OSError as exc:
            self._cut_pending = True
            try:
                self._cut()
            except OSError:
                pass    # tried again before the next batch; until then every write is refused
            raise JournalWriteError(f"cannot write the journal in {self.dir}: {describe_os_error(exc)}; "
                                    "the write was not applied: free space or fix the disk, then retry") from None
        self._good += len(data)

    def _cut(self) -> None:
        """Cut what a failed batch left in the log: its records must not be replayed."""
        if self._fd is not None:
            os.ftruncate(self._fd, self._good)
            self._sync(self._fd)
        self._cut_pending = False

    def _append_flags(self) -> int:
        """The log's open flags: with fsync, O_DSYNC where there is one, so that a batch's write is
        durable when it returns: one system call, so one release and one retake of Python's GIL
        (retaking it costs milliseconds while request threads are busy), not two."""
        return os.O_WRONLY | os.O_CREAT | os.O_APPEND | (DSYNC if self.fsync else 0)

    def _sync(self, fd: int) -> None:
        if self.fsync:
            os.fsync(fd)

    @property
    def log_bytes(self) -> int:
        return self._good

    # -- compaction -------------------------------------------------------

    def wants_compaction(self) -> bool:
        return self._good > self.compact_bytes and time.monotonic() >= self._retry_compaction_at

    def postpone_compaction(self) -> None:
        self._retry_compaction_at = time.monotonic() + COMPACTION_RETRY_S

    def rotate(self, index: int) -> None:
        """Move log.jsonl aside as log-<index>.jsonl (its last record's index); writes go to a new one.

        Called between batches, so the rotated log ends with `index`'s record."""
        if self._cut_pending:
            raise JournalWriteError("the log still holds a failed batch")
        os.rename(self.dir / LOG, self.dir / f"log-{index}.jsonl")
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._fd = os.open(self.dir / LOG, self._append_flags(), 0o644)
        self._good = 0
        fsync_dir(self.dir)

    def write_snapshot(self, index: int, head: dict[str, Any],
                       parts: dict[str, tuple[list[Any], Callable[[Any], Any]]],
                       stop: Callable[[], bool] = lambda: False) -> bool:
        """Write the snapshot at `index`: `head`, plus each list in `parts` with its items put through
        its function, in chunks, so that writers keep going; then drop the rotated logs it covers.

        False when `stop()` said to give up (the rotated logs stay and are replayed)."""
        tmp = self.dir / (SNAPSHOT + ".tmp")
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(head, separators=(",", ":"))[:-1])
                for name, (items, dump) in parts.items():
                    f.write(f',"{name}":[')
                    for start in range(0, len(items), SNAPSHOT_CHUNK):
                        if stop():
                            return False
                        chunk = [dump(x) for x in items[start:start + SNAPSHOT_CHUNK]]
                        f.write(("," if start else "") + json.dumps(chunk, separators=(",", ":"))[1:-1])
                        time.sleep(0)    # let a waiting writer have the GIL now, not after a switch interval
                    f.write("]")
                f.write("}")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / SNAPSHOT)
            fsync_dir(self.dir)
        except OSError as exc:
            self.postpone_compaction()
            log.warning("compaction of %s failed: %s; the logs are kept and it is tried again in %.0fs",
                        self.dir, describe_os_error(exc), COMPACTION_RETRY_S)
            return False
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass
        for last, path in self._rotated():
            if last <= index:
                path.unlink(missing_ok=True)
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._lock_file.close()


def _parse(line: bytes) -> dict[str, Any] | None:
    """A record, or None for bytes that are not one (a torn write, garbage)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("i"), int):
        return None
    return record
