"""The daemon's containers on disk: one record per container, written atomically.

Layout under the daemon's data root (as Docker's `/var/lib/docker/containers`):

    containers/<id>/config.v2.json   the record (this module)
    containers/<id>/bundle/          the OCI bundle the runtime runs
    containers/<id>/stdout.log, stderr.log   the task's output, appended by the runtime
    containers/<id>/checkpoints/     default checkpoint directory

Owns: `ContainerRecord` (what the daemon knows of a container: its config, name and
last known state) and `ContainerStore` (the id and name indexes, loading at start-up,
saving each change with write-to-temporary, fsync, rename, so a crash leaves the old
record or the new one, never half of one).

Must not: talk to the runtime, or decide what an operation means (`daemon.backend` does).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORD_FILE = "config.v2.json"
NAME_PATTERN = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

_ADJECTIVES = ("brave", "calm", "eager", "frozen", "gentle", "keen", "lucid", "quiet", "steady")
_NOUNS = ("badger", "comet", "falcon", "glacier", "heron", "lynx", "otter", "tundra", "walrus")


@dataclass
class ContainerState:
    """What the daemon last knew of the container's task (Docker's `State`)."""

    status: str = "created"  # created | running | paused | exited | dead
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: str = "0001-01-01T00:00:00Z"
    finished_at: str = "0001-01-01T00:00:00Z"
    checkpointed: str = ""  # the checkpoint it last exited by, if any

    @property
    def running(self) -> bool:
        return self.status in ("running", "paused")


@dataclass
class ContainerRecord:
    """One container: its identity, what it runs, and its state."""

    id: str
    name: str  # without the leading "/"
    created: str
    image: str
    image_id: str
    args: list[str]
    env: list[str]
    cwd: str
    runtime: str  # "runc" (busybox rootfs in namespaces) or "process" (on the host)
    labels: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    auto_remove: bool = False  # docker run --rm
    state: ContainerState = field(default_factory=ContainerState)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerRecord:
        state = ContainerState(**data.pop("state", {}))
        return cls(**data, state=state)


class NameConflict(Exception):
    def __init__(self, name: str, holder: str) -> None:
        super().__init__(name, holder)
        self.name = name
        self.holder = holder


class ContainerStore:
    """Every container record, indexed by id and by name; one writer (the backend)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.containers_dir = root / "containers"
        self.containers_dir.mkdir(parents=True, exist_ok=True)
        self._by_id: dict[str, ContainerRecord] = {}
        self._by_name: dict[str, str] = {}
        self.load_errors: list[str] = []
        self._load()

    # -- lookups ----------------------------------------------------------------------

    def all(self) -> list[ContainerRecord]:
        """Newest first, as `docker ps` lists them."""
        return sorted(self._by_id.values(), key=lambda r: r.created, reverse=True)

    def find(self, ref: str) -> ContainerRecord | None:
        """By full id, by name (with or without "/"), or by a unique id prefix."""
        if ref in self._by_id:
            return self._by_id[ref]
        name = ref[1:] if ref.startswith("/") else ref
        if name in self._by_name:
            return self._by_id[self._by_name[name]]
        if ref:
            matches = [r for i, r in self._by_id.items() if i.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        return None

    def directory(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    # -- changes ----------------------------------------------------------------------

    def new_id(self) -> str:
        while True:
            candidate = secrets.token_hex(32)
            if candidate not in self._by_id and not candidate[:12].isdigit():
                return candidate

    def free_name(self) -> str:
        while True:
            name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
            name += f"_{secrets.randbelow(1000)}"
            if name not in self._by_name:
                return name

    def add(self, record: ContainerRecord) -> None:
        holder = self._by_name.get(record.name)
        if holder is not None:
            raise NameConflict(record.name, holder)
        self.directory(record.id).mkdir(parents=True, exist_ok=True)
        self._by_id[record.id] = record
        self._by_name[record.name] = record.id
        self.save(record)

    def save(self, record: ContainerRecord) -> None:
        """Write the record: temporary file, fsync, rename, fsync the directory."""
        directory = self.directory(record.id)
        final = directory / RECORD_FILE
        temporary = directory / f".{RECORD_FILE}.tmp"
        data = json.dumps(record.to_json(), indent=1).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def remove(self, record: ContainerRecord) -> None:
        """Forget the container and delete its directory (bundle, logs, checkpoints)."""
        self._by_id.pop(record.id, None)
        if self._by_name.get(record.name) == record.id:
            del self._by_name[record.name]
        directory = self.directory(record.id)
        # The record goes first: a crash half-way leaves no record pointing at a
        # half-deleted directory, and a directory without a record is skipped at load.
        (directory / RECORD_FILE).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)

    # -- start-up ---------------------------------------------------------------------

    def _load(self) -> None:
        for directory in sorted(self.containers_dir.iterdir()):
            path = directory / RECORD_FILE
            if not path.is_file():
                continue
            try:
                record = ContainerRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                self.load_errors.append(f"{path}: {exc}")
                continue
            self._by_id[record.id] = record
            self._by_name[record.name] = record.id
