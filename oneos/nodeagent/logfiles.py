"""An agent's local log files: size-capped, rotated, a few incarnations kept, removed with the agent.

Each incarnation (start) of an agent writes its log to `<logs>/<agent id>.<n>.log`. As
journald and logrotate do, a file that reaches `max_file_bytes` is rotated: it becomes
`.log.1` (the previous `.log.1` becomes `.log.2`, and so on), at most `rotated` old files
are kept, and writing goes on in a fresh `.log`. Only the files of the last `incarnations`
starts are kept; the others are removed when a new one opens. When the agent leaves the
node (its pipeline was deleted, or it moved), its files go with its working directory.

So one agent keeps at most `incarnations × (1 + rotated) × max_file_bytes` bytes here
(3 × 4 × 1 MiB by default), whatever it writes and however often it restarts. The log
topics on the bus (`oneosctl logs`) are not affected.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable

from oneos.paths import PathEscape, inside
from oneos.quantities import parse_memory

MIN_FILE_BYTES = 4096


@dataclass(frozen=True)
class LogLimits:
    """How much of an agent's log a node keeps (the node config's `logs:` section)."""

    max_file_bytes: int = 1 << 20     # one file; then it is rotated
    rotated: int = 3                   # rotated files kept per incarnation (.log.1 ... .log.N)
    incarnations: int = 3              # the last starts whose files are kept

    @classmethod
    def from_config(cls, section: dict[str, Any] | None, where: str) -> "LogLimits":
        """From a validated `logs:` section; ValueError naming `where` for a file size too small."""
        section = section or {}
        limits = cls()
        size = limits.max_file_bytes
        if "maxFileSize" in section:
            size = parse_memory(section["maxFileSize"])
            if size < MIN_FILE_BYTES:
                raise ValueError(f"{where}: logs.maxFileSize {section['maxFileSize']!r} is below "
                                 f"{MIN_FILE_BYTES} bytes; use at least 4Ki")
        return cls(max_file_bytes=size, rotated=section.get("rotatedFiles", limits.rotated),
                   incarnations=section.get("incarnations", limits.incarnations))

    def per_agent(self) -> int:
        """The most bytes one agent's files take."""
        return self.incarnations * (1 + self.rotated) * self.max_file_bytes


def _checked(log_dir: Path, key: str) -> str:
    """The agent id as part of a file name in `log_dir`: never a path that leaves it (PathEscape)."""
    if not key or "/" in key or key.startswith("."):
        raise PathEscape(f"agent id {key!r} cannot name a log file in {log_dir}")
    inside(log_dir, key, what="agent id")
    return key


def _pattern(key: str) -> re.Pattern[str]:
    return re.compile(re.escape(key) + r"\.(\d+)\.log(\.\d+)?")


def log_path(log_dir: Path, key: str, incarnation: int) -> Path:
    return inside(log_dir, f"{_checked(log_dir, key)}.{incarnation}.log", what="log file")


def files_of(log_dir: Path, key: str) -> list[tuple[int, Path]]:
    """(incarnation, path) of every log file of the agent here, rotated ones included."""
    pattern = _pattern(_checked(log_dir, key))
    found = []
    try:
        entries = list(os.scandir(log_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), Path(entry.path)))
    return found


def prune(log_dir: Path, key: str, keep: int, newest: int) -> None:
    """Remove the files of the agent's incarnations older than the last `keep` up to `newest`."""
    for incarnation, path in files_of(log_dir, key):
        if incarnation <= newest - keep:
            path.unlink(missing_ok=True)


def remove(log_dir: Path, key: str) -> None:
    """Remove every log file of the agent (it has left this node)."""
    for _, path in files_of(log_dir, key):
        path.unlink(missing_ok=True)


def agent_ids(log_dir: Path) -> set[str]:
    """The agents that have log files here."""
    pattern = re.compile(r"(.+)\.\d+\.log(\.\d+)?")
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return set()
    return {m.group(1) for m in map(pattern.fullmatch, names) if m}


def remove_all_but(log_dir: Path, keep: Iterable[str]) -> list[str]:
    """Remove the log files of every agent not in `keep`; the agents whose files went."""
    gone = sorted(agent_ids(log_dir) - set(keep))
    for key in gone:
        try:
            remove(log_dir, key)
        except PathEscape:
            continue
    return gone


class LogFile:
    """One incarnation's log file, rotated at `limits.max_file_bytes`; not thread-safe (the bridge locks)."""

    def __init__(self, log_dir: Path, key: str, incarnation: int, limits: LogLimits) -> None:
        _checked(log_dir, key)         # before anything is made
        log_dir.mkdir(parents=True, exist_ok=True)
        self.limits = limits
        self.path = log_path(log_dir, key, incarnation)
        prune(log_dir, key, limits.incarnations, incarnation)
        self._file: BinaryIO = open(self.path, "ab")
        self.size = self._file.tell()

    def write(self, data: bytes) -> None:
        """Append `data`, rotating whenever the file is full; no file grows past the limit."""
        while data:
            room = self.limits.max_file_bytes - self.size
            if room <= 0:
                self._rotate()
                room = self.limits.max_file_bytes
            chunk, data = data[:room], data[room:]
            self._file.write(chunk)
            self.size += len(chunk)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        for n in range(self.limits.rotated, 0, -1):
            older = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n}"))
        self._file = open(self.path, "wb")
        self.size = 0

    def close(self) -> None:
        self._file.close()
