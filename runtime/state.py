"""The runtime's state directory and the crash-safe file operations every store uses.

Owns: the layout of the state directory (`StateLayout`), writing a JSON record so that a
crash leaves either the old or the new version (temp file, fsync, rename, fsync of the
directory), reading such records back, flushing a whole tree, and renaming without
replacing.

Must not: know what the records mean (containers, checkpoints and events own their
contents), or talk to CRIU, runc or the network. Everything here is synchronous and
touches only the local disk; async callers run the slow parts (`fsync_tree`) in a thread.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "StateLayout",
    "fsync_dir",
    "fsync_tree",
    "read_json",
    "rename_noreplace",
    "write_json_atomic",
]

# renameat2(2) flag: fail with EEXIST instead of replacing the target. os.rename would
# silently replace an empty directory, which could swallow a checkpoint made by someone
# else between our check and our rename.
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class StateLayout:
    """Where the runtime keeps what must survive a restart, under one directory.

    - ``containers/<id>.json``: one record per container (kind, bundle, stdio, task PID).
    - ``containers/<id>/``: per-container scratch (restore work dir, runc logs).
    - ``events.jsonl``: the event log, one JSON object per line.
    - ``journal/``: one record per checkpoint operation under way; what is listed
      there at start-up was interrupted and gets cleaned up.
    - ``runc/``: runc's own state (``runc --root``).
    """

    root: Path

    @property
    def containers(self) -> Path:
        return self.root / "containers"

    def container_record(self, container_id: str) -> Path:
        return self.containers / f"{container_id}.json"

    def container_scratch(self, container_id: str) -> Path:
        return self.containers / container_id

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def journal(self) -> Path:
        return self.root / "journal"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    def create(self) -> None:
        """Make the directories (private to root: they hold process images and PIDs)."""
        for path in (self.root, self.containers, self.journal, self.runc_root):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)


def write_json_atomic(path: Path, record: Any) -> None:
    """Replace *path* with *record* as JSON so that a crash leaves old or new, never half.

    The data is written to a temporary file next to *path* and flushed to disk before
    the rename, and the directory is flushed after it, so the new name survives a power
    cut too.
    """
    data = json.dumps(record, indent=1, sort_keys=True).encode() + b"\n"
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json(path: Path) -> Any:
    """Read a record written by `write_json_atomic` (FileNotFoundError if absent)."""
    with path.open("rb") as file:
        return json.loads(file.read())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or create in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every regular file and directory below *root* (CRIU does not fsync images)."""
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOENT):
                    continue  # a symlink or a vanished file holds no data of ours
                raise
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(directory))


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename *source* to *target*; FileExistsError if *target* exists (even empty)."""
    result = _libc.renameat2(
        _AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(source), None, str(target))
