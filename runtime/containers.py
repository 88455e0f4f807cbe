"""The container table, and the two kinds of container behind one interface.

Owns: the containers this runtime knows (one record each in the state directory), their
states (running, paused, stopped) and the events those changes cause, one lock per
container id, the task watchers that notice exits, and the two `ContainerKind`s:

- `runc`: the OCI bundle run by runc (busybox rootfs in the tests), checkpointed and
  restored with ``runc --criu … checkpoint|restore``;
- `process`: the bundle's ``process.args``/``env``/``cwd`` run on the host in a session
  of its own, with no namespaces, checkpointed and restored by CRIU's RPC directly.

Both keep the task's stdio on pipes the runtime owns (`runtime.stdio`) and hand fresh
pipes to a restored task through CRIU's inherit-fd.

Locking: every operation that changes a container holds its id's lock, so two requests
for one container never interleave; different containers never wait for each other,
and queries (State, ListCheckpoint, Events) take no lock at all, so they are answered
while a dump runs. A task's exit is recorded under the lock too, so a checkpoint that
stops its container reports "checkpoint" before "exit".

Must not: speak gRPC (`runtime.server` maps requests and errors), or decide how a
checkpoint is stored (`runtime.checkpoints`).
"""

from __future__ import annotations

import abc
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from runtime.capabilities import CriuSupport
from runtime.checkpoints import (
    CheckpointOptions,
    CheckpointRecord,
    CheckpointStore,
    resolve_checkpoint_dir,
)
from runtime.criu import CriuError, CriuFeatureMissing, describe_fds, wait_pid_exit, wait_pid_free
from runtime.errors import (
    AlreadyExists,
    FeatureUnavailable,
    InvalidRequest,
    NotFound,
    OperationFailed,
    Unsupported,
    WrongState,
)
from runtime.events import EventLog, EventType
from runtime.processes import (
    UNKNOWN_EXIT_STATUS,
    OrphanReaper,
    become_subreaper,
    cgroup_pids,
    containerd_exit_status,
    is_running,
    send_signal,
    session_pids,
    start_ticks,
    wait_pid_gone,
)
from runtime.runc import Runc, RuncCheckpointFlags
from runtime.state import StateLayout, read_json, write_json_atomic
from runtime.stdio import StdioPaths, TaskStdio

__all__ = [
    "INIT_PID",
    "RUNTIME_PROCESS",
    "RUNTIME_RUNC",
    "Container",
    "ContainerKind",
    "ContainerSpec",
    "ContainerStatus",
    "ContainerTable",
    "ContainerView",
    "ProcessSpec",
    "make_spec",
    "open_container_table",
]

log = logging.getLogger("runtime.containers")

RUNTIME_RUNC = "runc"
RUNTIME_PROCESS = "process"
INIT_PID = "init"  # containerd's name for a container's own task

_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_EMPTY_NAMESPACES = frozenset({"network"})
# How long a stopping container may take to show its exit, and its output to drain.
_EXIT_GRACE = 10.0
_OUTPUT_GRACE = 1.0
_PID_FREE_TIMEOUT = 1.0
_OPERATION_LIMIT = 300.0


class ContainerStatus:
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


def validate_container_id(container_id: str) -> str:
    if not container_id:
        raise InvalidRequest("a container id is required")
    if _ID.fullmatch(container_id) is None:
        raise InvalidRequest(
            f"invalid container id {container_id!r}: use up to 128 characters from "
            "[a-zA-Z0-9_.-], starting with a letter or digit"
        )
    return container_id


@dataclass(frozen=True)
class ProcessSpec:
    """The task a bundle describes (``process`` in its config.json)."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    terminal: bool = False
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()

    @classmethod
    def from_bundle(cls, bundle: Path) -> ProcessSpec:
        """Read and check ``<bundle>/config.json``; `InvalidRequest` says what is wrong."""
        try:
            config = read_json(bundle / "config.json")
        except FileNotFoundError:
            raise InvalidRequest(f"bundle {bundle} has no config.json") from None
        except (OSError, ValueError) as error:
            raise InvalidRequest(f"cannot read {bundle}/config.json: {error}") from None
        process = config.get("process") if isinstance(config, dict) else None
        if not isinstance(process, dict):
            raise InvalidRequest(f"{bundle}/config.json has no process section")
        args = process.get("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            raise InvalidRequest(f"{bundle}/config.json: process.args must be a non-empty list")
        user = process.get("user") or {}
        try:
            return cls(
                args=tuple(args),
                env=tuple(str(item) for item in process.get("env") or ()),
                cwd=str(process.get("cwd") or "/"),
                terminal=bool(process.get("terminal", False)),
                uid=int(user.get("uid", 0)),
                gid=int(user.get("gid", 0)),
                additional_gids=tuple(int(g) for g in user.get("additionalGids") or ()),
            )
        except (TypeError, ValueError, AttributeError) as error:
            raise InvalidRequest(f"{bundle}/config.json: bad process section: {error}") from None

    def to_record(self) -> dict[str, Any]:
        return {
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "terminal": self.terminal,
            "uid": self.uid,
            "gid": self.gid,
            "additionalGids": list(self.additional_gids),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProcessSpec:
        return cls(
            args=tuple(record.get("args") or ()),
            env=tuple(record.get("env") or ()),
            cwd=str(record.get("cwd") or "/"),
            terminal=bool(record.get("terminal", False)),
            uid=int(record.get("uid", 0)),
            gid=int(record.get("gid", 0)),
            additional_gids=tuple(record.get("additionalGids") or ()),
        )


@dataclass(frozen=True)
class ContainerSpec:
    """What a CreateContainer request asked for."""

    id: str
    bundle: Path
    runtime: str
    process: ProcessSpec
    stdio: StdioPaths = field(default_factory=StdioPaths)
    labels: tuple[str, ...] = ()
    no_pivot_root: bool = False

    @property
    def default_checkpoint_dir(self) -> Path:
        return self.bundle / "checkpoints"

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bundle": str(self.bundle),
            "runtime": self.runtime,
            "process": self.process.to_record(),
            "stdin": self.stdio.stdin,
            "stdout": self.stdio.stdout,
            "stderr": self.stdio.stderr,
            "labels": list(self.labels),
            "noPivotRoot": self.no_pivot_root,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ContainerSpec:
        return cls(
            id=str(record["id"]),
            bundle=Path(str(record["bundle"])),
            runtime=str(record["runtime"]),
            process=ProcessSpec.from_record(record.get("process") or {}),
            stdio=StdioPaths(
                str(record.get("stdin", "")),
                str(record.get("stdout", "")),
                str(record.get("stderr", "")),
            ),
            labels=tuple(record.get("labels") or ()),
            no_pivot_root=bool(record.get("noPivotRoot", False)),
        )


@dataclass(eq=False)
class Container:
    """One incarnation of a container: a start or a restore, until its task exits."""

    spec: ContainerSpec
    scratch: Path
    status: str = ContainerStatus.STOPPED
    pid: int = 0
    start_ticks: int = 0
    exit_status: int | None = None
    # Set as soon as the task is seen to exit, before the exit is recorded under the lock.
    task_exited: trio.Event = field(default_factory=trio.Event)
    stdio: TaskStdio | None = None
    # The exit is being recorded (under the lock); the status changes when it is done.
    stopping: bool = False

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def active(self) -> bool:
        return self.status in (ContainerStatus.RUNNING, ContainerStatus.PAUSED)

    def to_record(self) -> dict[str, Any]:
        return {
            **self.spec.to_record(),
            "status": self.status,
            "pid": self.pid,
            "startTicks": self.start_ticks,
            "exitStatus": self.exit_status,
        }


@dataclass(frozen=True)
class ContainerView:
    """A container as State reports it: a copy, safe to read while things change."""

    spec: ContainerSpec
    status: str
    pid: int
    pids: tuple[int, ...]


async def make_spec(
    container_id: str,
    bundle: str,
    runtime: str,
    *,
    stdio: StdioPaths | None = None,
    labels: Sequence[str] = (),
    no_pivot_root: bool = False,
) -> ContainerSpec:
    """Check a CreateContainer request's fields and read its bundle's process."""
    validate_container_id(container_id)
    if not bundle:
        raise InvalidRequest("a bundle path is required")
    if not os.path.isabs(bundle):
        raise InvalidRequest(f"bundle path {bundle!r} must be absolute")
    stdio = stdio or StdioPaths()
    runtime = runtime or RUNTIME_RUNC
    if runtime not in (RUNTIME_RUNC, RUNTIME_PROCESS):
        raise InvalidRequest(
            f"unknown runtime {runtime!r}: use {RUNTIME_RUNC!r} or {RUNTIME_PROCESS!r}"
        )
    for name, path in (("stdin", stdio.stdin), ("stdout", stdio.stdout), ("stderr", stdio.stderr)):
        if path and not os.path.isabs(path):
            raise InvalidRequest(f"{name} path {path!r} must be absolute")
    process = await trio.to_thread.run_sync(ProcessSpec.from_bundle, Path(bundle))
    if process.terminal:
        raise Unsupported("terminal: true is not supported; the task's stdio are pipes")
    return ContainerSpec(
        id=container_id,
        bundle=Path(bundle),
        runtime=runtime,
        process=process,
        stdio=stdio,
        labels=tuple(labels),
        no_pivot_root=no_pivot_root,
    )


# -- the two kinds ------------------------------------------------------------------


class ContainerKind(abc.ABC):
    """How one kind of container starts, stops, pauses, checkpoints and restores."""

    name: str

    def __init__(self, criu: CriuSupport) -> None:
        self.criu = criu

    def check_available(self) -> None:  # noqa: B027 -- most kinds need nothing
        """Raise `FeatureUnavailable` if this machine cannot run this kind at all."""

    @abc.abstractmethod
    async def start(self, container: Container, stdio: TaskStdio) -> int:
        """Start the task with *stdio*'s task-side fds as 0-2; return its host PID."""

    @abc.abstractmethod
    async def checkpoint(
        self, container: Container, images: Path, options: CheckpointOptions
    ) -> dict[str, Any]:
        """Dump the task into *images*; return notes for the checkpoint's config.json."""

    @abc.abstractmethod
    async def restore(
        self, container: Container, stdio: TaskStdio, record: CheckpointRecord
    ) -> int:
        """Bring the task back from *record* with fresh *stdio*; return its host PID."""

    @abc.abstractmethod
    async def pause(self, container: Container) -> None: ...

    @abc.abstractmethod
    async def resume(self, container: Container) -> None: ...

    async def signal(self, container: Container, signum: int) -> None:
        try:
            send_signal(container.pid, signum)
        except ProcessLookupError:
            raise WrongState(f"container {container.id} has exited") from None

    async def remove(self, container: Container) -> None:  # noqa: B027 -- optional step
        """Clean up after the task exited (runc keeps state and cgroups until deleted)."""

    @abc.abstractmethod
    def pids(self, container: Container) -> list[int]: ...

    def adopt(self, container: Container) -> bool:
        """Whether a task recorded before a restart is still the same running task."""
        return container.pid > 0 and is_running(container.pid, container.start_ticks)


class ProcessKind(ContainerKind):
    """A host process in its own session, checkpointed through CRIU's RPC."""

    name = RUNTIME_PROCESS

    async def start(self, container: Container, stdio: TaskStdio) -> int:
        process = container.spec.process
        cwd = process.cwd if os.path.isabs(process.cwd) else str(container.spec.bundle)
        env = dict(item.split("=", 1) for item in process.env if "=" in item)
        extra_groups = list(process.additional_gids) or None
        user_options: dict[str, Any] = {}
        if process.uid or process.gid:
            user_options = {"user": process.uid, "group": process.gid}
            if extra_groups:
                user_options["extra_groups"] = extra_groups
        try:
            child = await trio.to_thread.run_sync(
                lambda: subprocess.Popen(
                    list(process.args),
                    stdin=stdio.task_fds[0],
                    stdout=stdio.task_fds[1],
                    stderr=stdio.task_fds[2],
                    cwd=cwd,
                    env=env,
                    # Its own session: CRIU then needs no --shell-job, and signals to the
                    # runtime's terminal or process group never reach it.
                    start_new_session=True,
                    close_fds=True,
                    **user_options,
                )
            )
        except OSError as error:
            raise InvalidRequest(
                f"cannot start {process.args[0]!r}: {error.strerror or error}"
            ) from None
        # The task watcher reaps it with a pidfd; mark the Popen done so that Python's
        # own child bookkeeping never waits for (and steals) its exit status.
        child.returncode = 0
        return child.pid

    async def checkpoint(
        self, container: Container, images: Path, options: CheckpointOptions
    ) -> dict[str, Any]:
        criu = self.criu.require()
        # Which pipes the task holds as 0-2: a restore hands it new ones in their place.
        fds = await trio.to_thread.run_sync(describe_fds, container.pid)
        work = images / "criu.work"
        await trio.to_thread.run_sync(work.mkdir)
        try:
            await criu.dump(
                container.pid,
                str(images),
                leave_running=not options.exit,
                tcp_established=options.tcp,
                ext_unix_sk=options.unix_sockets,
                shell_job=options.shell,
                empty_ns=options.empty_ns,
                work_dir=str(work),
                on_notify=_stage_logger(container.id, "dump"),
            )
        except CriuFeatureMissing as error:
            raise FeatureUnavailable(error.reason) from None
        except CriuError as error:
            raise OperationFailed(_criu_failure("checkpoint", error)) from None
        return {
            "kind": self.name,
            "pid": container.pid,
            "stdio": [fds.get(number, "") for number in (0, 1, 2)],
        }

    async def restore(
        self, container: Container, stdio: TaskStdio, record: CheckpointRecord
    ) -> int:
        criu = self.criu.require()
        old_pid = int(record.driver.get("pid", 0))
        if old_pid > 0:
            with trio.move_on_after(_PID_FREE_TIMEOUT):
                await wait_pid_free(old_pid)
            if os.path.exists(f"/proc/{old_pid}"):  # noqa: ASYNC240 -- procfs, no disk
                raise WrongState(
                    f"cannot restore {record.name!r}: CRIU restores the task under its old "
                    f"PID {old_pid}, which is in use (is the checkpointed task still running?)"
                )
        keys = [str(key) for key in record.driver.get("stdio") or ()]
        inherit = [
            (key, fd)
            for key, fd in zip(keys, stdio.task_fds, strict=False)
            if key.startswith("pipe:")
        ]
        work = await trio.to_thread.run_sync(_fresh_dir, container.scratch / "restore.work")
        try:
            return await criu.restore(
                str(record.path),
                inherit_fds=inherit,
                shell_job=record.options.shell,
                tcp_established=record.options.tcp,
                ext_unix_sk=record.options.unix_sockets,
                work_dir=str(work),
                on_notify=_stage_logger(container.id, "restore"),
            )
        except CriuError as error:
            raise OperationFailed(_criu_failure("restore", error)) from None

    async def pause(self, container: Container) -> None:
        # The whole session's process group; the task leads it (start_new_session).
        _signal_group(container, signal.SIGSTOP)

    async def resume(self, container: Container) -> None:
        _signal_group(container, signal.SIGCONT)

    def pids(self, container: Container) -> list[int]:
        return session_pids(container.pid) or [container.pid]


class RuncKind(ContainerKind):
    """An OCI bundle run by runc; runc drives CRIU for checkpoints."""

    name = RUNTIME_RUNC

    def __init__(self, criu: CriuSupport, runc: Runc | None) -> None:
        super().__init__(criu)
        self.runc = runc

    def check_available(self) -> None:
        self._runc()

    def _runc(self) -> Runc:
        if self.runc is None:
            raise FeatureUnavailable("runc containers are not available: no runc binary found")
        return self.runc

    @staticmethod
    def _log(container: Container) -> Path:
        return container.scratch / "runc.log"

    async def start(self, container: Container, stdio: TaskStdio) -> int:
        runc = self._runc()
        # A stopped container of the same id may have left runc state behind.
        await runc.delete(container.id, log_file=self._log(container))
        return await runc.run_detached(
            container.id,
            container.spec.bundle,
            stdio=stdio.task_fds,
            pid_file=container.scratch / "init.pid",
            log_file=self._log(container),
            no_pivot_root=container.spec.no_pivot_root,
        )

    async def checkpoint(
        self, container: Container, images: Path, options: CheckpointOptions
    ) -> dict[str, Any]:
        criu = self.criu.require()
        runc = self._runc()
        if runc.criu is None:
            runc = replace(runc, criu=criu.path)
        await runc.checkpoint(
            container.id,
            images,
            images / "criu.work",
            _runc_flags(options),
            log_file=self._log(container),
            leave_running=not options.exit,
        )
        return {"kind": self.name}

    async def restore(
        self, container: Container, stdio: TaskStdio, record: CheckpointRecord
    ) -> int:
        criu = self.criu.require()
        runc = self._runc()
        if runc.criu is None:
            runc = replace(runc, criu=criu.path)
        await runc.delete(container.id, log_file=self._log(container))
        work = await trio.to_thread.run_sync(_fresh_dir, container.scratch / "restore.work")
        return await runc.restore_detached(
            container.id,
            container.spec.bundle,
            record.path,
            work,
            _runc_flags(record.options),
            stdio=stdio.task_fds,
            pid_file=container.scratch / "init.pid",
            log_file=self._log(container),
            no_pivot_root=container.spec.no_pivot_root,
        )

    async def pause(self, container: Container) -> None:
        await self._runc().pause(container.id, log_file=self._log(container))

    async def resume(self, container: Container) -> None:
        await self._runc().resume(container.id, log_file=self._log(container))

    async def remove(self, container: Container) -> None:
        if self.runc is not None:
            await self.runc.delete(container.id, log_file=self._log(container))

    def pids(self, container: Container) -> list[int]:
        return cgroup_pids(container.pid)


def _runc_flags(options: CheckpointOptions) -> RuncCheckpointFlags:
    return RuncCheckpointFlags(
        tcp_established=options.tcp,
        ext_unix_sk=options.unix_sockets,
        shell_job=options.shell,
        empty_ns=options.empty_ns,
    )


@contextmanager
def _uninterrupted(what: str) -> Iterator[None]:
    """Run a start, dump or restore to its end even if the client gives up.

    Killing CRIU half-way can take the task down with it (its parasite code is still
    inside the task), and killing runc half-way leaves a container half-made; a client
    that hung up or ran out of time is no reason for either. A generous deadline still
    bounds the operation.
    """
    with trio.CancelScope(shield=True):
        try:
            with trio.fail_after(_OPERATION_LIMIT):
                yield
        except trio.TooSlowError:
            limit = f"{_OPERATION_LIMIT:.0f} s"
            raise OperationFailed(f"{what} did not finish within {limit}") from None


def _stage_logger(container_id: str, what: str) -> Callable[[str], None]:
    """Answer CRIU's NOTIFY messages, noting each stage (with its time) in the debug log."""
    started = time.monotonic()

    def note(stage: str) -> None:
        elapsed = time.monotonic() - started
        log.debug("%s of %s: %s after %.3f s", what, container_id, stage, elapsed)

    return note


def _criu_failure(what: str, error: CriuError) -> str:
    # CRIU's reason and the log lines that explain it, without the host path of the log.
    text = f"{what} failed: {error.reason}"
    if error.log_lines:
        text += "\nCRIU log:\n" + "\n".join(f"  {line}" for line in error.log_lines)
    return text


def _signal_group(container: Container, signum: int) -> None:
    try:
        os.killpg(container.pid, signum)
    except ProcessLookupError:
        raise WrongState(f"container {container.id} has exited") from None


def _fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    return path


# -- the table ----------------------------------------------------------------------


class ContainerTable:
    """Every container the runtime knows, and the operations on them."""

    def __init__(
        self,
        layout: StateLayout,
        events: EventLog,
        store: CheckpointStore,
        criu: CriuSupport,
        runc: Runc | None,
        nursery: trio.Nursery,
        *,
        checkpoint_roots: Sequence[Path] = (),
        reaper: OrphanReaper | None = None,
    ) -> None:
        self.layout = layout
        self.events = events
        self.store = store
        self.criu = criu
        self.kinds: dict[str, ContainerKind] = {
            RUNTIME_RUNC: RuncKind(criu, runc),
            RUNTIME_PROCESS: ProcessKind(criu),
        }
        self.checkpoint_roots = tuple(checkpoint_roots)
        self._nursery = nursery
        self._containers: dict[str, Container] = {}
        self._locks: defaultdict[str, trio.Lock] = defaultdict(trio.Lock)
        self._reaper = reaper or OrphanReaper()

    # -- lookups (no lock: answered even while a dump runs) --------------------------

    def get(self, container_id: str) -> Container:
        container = self._containers.get(container_id)
        if container is None:
            raise NotFound(f"no such container: {container_id}")
        return container

    def kind_of(self, container: Container) -> ContainerKind:
        return self.kinds[container.spec.runtime]

    def kind_named(self, runtime: str) -> ContainerKind:
        kind = self.kinds.get(runtime or RUNTIME_RUNC)
        if kind is None:
            raise InvalidRequest(
                f"unknown runtime {runtime!r}: use {RUNTIME_RUNC!r} or {RUNTIME_PROCESS!r}"
            )
        return kind

    async def views(self, container_id: str = "") -> list[ContainerView]:
        if container_id:
            chosen = [self.get(container_id)]
        else:
            chosen = sorted(self._containers.values(), key=lambda c: c.id)
        # PIDs come from /proc and cgroup files: read off the event loop.
        return await trio.to_thread.run_sync(self._views, chosen)

    def _views(self, chosen: list[Container]) -> list[ContainerView]:
        views = []
        for container in chosen:
            pids: list[int] = []
            if container.active:
                pids = self.kind_of(container).pids(container)
            views.append(
                ContainerView(container.spec, container.status, container.pid, tuple(pids))
            )
        return views

    # -- containers -------------------------------------------------------------------

    async def create(self, spec: ContainerSpec) -> Container:
        """Start a new container (replacing a stopped one of the same id)."""
        kind = self.kind_named(spec.runtime)
        kind.check_available()
        async with self._locks[spec.id]:
            container = await self._new_incarnation(spec)
            stdio = TaskStdio.open(spec.stdio)
            try:
                with _uninterrupted("start"):
                    pid = await kind.start(container, stdio)
            except BaseException:
                stdio.close()
                raise
            await self._started(container, pid, stdio)
            self.events.append(EventType.START_CONTAINER, spec.id, pid=INIT_PID)
            return container

    async def restore(self, spec: ContainerSpec, name: str, checkpoint_dir: str) -> Container:
        """Start a container from checkpoint *name* (the id must be free or stopped)."""
        kind = self.kind_named(spec.runtime)
        kind.check_available()
        self.criu.require()
        directory = resolve_checkpoint_dir(
            checkpoint_dir, spec.default_checkpoint_dir, self.checkpoint_roots
        )
        async with self._locks[spec.id]:
            record = await trio.to_thread.run_sync(self.store.get, directory, name)
            made_by = record.driver.get("kind", RUNTIME_RUNC)
            if made_by != kind.name:
                raise InvalidRequest(
                    f"checkpoint {name!r} was made from a {made_by!r} container; "
                    f"restore it with runtime {made_by!r}, not {kind.name!r}"
                )
            with self.store.reserve(record, "being restored"):
                container = await self._new_incarnation(spec)
                stdio = TaskStdio.open(spec.stdio)
                try:
                    with _uninterrupted("restore"):
                        pid = await kind.restore(container, stdio, record)
                except BaseException:
                    stdio.close()
                    raise
                await self._started(container, pid, stdio)
            self.events.append(EventType.START_CONTAINER, spec.id, pid=INIT_PID)
            self.events.append(EventType.RESTORE, spec.id, pid=INIT_PID)
            return container

    async def _new_incarnation(self, spec: ContainerSpec) -> Container:
        existing = self._containers.get(spec.id)
        if existing is not None and existing.active:
            raise AlreadyExists(f"container {spec.id} already exists and is {existing.status}")
        scratch = self.layout.container_scratch(spec.id)
        await trio.to_thread.run_sync(lambda: scratch.mkdir(mode=0o700, exist_ok=True))
        return Container(spec, scratch)

    async def _started(self, container: Container, pid: int, stdio: TaskStdio) -> None:
        stdio.task_has_fds()
        container.pid = pid
        container.start_ticks = start_ticks(pid)
        container.status = ContainerStatus.RUNNING
        container.stdio = stdio
        self._containers[container.id] = container
        self._reaper.waited_for.add(pid)
        self._nursery.start_soon(stdio.copy, name=f"stdio of {container.id}")
        self._nursery.start_soon(self._watch, container, True, name=f"watch {container.id}")
        await self._save(container)

    async def _watch(self, container: Container, our_child: bool) -> None:
        """Wait for the task to exit, then record it (under the container's lock)."""
        pid = container.pid
        status = UNKNOWN_EXIT_STATUS
        try:
            if our_child:
                try:
                    status = containerd_exit_status(await wait_pid_exit(pid))
                except ChildProcessError:
                    # Not re-parented to us (we are no subreaper): exit code unknowable.
                    await wait_pid_gone(pid)
            else:
                await wait_pid_gone(pid)
        except ProcessLookupError:
            pass  # gone before we looked
        finally:
            self._reaper.waited_for.discard(pid)
        container.exit_status = status
        container.task_exited.set()
        async with self._locks[container.id]:
            await self._stopped(container)

    async def _stopped(self, container: Container) -> None:
        """Record that *container*'s task exited: clean up, send "exit", save."""
        if container.status == ContainerStatus.STOPPED or container.stopping:
            return
        container.stopping = True
        if container.stdio is not None:
            # Let the last output reach its file, so that a client who sees "exit" finds
            # all of it there (a grandchild still holding the pipe may delay it).
            with trio.move_on_after(_OUTPUT_GRACE):
                await container.stdio.finished.wait()
        try:
            await self.kind_of(container).remove(container)
        except OperationFailed as error:
            log.warning("cleaning up container %s failed: %s", container.id, error)
        exit_status = container.exit_status
        if exit_status is None:
            exit_status = UNKNOWN_EXIT_STATUS
        # Status and event change together: whoever sees "stopped" can find the event.
        container.status = ContainerStatus.STOPPED
        self.events.append(EventType.EXIT, container.id, pid=INIT_PID, status=exit_status)
        await self._save(container)

    async def signal(self, container_id: str, pid: str, signum: int) -> None:
        if pid not in ("", INIT_PID):
            raise NotFound(f"container {container_id} has no process {pid!r}")
        if not 0 < signum < signal.NSIG:
            raise InvalidRequest(f"invalid signal number {signum}")
        async with self._locks[container_id]:
            container = self.get(container_id)
            if not container.active:
                raise WrongState(f"container {container_id} is not running")
            await self.kind_of(container).signal(container, signum)

    async def set_status(self, container_id: str, status: str) -> None:
        """Pause ("paused") or resume ("running") a container; a no-op if it already is."""
        if status not in (ContainerStatus.PAUSED, ContainerStatus.RUNNING):
            raise InvalidRequest(f"status must be 'paused' or 'running', not {status!r}")
        async with self._locks[container_id]:
            container = self.get(container_id)
            if not container.active:
                raise WrongState(f"container {container_id} is not running")
            if container.status == status:
                return
            kind = self.kind_of(container)
            if status == ContainerStatus.PAUSED:
                await kind.pause(container)
                event = EventType.PAUSE
            else:
                await kind.resume(container)
                event = EventType.RESUME
            container.status = status
            await self._save(container)
            self.events.append(event, container_id, pid=INIT_PID)

    # -- checkpoints ------------------------------------------------------------------

    def checkpoint_dir(self, container: Container, requested: str) -> Path:
        return resolve_checkpoint_dir(
            requested, container.spec.default_checkpoint_dir, self.checkpoint_roots
        )

    async def checkpoint(
        self, container_id: str, checkpoint_dir: str, options: CheckpointOptions
    ) -> CheckpointRecord:
        """Checkpoint a running (or paused) container; with ``exit`` it stops."""
        unknown = set(options.empty_ns) - _EMPTY_NAMESPACES
        if unknown:
            raise InvalidRequest(
                f"emptyNS may only name {sorted(_EMPTY_NAMESPACES)}, not {sorted(unknown)}"
            )
        if options.incremental:
            self.criu.require_incremental()
            raise Unsupported("incremental checkpoints are not implemented by cryo yet")
        self.criu.require()
        async with self._locks[container_id]:
            container = self.get(container_id)
            if not container.active:
                raise WrongState(f"container {container_id} is not running")
            directory = self.checkpoint_dir(container, checkpoint_dir)
            kind = self.kind_of(container)

            async def dump(images: Path) -> dict[str, Any]:
                return await kind.checkpoint(container, images, options)

            with _uninterrupted("checkpoint"):
                record = await self.store.create(directory, options, dump)
            self.events.append(EventType.CHECKPOINT, container_id, pid=INIT_PID)
            if options.exit:
                # CRIU killed the task; wait for the watcher to see it, then record the
                # exit here, so that "checkpoint" comes before "exit" and a restore sent
                # right after this returns finds the container stopped.
                with trio.move_on_after(_EXIT_GRACE):
                    await container.task_exited.wait()
                if container.task_exited.is_set():
                    await self._stopped(container)
                else:
                    log.warning("container %s still runs after an exit checkpoint", container_id)
            return record

    async def list_checkpoints(
        self, container_id: str, checkpoint_dir: str
    ) -> list[CheckpointRecord]:
        container = self.get(container_id)
        directory = self.checkpoint_dir(container, checkpoint_dir)
        return await trio.to_thread.run_sync(self.store.list, directory)

    async def delete_checkpoint(self, container_id: str, name: str, checkpoint_dir: str) -> None:
        container = self.get(container_id)
        directory = self.checkpoint_dir(container, checkpoint_dir)
        await self.store.delete(directory, name)

    # -- persistence, start-up and shutdown --------------------------------------------

    async def _save(self, container: Container) -> None:
        path = self.layout.container_record(container.id)
        record = container.to_record()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(write_json_atomic, path, record)

    async def recover(self) -> None:
        """Load the containers recorded before a restart.

        A task that still runs (same PID, same start time) is adopted: watched, signalled,
        paused and checkpointed as before, but its exit code cannot be known (it is not
        our child) and its stdio, whose other ends died with the old runtime, is not
        reconnected. Every other container is recorded as stopped.
        """
        records = await trio.to_thread.run_sync(_load_records, self.layout.containers)
        for record in records:
            try:
                spec = ContainerSpec.from_record(record)
                validate_container_id(spec.id)
                kind = self.kind_named(spec.runtime)
            except (KeyError, ValueError, TypeError, InvalidRequest) as error:
                log.warning("ignoring a damaged container record: %s", error)
                continue
            container = Container(spec, self.layout.container_scratch(spec.id))
            container.pid = int(record.get("pid") or 0)
            container.start_ticks = int(record.get("startTicks") or 0)
            container.exit_status = record.get("exitStatus")
            self._containers[spec.id] = container
            was = str(record.get("status", ContainerStatus.STOPPED))
            if was == ContainerStatus.STOPPED:
                continue
            if kind.adopt(container):
                container.status = was
                log.info("adopted container %s (pid %d)", spec.id, container.pid)
                self._nursery.start_soon(self._watch, container, False)
            else:
                container.status = was
                container.exit_status = UNKNOWN_EXIT_STATUS
                container.task_exited.set()
                await self._stopped(container)

    async def shutdown(self) -> None:
        """Stop every container: without a shim, their stdio cannot outlive the runtime."""
        active = [container for container in self._containers.values() if container.active]
        for container in active:
            try:
                if container.status == ContainerStatus.PAUSED:
                    # A frozen task cannot act on SIGKILL until it is thawed.
                    await self.kind_of(container).resume(container)
                send_signal(container.pid, signal.SIGKILL)
            except (ProcessLookupError, OperationFailed) as error:
                log.info("stopping container %s: %s", container.id, error)
        with trio.move_on_after(_EXIT_GRACE):
            for container in active:
                await container.task_exited.wait()
                async with self._locks[container.id]:
                    await self._stopped(container)


def _load_records(directory: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            record = read_json(path)
        except (OSError, ValueError) as error:
            log.warning("cannot read container record %s: %s", path, error)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


@asynccontextmanager
async def open_container_table(
    layout: StateLayout,
    events: EventLog,
    store: CheckpointStore,
    criu: CriuSupport,
    runc: Runc | None,
    *,
    checkpoint_roots: Sequence[Path] = (),
    subreaper: bool = True,
) -> AsyncIterator[ContainerTable]:
    """The container table, with its task watchers and stdio copying running.

    With *subreaper* (what the runtime process wants) this process adopts the tasks
    runc leaves behind, so their exit codes are known. Leaving it, the table stops every
    container it runs.
    """
    if subreaper:
        become_subreaper()
    reaper = OrphanReaper()
    async with trio.open_nursery() as nursery:
        table = ContainerTable(
            layout,
            events,
            store,
            criu,
            runc,
            nursery,
            checkpoint_roots=checkpoint_roots,
            reaper=reaper,
        )
        if subreaper:
            nursery.start_soon(reaper.run)
        await table.recover()
        try:
            yield table
        finally:
            with trio.CancelScope(shield=True):
                await table.shutdown()
            nursery.cancel_scope.cancel()
