"""The checkpoint store: where checkpoints live, how they come into being, and cleanup.

Owns: checkpoint names and directories (validation, and keeping every path inside the
directory it belongs to), the ``config.json`` that records a checkpoint's options and
creation time (containerd 0.2's format, plus a ``cryo`` section for the driver), and
the life cycle that keeps a crash from ever leaving a half-made checkpoint listed:

    reserve name → journal entry → hidden temp dir → dump (CRIU/runc) → config.json
      → fsync everything → rename to the final name (never replacing) → drop journal

Deleting is the mirror image (journal → rename to a hidden name → remove). At start-up,
`recover` removes whatever the journal says was left half-way.

Must not: talk to CRIU or runc itself (the caller passes the dump as a function), know
about container states or locks, or speak gRPC.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from runtime.errors import AlreadyExists, InvalidRequest, NotFound, WrongState
from runtime.state import fsync_dir, fsync_tree, read_json, rename_noreplace, write_json_atomic

__all__ = [
    "CONFIG_FILE",
    "CheckpointOptions",
    "CheckpointRecord",
    "CheckpointStore",
    "DumpFunction",
    "resolve_checkpoint_dir",
    "validate_checkpoint_name",
]

CONFIG_FILE = "config.json"

# The Docker daemon's rule for checkpoint IDs. It keeps names to one path component that
# cannot be "." or "..", and, since a name never starts with ".", the hidden names used
# for work in progress can never collide with a real checkpoint.
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_NAME_MAX = 128
# Work-in-progress names: ".<name>.partial-<hex>" and ".<name>.deleting-<hex>".
_HIDDEN = re.compile(r"\.[a-zA-Z0-9][a-zA-Z0-9_.-]+\.(partial|deleting)-[0-9a-f]+")
_DIR_MODE = 0o700  # checkpoint images hold the memory of the process: root only


def validate_checkpoint_name(name: str) -> str:
    if not name:
        raise InvalidRequest("a checkpoint name is required")
    if len(name) > _NAME_MAX or _NAME.fullmatch(name) is None:
        raise InvalidRequest(
            f"invalid checkpoint name {name!r}: use 2 to {_NAME_MAX} characters from "
            "[a-zA-Z0-9_.-], starting with a letter or digit"
        )
    return name


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_checkpoint_dir(
    requested: str, default_root: Path, allowed_roots: Sequence[Path] = ()
) -> Path:
    """The directory a request's ``checkpointDir`` names.

    Empty: *default_root* (containerd's ``<bundle>/checkpoints``). Relative: below
    *default_root*, and it must stay there once ``..`` and symlinks are resolved.
    Absolute: taken as given (Docker lets users pick any directory), unless the runtime
    was started with *allowed_roots*, in which case it must lie inside one of them.
    Either way a path with ``..`` components or a NUL byte is refused.
    """
    if "\0" in requested:
        raise InvalidRequest("checkpoint directory contains a NUL byte")
    if not requested:
        return default_root
    if ".." in Path(requested).parts:
        raise InvalidRequest(f"checkpoint directory {requested!r} must not contain '..'")
    candidate = Path(requested)
    if not candidate.is_absolute():
        root = default_root.resolve()
        resolved = (default_root / candidate).resolve()
        if not _is_within(resolved, root):
            raise InvalidRequest(
                f"checkpoint directory {requested!r} escapes the container's checkpoint root"
            )
        return resolved
    if allowed_roots:
        resolved = candidate.resolve()
        if not any(_is_within(resolved, root.resolve()) for root in allowed_roots):
            raise InvalidRequest(
                f"checkpoint directory {requested!r} is outside the checkpoint roots "
                "this runtime was started with"
            )
        return resolved
    return candidate


@dataclass(frozen=True)
class CheckpointOptions:
    """What a client asks of a checkpoint (containerd's `Checkpoint` message)."""

    name: str
    exit: bool = False
    tcp: bool = False
    unix_sockets: bool = False
    shell: bool = False
    empty_ns: tuple[str, ...] = ()
    pre_dump: bool = False
    parent: str = ""

    @property
    def incremental(self) -> bool:
        return self.pre_dump or bool(self.parent)


@dataclass(frozen=True)
class CheckpointRecord:
    """A finished checkpoint: its options, when it was made, and the driver's notes."""

    options: CheckpointOptions
    created_ns: int
    path: Path
    # Written by the container kind that made it (e.g. which stdio pipes to reconnect).
    driver: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.options.name

    def to_config(self) -> dict[str, Any]:
        """containerd 0.2's config.json fields, and cryo's own under ``cryo``."""
        options = self.options
        config: dict[str, Any] = {
            "created": _format_time(self.created_ns),
            "name": options.name,
            "tcp": options.tcp,
            "unixSockets": options.unix_sockets,
            "shell": options.shell,
            "exit": options.exit,
            "cryo": {"createdNs": self.created_ns, "driver": dict(self.driver)},
        }
        if options.empty_ns:
            config["emptyNS"] = list(options.empty_ns)
        if options.parent:
            config["cryo"]["parent"] = options.parent
        return config

    @classmethod
    def from_config(cls, path: Path, config: Mapping[str, Any]) -> CheckpointRecord:
        cryo = config.get("cryo") or {}
        created_ns = cryo.get("createdNs")
        if not isinstance(created_ns, int):
            created_ns = _parse_time(str(config.get("created", "")))
        options = CheckpointOptions(
            name=str(config.get("name") or path.name),
            exit=bool(config.get("exit", False)),
            tcp=bool(config.get("tcp", False)),
            unix_sockets=bool(config.get("unixSockets", False)),
            shell=bool(config.get("shell", False)),
            empty_ns=tuple(str(ns) for ns in config.get("emptyNS") or ()),
            parent=str(cryo.get("parent", "")),
        )
        return cls(options, created_ns, path, dict(cryo.get("driver") or {}))


def _format_time(ns: int) -> str:
    # RFC 3339 with nanoseconds, as Go's time.Time marshals (what containerd wrote).
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _parse_time(text: str) -> int:
    """Nanoseconds from an RFC 3339 time (any fraction length, Z or an offset); 0 if bad."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        return 0
    base, fraction, zone = match.groups()
    stamp = datetime.datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(stamp.timestamp()) * 1_000_000_000 + nanos


DumpFunction = Callable[[Path], Awaitable[Mapping[str, Any]]]
"""Writes a checkpoint's images into the (empty, hidden) directory it is given and
returns the driver's notes for ``config.json``. Raising aborts the checkpoint."""


class CheckpointStore:
    """Checkpoints on disk, made and removed so that a crash never leaves half of one."""

    def __init__(self, journal: Path) -> None:
        self._journal = journal
        # Checkpoints being made, restored from or deleted in this process: a second
        # operation on the same one is refused instead of racing it on disk.
        self._busy: dict[Path, str] = {}

    # -- start-up -------------------------------------------------------------------

    def recover(self) -> list[Path]:
        """Remove what interrupted operations left behind; return the paths removed.

        Only hidden work-in-progress directories named in the journal are touched, so a
        damaged journal entry can never make the runtime delete a real checkpoint.
        """
        removed: list[Path] = []
        for entry in sorted(self._journal.glob("*.json")):
            try:
                target = Path(str(read_json(entry)["path"]))
            except (OSError, ValueError, KeyError, TypeError):
                target = None
            if (
                target is not None
                and target.is_absolute()
                and _HIDDEN.fullmatch(target.name)
                and target.is_dir()
                and not target.is_symlink()
            ):
                shutil.rmtree(target)
                removed.append(target)
                fsync_dir(target.parent)
            entry.unlink()
        for leftover in self._journal.glob(".*.tmp"):
            leftover.unlink()  # a journal entry that was never completed
        return removed

    # -- queries --------------------------------------------------------------------

    def list(self, directory: Path) -> list[CheckpointRecord]:
        """The finished checkpoints in *directory*, oldest first (none if it is absent)."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        records = []
        for entry in entries:
            if _NAME.fullmatch(entry.name) is None or not entry.is_dir(follow_symlinks=False):
                continue
            record = self._load(Path(entry.path))
            if record is not None:
                records.append(record)
        records.sort(key=lambda record: (record.created_ns, record.name))
        return records

    def get(self, directory: Path, name: str) -> CheckpointRecord:
        validate_checkpoint_name(name)
        path = directory / name
        record = self._load(path) if path.is_dir() and not path.is_symlink() else None
        if record is None:
            raise NotFound(f"no checkpoint {name!r} in {directory}")
        return record

    @staticmethod
    def _load(path: Path) -> CheckpointRecord | None:
        try:
            config = read_json(path / CONFIG_FILE)
        except (OSError, ValueError):
            return None  # not a checkpoint (or not readable as one): never listed
        if not isinstance(config, dict):
            return None
        return CheckpointRecord.from_config(path, config)

    # -- making, using and deleting -------------------------------------------------

    async def create(
        self, directory: Path, options: CheckpointOptions, dump: DumpFunction
    ) -> CheckpointRecord:
        """Make checkpoint *options.name* in *directory* with *dump*, all or nothing."""
        name = validate_checkpoint_name(options.name)
        final = directory / name
        with self._claim(final, "being created"):
            await trio.to_thread.run_sync(_prepare_directory, directory, final)
            work = directory / f".{name}.partial-{secrets.token_hex(6)}"
            async with self._journalled(work):
                await trio.to_thread.run_sync(work.mkdir, _DIR_MODE)
                try:
                    driver = await dump(work)
                    record = CheckpointRecord(options, time.time_ns(), final, dict(driver))
                    await trio.to_thread.run_sync(_publish, work, record)
                except BaseException:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(_remove_if_present, work)
                    raise
        return record

    def reserve(self, record: CheckpointRecord, purpose: str) -> _Claim:
        """Hold a checkpoint so it is not deleted while, e.g., a restore reads it."""
        return self._claim(record.path, purpose)

    async def delete(self, directory: Path, name: str) -> None:
        record = await trio.to_thread.run_sync(self.get, directory, name)
        with self._claim(record.path, "being deleted"):
            hidden = directory / f".{name}.deleting-{secrets.token_hex(6)}"
            async with self._journalled(hidden):
                # Shielded: once out of sight, the tree must go, or the journal keeps it.
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(_hide_and_remove, record.path, hidden)

    # -- internals ------------------------------------------------------------------

    def _claim(self, path: Path, purpose: str) -> _Claim:
        return _Claim(self._busy, path, purpose)

    def _journalled(self, work: Path) -> _JournalEntry:
        return _JournalEntry(self._journal, work)


class _Claim:
    """Marks a checkpoint path as in use for the length of a ``with`` block."""

    def __init__(self, busy: dict[Path, str], path: Path, purpose: str) -> None:
        self._busy = busy
        self._path = path
        self._purpose = purpose

    def __enter__(self) -> None:
        current = self._busy.get(self._path)
        if current is not None:
            error = AlreadyExists if current == "being created" else WrongState
            raise error(f"checkpoint {self._path.name!r} is {current}")
        self._busy[self._path] = self._purpose

    def __exit__(self, *exc_info: object) -> None:
        self._busy.pop(self._path, None)


class _JournalEntry:
    """A journal record naming a hidden directory, for as long as it may exist."""

    def __init__(self, journal: Path, work: Path) -> None:
        self._entry = journal / f"{secrets.token_hex(8)}.json"
        self._work = work

    async def __aenter__(self) -> None:
        record = {"path": str(self._work.absolute())}
        await trio.to_thread.run_sync(write_json_atomic, self._entry, record)

    async def __aexit__(self, *exc_info: object) -> None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._entry.unlink)


def _prepare_directory(directory: Path, final: Path) -> None:
    if os.path.lexists(final):
        raise AlreadyExists(f"checkpoint {final.name!r} already exists in {directory}")
    try:
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InvalidRequest(f"checkpoint directory {directory} is not a directory") from None


def _publish(work: Path, record: CheckpointRecord) -> None:
    """Record the options, flush everything, and give the checkpoint its real name."""
    write_json_atomic(work / CONFIG_FILE, record.to_config())
    fsync_tree(work)
    try:
        rename_noreplace(work, record.path)
    except FileExistsError:
        raise AlreadyExists(
            f"checkpoint {record.name!r} appeared in {record.path.parent} while it was being made"
        ) from None
    fsync_dir(record.path.parent)


def _hide_and_remove(path: Path, hidden: Path) -> None:
    # The rename is the moment the checkpoint stops being listed; the rest is cleanup.
    os.rename(path, hidden)
    fsync_dir(path.parent)
    shutil.rmtree(hidden)


def _remove_if_present(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
