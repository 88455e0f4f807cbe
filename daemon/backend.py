"""What each Docker operation means for cryo: `Backend`.

The HTTP router (`daemon.api`) turns requests into calls here; this module validates
them the way Docker 17 did, keeps the container table (`daemon.store`) in step with
the runtime, and calls the runtime through `daemon.containerd.RuntimeClient` — for a
checkpoint, `/types.API/CreateCheckpoint` with the options libcontainerd sent.

Owns: container create/start/stop/kill/pause/remove/wait/logs, checkpoint create/list/
delete and restore-on-start, the built-in image, and the daemon's event log (what
`GET /events` streams). Every error a user can cause is a `DaemonError` with the HTTP
status and the message Docker gave.

Must not: parse HTTP (`daemon.api`), or reach the runtime other than over gRPC.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import signal
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from daemon.bundles import busybox_applets, busybox_path, make_busybox_bundle, make_process_bundle
from daemon.containerd import RuntimeClient
from daemon.store import NAME_PATTERN, ContainerRecord, ContainerStore, NameConflict
from proto.types import api_pb2
from wire.errors import RpcError
from wire.status import StatusCode

CHECKPOINT_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
RUNTIMES = ("runc", "process")
INIT = "init"
RPC_TIMEOUT = 30.0
CHECKPOINT_TIMEOUT = 300.0
EVENT_LOG_SIZE = 1024
LOG_POLL_INTERVAL = 0.1
SIGNALS = {s.name: s for s in signal.Signals}
WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


class DaemonError(Exception):
    """A refused or failed operation, as the HTTP status and message Docker gave."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(ref: str) -> DaemonError:
    return DaemonError(404, f"No such container: {ref}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rpc_status(exc: RpcError) -> int:
    return {
        StatusCode.NOT_FOUND: 404,
        StatusCode.ALREADY_EXISTS: 409,
        StatusCode.INVALID_ARGUMENT: 400,
        StatusCode.FAILED_PRECONDITION: 409,
    }.get(exc.code, 500)


@dataclass(frozen=True)
class Image:
    """An image cryo has without a registry: busybox-static as its whole root fs."""

    name: str
    tag: str
    id: str
    created: str
    size: int
    default_cmd: tuple[str, ...] = ("sh",)
    default_env: tuple[str, ...] = (
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.tag}"


def builtin_images() -> dict[str, Image]:
    busybox = busybox_path()
    if busybox is None:
        return {}
    data = Path(busybox).read_bytes()
    mtime = datetime.datetime.fromtimestamp(Path(busybox).stat().st_mtime, datetime.UTC)
    image = Image(
        name="busybox",
        tag="latest",
        id="sha256:" + hashlib.sha256(data).hexdigest(),
        created=mtime.strftime("%Y-%m-%dT%H:%M:%SZ"),
        size=len(data),
    )
    return {image.name: image}


@dataclass
class DaemonEvent:
    """One entry of `GET /events` (Docker's events message)."""

    action: str
    container: ContainerRecord
    time_ns: int = field(default_factory=time.time_ns)
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        attributes = {"image": self.container.image, "name": self.container.name}
        attributes.update(self.container.labels)
        attributes.update(self.extra)
        return {
            "status": self.action,
            "id": self.container.id,
            "from": self.container.image,
            "Type": "container",
            "Action": self.action,
            "Actor": {"ID": self.container.id, "Attributes": attributes},
            "scope": "local",
            "time": self.time_ns // 1_000_000_000,
            "timeNano": self.time_ns,
        }


class Backend:
    """The daemon's operations. One instance per daemon; the store's only writer."""

    def __init__(self, store: ContainerStore, runtime: RuntimeClient, *, runc: str | None) -> None:
        self.store = store
        self.runtime = runtime
        self.runc = runc
        self.images = builtin_images()
        self._applets: list[str] | None = None
        self._changed: dict[str, trio.Event] = {}  # per container: set on any state change
        self.events: deque[DaemonEvent] = deque(maxlen=EVENT_LOG_SIZE)
        self._new_event = trio.Event()
        self._nursery: trio.Nursery | None = None  # for work that outlives a request
        # container id → (checkpoint being made, whether the task exits after it)
        self._checkpointing: dict[str, tuple[str, bool]] = {}
        self._start_attempts: dict[str, int] = {}  # failed starts, for attached clients

    def run_in(self, nursery: trio.Nursery) -> None:
        """Background work (removing `--rm` containers after exit) runs in *nursery*."""
        self._nursery = nursery

    # -- lookups ----------------------------------------------------------------------

    def get(self, ref: str) -> ContainerRecord:
        record = self.store.find(ref)
        if record is None:
            raise not_found(ref)
        return record

    def image(self, reference: str) -> Image:
        name, _, tag = reference.partition(":")
        name = name.removeprefix("library/")
        image = self.images.get(name)
        if image is None or (tag and tag != image.tag):
            raise DaemonError(404, f"No such image: {reference if tag else reference + ':latest'}")
        return image

    # -- create -----------------------------------------------------------------------

    async def create(self, name: str | None, config: dict[str, Any]) -> ContainerRecord:
        """`POST /containers/create`: validate, build the bundle, record the container."""
        if not isinstance(config, dict):
            raise DaemonError(400, "config cannot be empty in order to create a container")
        if name:
            if not NAME_PATTERN.match(name):
                raise DaemonError(
                    400,
                    f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                )
            name = name.removeprefix("/")
        reference = config.get("Image")
        if not isinstance(reference, str) or not reference:
            raise DaemonError(400, "no image given (Image)")
        image = self.image(reference)
        host_config = config.get("HostConfig") or {}
        if not isinstance(host_config, dict):
            raise DaemonError(400, "HostConfig must be an object")
        runtime = host_config.get("Runtime") or "runc"
        if runtime not in RUNTIMES:
            raise DaemonError(
                400, f"unknown or invalid runtime name: {runtime} (cryo has {', '.join(RUNTIMES)})"
            )
        if config.get("Tty"):
            raise DaemonError(400, "cryo containers have no terminal: run without -t")
        if config.get("OpenStdin") or config.get("AttachStdin"):
            raise DaemonError(400, "cryo containers take no stdin: run without -i")
        args = _command(config, image)
        env = _string_list(config.get("Env"), "Env")
        cwd = config.get("WorkingDir") or "/"
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise DaemonError(
                400, f"the working directory '{cwd}' is invalid, it needs to be absolute"
            )
        labels = config.get("Labels") or {}
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise DaemonError(400, "Labels must map strings to strings")
        record = ContainerRecord(
            id=self.store.new_id(),
            name=name or self.store.free_name(),
            created=_now(),
            image=reference,
            image_id=image.id,
            args=args,
            env=_merge_env(list(image.default_env), env),
            cwd=cwd,
            runtime=runtime,
            labels=labels,
        )
        record.hostname = str(config.get("Hostname") or record.id[:12])
        record.auto_remove = bool(host_config.get("AutoRemove"))
        try:
            self.store.add(record)
        except NameConflict as exc:
            raise DaemonError(
                409,
                f'Conflict. The container name "/{exc.name}" is already in use by container '
                f'"{exc.holder}". You have to remove (or rename) that container to be able '
                "to reuse that name.",
            ) from None
        try:
            await trio.to_thread.run_sync(self._build_bundle, record)
        except (OSError, FileNotFoundError) as exc:
            self.store.remove(record)
            raise DaemonError(500, f"cannot prepare the container's root fs: {exc}") from exc
        self._emit("create", record)
        return record

    def _build_bundle(self, record: ContainerRecord) -> None:
        bundle = self.bundle(record)
        if record.runtime == "process":
            make_process_bundle(bundle, args=record.args, env=dict(_split_env(record.env)))
            return
        if self.runc is None:
            raise FileNotFoundError("runc is not installed")
        busybox = busybox_path()
        if self._applets is None and busybox is not None:
            self._applets = busybox_applets(busybox)
        make_busybox_bundle(
            bundle,
            self.runc,
            args=record.args,
            env=record.env,
            cwd=record.cwd,
            hostname=record.hostname,
            applets=self._applets,
        )

    # -- paths ------------------------------------------------------------------------

    def bundle(self, record: ContainerRecord) -> Path:
        return self.store.directory(record.id) / "bundle"

    def log_path(self, record: ContainerRecord, stream: str) -> Path:
        return self.store.directory(record.id) / f"{stream}.log"

    def checkpoint_dir(self, record: ContainerRecord, requested: str | None) -> str:
        """Docker's default: the container's own `checkpoints` directory."""
        if not requested:
            return str(self.store.directory(record.id) / "checkpoints")
        if not os.path.isabs(requested):
            raise DaemonError(400, f"checkpoint-dir must be an absolute path: {requested}")
        return requested

    # -- start, and restore -----------------------------------------------------------

    async def start(
        self, ref: str, *, checkpoint: str | None = None, checkpoint_dir: str | None = None
    ) -> bool:
        """Start the container, or restore it from *checkpoint*. False if already running."""
        record = self.get(ref)
        if checkpoint is not None and not CHECKPOINT_ID.match(checkpoint):
            raise DaemonError(400, _invalid_checkpoint(checkpoint))
        async with self.runtime.lock(record.id):
            if record.state.running:
                if checkpoint is not None:
                    raise DaemonError(409, f"Container {record.id} is already running")
                return False
            request = api_pb2.CreateContainerRequest(
                id=record.id,
                bundlePath=str(self.bundle(record)),
                stdout=str(self.log_path(record, "stdout")),
                stderr=str(self.log_path(record, "stderr")),
                runtime=record.runtime,
            )
            if checkpoint is not None:
                request.checkpoint = checkpoint
                request.checkpointDir = self.checkpoint_dir(record, checkpoint_dir)
            try:
                created = await self.runtime.api.CreateContainer(
                    request, timeout=CHECKPOINT_TIMEOUT if checkpoint else RPC_TIMEOUT
                )
            except RpcError as exc:
                verb = (
                    f"restore container {record.name} from {checkpoint}"
                    if checkpoint
                    else "start container"
                )
                message = f"cannot {verb}: {exc.message}"
                if checkpoint is None:
                    # A failed restore changes nothing: the container keeps its exit
                    # and its checkpoints, so a corrected restore can follow.
                    self._start_failed(record, message)
                raise DaemonError(_rpc_status(exc), message) from exc
            state = record.state
            state.status = "running"
            state.pid = _init_pid(created.container)
            state.exit_code = 0
            state.error = ""
            state.started_at = _now()
            state.checkpointed = ""
            self.store.save(record)
        self._changed_now(record)
        self._emit("start", record, **({"checkpoint": checkpoint} if checkpoint else {}))
        return True

    def _start_failed(self, record: ContainerRecord, message: str) -> None:
        """As Docker: the container stays not running, with the error and the exit code
        a shell would give (127 not found, 126 not executable, else 128); whoever is
        attached or waiting hears of it, and a `--rm` container goes."""
        lowered = message.lower()
        if "not found" in lowered or "no such file" in lowered:
            code = 127
        elif "permission denied" in lowered:
            code = 126
        else:
            code = 128
        self._start_attempts[record.id] = self._start_attempts.get(record.id, 0) + 1
        self._record_end(record, code, message)
        if record.auto_remove and self._nursery is not None:
            self._nursery.start_soon(self._remove_quietly, record)

    # -- signals ----------------------------------------------------------------------

    async def kill(self, ref: str, signal_name: str | None) -> None:
        record = self.get(ref)
        signum = _parse_signal(signal_name or "KILL")
        if not record.state.running:
            raise DaemonError(409, f"Container {record.id} is not running")
        await self._signal(record, signum)
        self._emit("kill", record, signal=str(int(signum)))

    async def stop(self, ref: str, timeout: float | None) -> bool:
        """SIGTERM, then SIGKILL after *timeout* s (10 by default). False if not running."""
        record = self.get(ref)
        if not record.state.running:
            return False
        grace = 10.0 if timeout is None or timeout < 0 else timeout
        if record.state.status == "paused":
            await self.unpause(record.id)
        await self._signal(record, signal.SIGTERM)
        with trio.move_on_after(grace):
            await self.wait(record.id, condition="not-running")
            return True
        await self._signal(record, signal.SIGKILL)
        with trio.move_on_after(RPC_TIMEOUT):
            await self.wait(record.id, condition="not-running")
            return True
        raise DaemonError(500, f"container {record.id} did not exit after SIGKILL")

    async def _signal(self, record: ContainerRecord, signum: int) -> None:
        try:
            await self.runtime.api.Signal(
                api_pb2.SignalRequest(id=record.id, pid=INIT, signal=int(signum)),
                timeout=RPC_TIMEOUT,
            )
        except RpcError as exc:
            if exc.code == StatusCode.NOT_FOUND:
                await self._mark_exited(record, 255, "the runtime does not know the container")
                raise DaemonError(409, f"Container {record.id} is not running") from exc
            raise DaemonError(_rpc_status(exc), f"cannot signal container: {exc.message}") from exc

    async def pause(self, ref: str) -> None:
        await self._set_paused(self.get(ref), True)

    async def unpause(self, ref: str) -> None:
        await self._set_paused(self.get(ref), False)

    async def _set_paused(self, record: ContainerRecord, paused: bool) -> None:
        if not record.state.running:
            raise DaemonError(409, f"Container {record.id} is not running")
        if (record.state.status == "paused") == paused:
            word = "already paused" if paused else "not paused"
            raise DaemonError(409, f"Container {record.id} is {word}")
        async with self.runtime.lock(record.id):
            try:
                await self.runtime.api.UpdateContainer(
                    api_pb2.UpdateContainerRequest(
                        id=record.id, pid=INIT, status="paused" if paused else "running"
                    ),
                    timeout=RPC_TIMEOUT,
                )
            except RpcError as exc:
                raise DaemonError(_rpc_status(exc), exc.message) from exc
            record.state.status = "paused" if paused else "running"
            self.store.save(record)
        self._changed_now(record)
        self._emit("pause" if paused else "unpause", record)

    # -- remove -----------------------------------------------------------------------

    async def remove(self, ref: str, *, force: bool) -> None:
        record = self.get(ref)
        if record.state.running:
            if not force:
                raise DaemonError(
                    409,
                    f"You cannot remove a running container {record.id}. Stop the container "
                    "before attempting removal or force remove",
                )
            if record.state.status == "paused":
                await self.unpause(record.id)
            await self._signal(record, signal.SIGKILL)
            with trio.move_on_after(RPC_TIMEOUT):
                await self.wait(record.id, condition="not-running")
        async with self.runtime.lock(record.id):
            await trio.to_thread.run_sync(self.store.remove, record)
        self.runtime.forget(record.id)
        self._changed_now(record)
        self._emit("destroy", record)

    # -- wait and logs ----------------------------------------------------------------

    async def wait(self, ref: str, *, condition: str = "not-running") -> int:
        """Until the container is not running (or its next exit); its exit code."""
        record = self.get(ref)
        if condition not in WAIT_CONDITIONS:
            raise DaemonError(400, f"invalid condition: {condition!r}")
        if condition == "not-running" and not record.state.running:
            return record.state.exit_code
        while True:
            changed = self._changed.setdefault(record.id, trio.Event())
            await changed.wait()
            removed = self.store.find(record.id) is not record
            if condition == "removed":
                if removed:
                    return record.state.exit_code
            elif not record.state.running:
                return record.state.exit_code
            elif removed:
                raise DaemonError(404, f"No such container: {ref}")

    def logs(
        self, ref: str, *, stdout: bool, stderr: bool, follow: bool, tail: str | None
    ) -> AsyncIterator[bytes]:
        """The container's output as Docker's multiplexed stream (8-byte frame headers)."""
        record = self.get(ref)
        if not (stdout or stderr):
            raise DaemonError(400, "You must choose at least one stream")
        lines = _tail_count(tail)
        return self._log_frames(record, stdout, stderr, follow, lines)

    def attach(self, ref: str, *, stdout: bool, stderr: bool) -> AsyncIterator[bytes]:
        """What the task writes from now on, until it exits (Docker's attach). Attached
        before a start, it waits for that start; this is how `docker run` shows output."""
        record = self.get(ref)
        streams = [(1, "stdout")] * stdout + [(2, "stderr")] * stderr
        offsets = {}
        for number, name in streams:
            path = self.log_path(record, name)
            offsets[number] = path.stat().st_size if path.exists() else 0
        return self._attached_frames(record, streams, offsets)

    async def _attached_frames(
        self, record: ContainerRecord, streams: list[tuple[int, str]], offsets: dict[int, int]
    ) -> AsyncIterator[bytes]:
        started_at = record.state.started_at
        attempts = self._start_attempts.get(record.id, 0)
        while not record.state.running and record.state.started_at == started_at:
            if self.store.find(record.id) is not record:
                return
            if self._start_attempts.get(record.id, 0) != attempts:
                return  # the start it was waiting for failed
            changed = self._changed.setdefault(record.id, trio.Event())
            await changed.wait()
        async for frame in self._follow(record, streams, offsets):
            yield frame

    async def _follow(
        self, record: ContainerRecord, streams: list[tuple[int, str]], offsets: dict[int, int]
    ) -> AsyncIterator[bytes]:
        """New output from *offsets* on, as frames, until the task is not running (or
        the container is removed); looks again on every state change and every
        LOG_POLL_INTERVAL."""
        while True:
            running = record.state.running and self.store.find(record.id) is record
            for number, name in streams:
                chunk = _read_from(self.log_path(record, name), offsets[number])
                if chunk:
                    offsets[number] += len(chunk)
                    yield _log_frame(number, chunk)
            if not running:
                return
            with trio.move_on_after(LOG_POLL_INTERVAL):
                await self._changed.setdefault(record.id, trio.Event()).wait()

    async def _log_frames(
        self, record: ContainerRecord, stdout: bool, stderr: bool, follow: bool, tail: int | None
    ) -> AsyncIterator[bytes]:
        streams = [(1, "stdout")] * stdout + [(2, "stderr")] * stderr
        offsets: dict[int, int] = {}
        for number, name in streams:
            path = self.log_path(record, name)
            data = path.read_bytes() if path.exists() else b""
            if tail is not None:
                kept = data.splitlines(keepends=True)[-tail:] if tail else []
                chunk = b"".join(kept)
            else:
                chunk = data
            offsets[number] = len(data)
            if chunk:
                yield _log_frame(number, chunk)
        if follow:
            async for frame in self._follow(record, streams, offsets):
                yield frame

    # -- checkpoints ------------------------------------------------------------------

    async def checkpoint_create(
        self, ref: str, checkpoint_id: str, checkpoint_dir: str | None, *, exit: bool
    ) -> None:
        """Docker 17's `CheckpointCreate`, in its order of checks."""
        record = self.get(ref)
        if not record.state.running:
            raise DaemonError(409, f"Container {ref} not running")
        directory = self.checkpoint_dir(record, checkpoint_dir)
        if not CHECKPOINT_ID.match(checkpoint_id):
            raise DaemonError(400, _invalid_checkpoint(checkpoint_id))
        request = api_pb2.CreateCheckpointRequest(
            id=record.id,
            checkpointDir=directory,
            checkpoint=libcontainerd_checkpoint(checkpoint_id, exit=exit, runtime=record.runtime),
        )
        async with self.runtime.lock(record.id):
            # The runtime's "checkpoint" event (before its "exit") logs ours, so that
            # `docker events` shows checkpoint, then die, as it happened.
            self._checkpointing[record.id] = (checkpoint_id, exit)
            try:
                await self.runtime.api.CreateCheckpoint(request, timeout=CHECKPOINT_TIMEOUT)
            except RpcError as exc:
                raise DaemonError(
                    _rpc_status(exc), f"Cannot checkpoint container {ref}: {exc.message}"
                ) from exc
            finally:
                still_pending = self._checkpointing.pop(record.id, None)
            if exit:
                record.state.checkpointed = checkpoint_id
                self.store.save(record)
        if still_pending is not None:  # the event stream has not caught up yet
            self._emit("checkpoint", record, checkpoint=checkpoint_id)

    async def checkpoint_list(self, ref: str, checkpoint_dir: str | None) -> list[str]:
        record = self.get(ref)
        request = api_pb2.ListCheckpointRequest(
            id=record.id, checkpointDir=self.checkpoint_dir(record, checkpoint_dir)
        )
        try:
            listing = await self.runtime.api.ListCheckpoint(request, timeout=RPC_TIMEOUT)
        except RpcError as exc:
            if exc.code == StatusCode.NOT_FOUND and "container" in exc.message.lower():
                return []  # never started: the runtime has no record of it, nor checkpoints
            raise DaemonError(_rpc_status(exc), exc.message) from exc
        return [c.name for c in listing.checkpoints]

    async def checkpoint_delete(
        self, ref: str, checkpoint_id: str, checkpoint_dir: str | None
    ) -> None:
        record = self.get(ref)
        if not CHECKPOINT_ID.match(checkpoint_id):
            raise DaemonError(400, _invalid_checkpoint(checkpoint_id))
        request = api_pb2.DeleteCheckpointRequest(
            id=record.id,
            name=checkpoint_id,
            checkpointDir=self.checkpoint_dir(record, checkpoint_dir),
        )
        async with self.runtime.lock(record.id):
            try:
                await self.runtime.api.DeleteCheckpoint(request, timeout=RPC_TIMEOUT)
            except RpcError as exc:
                raise DaemonError(_rpc_status(exc), exc.message) from exc

    # -- what the runtime tells us ----------------------------------------------------

    async def on_runtime_event(self, event: api_pb2.Event) -> None:
        """Keep the table in step with the runtime's events."""
        record = self.store.find(event.id)
        if record is None or record.id != event.id:
            return
        if event.type == "checkpoint" and record.id in self._checkpointing:
            name, exits = self._checkpointing.pop(record.id)
            if exits:
                record.state.checkpointed = name  # the exit that follows is this one's
            self._emit("checkpoint", record, checkpoint=name)
        elif event.type == "exit" and event.pid == INIT:
            if record.state.running:
                await self._mark_exited(record, event.status, "")
        elif event.type == "pause" and record.state.status == "running":
            record.state.status = "paused"
            self.store.save(record)
            self._changed_now(record)
        elif event.type == "resume" and record.state.status == "paused":
            record.state.status = "running"
            self.store.save(record)
            self._changed_now(record)

    async def reconcile(self) -> None:
        """At start-up: what the records say is running must be running in the runtime."""
        for record in self.store.all():
            if not record.state.running:
                continue
            try:
                state = await self.runtime.api.State(
                    api_pb2.StateRequest(id=record.id), timeout=RPC_TIMEOUT
                )
            except RpcError:
                await self._mark_exited(
                    record, 255, "the container was gone when the daemon started"
                )
                continue
            live = [c for c in state.containers if c.id == record.id]
            if not live or live[0].status not in ("running", "paused"):
                await self._mark_exited(
                    record, 255, "the container was gone when the daemon started"
                )

    async def _mark_exited(self, record: ContainerRecord, code: int, error: str) -> None:
        record.state.status = "exited"
        record.state.pid = 0
        self._record_end(record, code, error)
        self._emit("die", record, exitCode=str(int(code)))
        if record.auto_remove and not record.state.checkpointed and self._nursery is not None:
            self._nursery.start_soon(self._remove_quietly, record)

    def _record_end(self, record: ContainerRecord, code: int, error: str) -> None:
        """The task is over (or never began): its exit code and error, saved, and
        everyone waiting on the container told."""
        state = record.state
        state.exit_code = int(code)
        state.error = error
        state.finished_at = _now()
        if self.store.find(record.id) is record:
            self.store.save(record)
        self._changed_now(record)

    async def _remove_quietly(self, record: ContainerRecord) -> None:
        """`--rm`: remove after exit (not after an exit checkpoint: it is to be restored)."""
        with contextlib.suppress(DaemonError):  # already removed, or started again
            await self.remove(record.id, force=False)

    # -- events -----------------------------------------------------------------------

    def _changed_now(self, record: ContainerRecord) -> None:
        event = self._changed.pop(record.id, None)
        if event is not None:
            event.set()

    def _emit(self, action: str, record: ContainerRecord, **extra: str) -> None:
        self.events.append(DaemonEvent(action, record, extra=extra))
        self._new_event.set()
        self._new_event = trio.Event()

    async def event_stream(
        self, since_ns: int | None, until_ns: int | None, accept: Callable[[DaemonEvent], bool]
    ) -> AsyncIterator[DaemonEvent]:
        """Logged events from *since_ns*, then live ones until *until_ns* (if given)."""
        seen = 0.0
        for event in list(self.events):
            if since_ns is not None and event.time_ns < since_ns:
                continue
            if until_ns is not None and event.time_ns > until_ns:
                return
            seen = event.time_ns
            if accept(event):
                yield event
        if since_ns is not None and until_ns is not None and until_ns <= time.time_ns():
            return
        while True:
            waiting = self._new_event
            if until_ns is None:
                await waiting.wait()
            else:
                with trio.move_on_after(max(0.0, (until_ns - time.time_ns()) / 1e9)):
                    await waiting.wait()
                if time.time_ns() >= until_ns:
                    return
            for event in list(self.events):
                if event.time_ns <= seen:
                    continue
                seen = event.time_ns
                if accept(event):
                    yield event


# -- helpers of the operations above ---------------------------------------------------


def libcontainerd_checkpoint(name: str, *, exit: bool, runtime: str) -> api_pb2.Checkpoint:
    """The options Docker 17's libcontainerd sent with every checkpoint: established TCP
    connections and external unix sockets dumped, no shell job, and (for a container in
    namespaces) the network namespace left empty for the restore to fill."""
    return api_pb2.Checkpoint(
        name=name,
        exit=exit,
        tcp=True,
        unixSockets=True,
        shell=False,
        emptyNS=["network"] if runtime == "runc" else [],
    )


def _invalid_checkpoint(name: str) -> str:
    return f"Invalid checkpoint ID ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"


def _string_list(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DaemonError(400, f"{what} must be a list of strings")


def _command(config: dict[str, Any], image: Image) -> list[str]:
    entrypoint = _string_list(config.get("Entrypoint"), "Entrypoint")
    cmd = _string_list(config.get("Cmd"), "Cmd")
    args = entrypoint + (cmd if cmd or entrypoint else list(image.default_cmd))
    if not args:
        raise DaemonError(400, "No command specified")
    return args


def _merge_env(image_env: list[str], given: list[str]) -> list[str]:
    """The image's variables, each replaced by a given one of the same name (Docker's
    rule: `-e FOO=bar` keeps the image's PATH)."""
    merged = {item.partition("=")[0]: item for item in image_env}
    for item in given:
        if "=" not in item:
            raise DaemonError(400, f"invalid environment variable: {item!r} (NAME=value)")
        merged[item.partition("=")[0]] = item
    return list(merged.values())


def _split_env(env: list[str]) -> list[tuple[str, str]]:
    return [(item.partition("=")[0], item.partition("=")[2]) for item in env]


def _parse_signal(text: str) -> signal.Signals:
    name = text.upper()
    if name.isdigit():
        try:
            return signal.Signals(int(name))
        except ValueError:
            pass
    else:
        found = SIGNALS.get(name if name.startswith("SIG") else "SIG" + name)
        if found is not None:
            return found
    raise DaemonError(400, f"Invalid signal: {text}")


def _tail_count(tail: str | None) -> int | None:
    if tail is None or tail in ("", "all"):
        return None
    try:
        count = int(tail)
    except ValueError:
        raise DaemonError(400, f"invalid value for tail: {tail!r}") from None
    return None if count < 0 else count


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""


def _log_frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def _init_pid(container: api_pb2.Container) -> int:
    for process in container.processes:
        if process.pid == INIT:
            return int(process.systemPid)
    return int(container.pids[0]) if container.pids else 0
