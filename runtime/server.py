"""The runtime's gRPC face: containerd 0.2's ``types.API`` and ``grpc.health.v1``.

Owns: checking each request's fields, turning messages into calls on the container
table and back, and mapping the runtime's errors to gRPC statuses in one table
(`STATUS_FOR`): unknown container NOT_FOUND, duplicate ALREADY_EXISTS, malformed request
INVALID_ARGUMENT, wrong state or missing feature FAILED_PRECONDITION, CRIU or runc
failure INTERNAL (with the lines of their logs that explain it).

Must not: hold state or locks of its own, or do any work a handler does not need (the
table, the checkpoint store and the event log own that). No handler waits on another
container's lock: containerd 0.2 ran every request through one loop, cryo does not.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

from google.protobuf.timestamp_pb2 import Timestamp

from proto.health_service import SERVING, HealthServicer, add_HealthServicer_to_server
from proto.types import api_pb2
from proto.types.api_cryo import APIServicer, add_APIServicer_to_server
from runtime.checkpoints import CheckpointOptions, CheckpointRecord
from runtime.containers import (
    INIT_PID,
    ContainerStatus,
    ContainerTable,
    ContainerView,
    make_spec,
)
from runtime.errors import (
    AlreadyExists,
    FeatureUnavailable,
    InvalidRequest,
    NotFound,
    OperationFailed,
    RequestFailed,
    Unsupported,
    WrongState,
)
from runtime.events import Event, EventLog, SubscriberTooSlow
from runtime.stdio import StdioPaths
from wire.errors import RpcError
from wire.server import Server, ServerCall
from wire.status import StatusCode

__all__ = ["STATUS_FOR", "RuntimeAPI", "build_server"]

# The API version cryo speaks: containerd's, so that its clients accept cryo.
API_VERSION = (0, 2, 9)
CRYO_VERSION = "0.1.0"

STATUS_FOR: dict[type[RequestFailed], StatusCode] = {
    InvalidRequest: StatusCode.INVALID_ARGUMENT,
    NotFound: StatusCode.NOT_FOUND,
    AlreadyExists: StatusCode.ALREADY_EXISTS,
    WrongState: StatusCode.FAILED_PRECONDITION,
    FeatureUnavailable: StatusCode.FAILED_PRECONDITION,
    Unsupported: StatusCode.UNIMPLEMENTED,
    OperationFailed: StatusCode.INTERNAL,
}


@contextmanager
def _as_status() -> Iterator[None]:
    """Turn a runtime error into the gRPC status a client can act on."""
    try:
        yield
    except RequestFailed as error:
        code = next(
            (status for kind, status in STATUS_FOR.items() if isinstance(error, kind)),
            StatusCode.INTERNAL,
        )
        raise RpcError(code, str(error)) from None


def _require_id(container_id: str) -> None:
    if not container_id:
        raise InvalidRequest("a container id is required")


def _timestamp(ns: int) -> Timestamp:
    seconds, nanos = divmod(ns, 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


def _container_message(view: ContainerView) -> api_pb2.Container:
    spec = view.spec
    process = spec.process
    init = api_pb2.Process(
        pid=INIT_PID,
        terminal=process.terminal,
        user=api_pb2.User(
            uid=process.uid, gid=process.gid, additionalGids=list(process.additional_gids)
        ),
        args=list(process.args),
        env=list(process.env),
        cwd=process.cwd,
        systemPid=view.pid if view.status != ContainerStatus.STOPPED else 0,
        stdin=spec.stdio.stdin,
        stdout=spec.stdio.stdout,
        stderr=spec.stdio.stderr,
    )
    return api_pb2.Container(
        id=spec.id,
        bundlePath=str(spec.bundle),
        processes=[init],
        status=view.status,
        labels=list(spec.labels),
        pids=list(view.pids),
        runtime=spec.runtime,
    )


def _checkpoint_message(record: CheckpointRecord) -> api_pb2.Checkpoint:
    options = record.options
    return api_pb2.Checkpoint(
        name=options.name,
        exit=options.exit,
        tcp=options.tcp,
        unixSockets=options.unix_sockets,
        shell=options.shell,
        emptyNS=list(options.empty_ns),
        parentCheckpoint=options.parent,
        created=_timestamp(record.created_ns),
    )


def _event_message(event: Event) -> api_pb2.Event:
    return api_pb2.Event(
        type=event.type,
        id=event.id,
        status=event.status,
        pid=event.pid,
        timestamp=_timestamp(event.timestamp_ns),
    )


class RuntimeAPI(APIServicer):
    """``types.API`` served from a container table and an event log."""

    def __init__(self, table: ContainerTable, events: EventLog) -> None:
        self.table = table
        self.events = events

    async def GetServerVersion(
        self, request: api_pb2.GetServerVersionRequest, call: ServerCall
    ) -> api_pb2.GetServerVersionResponse:
        major, minor, patch = API_VERSION
        return api_pb2.GetServerVersionResponse(
            major=major,
            minor=minor,
            patch=patch,
            revision=f"cryo {CRYO_VERSION} ({self.table.criu.describe()})",
        )

    async def CreateContainer(
        self, request: api_pb2.CreateContainerRequest, call: ServerCall
    ) -> api_pb2.CreateContainerResponse:
        with _as_status():
            if request.runtimeArgs:
                raise Unsupported("runtimeArgs are not supported")
            spec = await make_spec(
                request.id,
                request.bundlePath,
                request.runtime,
                stdio=StdioPaths(request.stdin, request.stdout, request.stderr),
                labels=request.labels,
                no_pivot_root=request.noPivotRoot,
            )
            if request.checkpoint:
                await self.table.restore(spec, request.checkpoint, request.checkpointDir)
            else:
                await self.table.create(spec)
            (view,) = await self.table.views(spec.id)
        return api_pb2.CreateContainerResponse(container=_container_message(view))

    async def UpdateContainer(
        self, request: api_pb2.UpdateContainerRequest, call: ServerCall
    ) -> api_pb2.UpdateContainerResponse:
        with _as_status():
            _require_id(request.id)
            if request.HasField("resources") and request.resources.ByteSize():
                raise Unsupported("cryo does not change resource limits")
            if request.pid not in ("", INIT_PID):
                raise NotFound(f"container {request.id} has no process {request.pid!r}")
            if request.status:
                await self.table.set_status(request.id, request.status)
            else:
                self.table.get(request.id)
        return api_pb2.UpdateContainerResponse()

    async def Signal(
        self, request: api_pb2.SignalRequest, call: ServerCall
    ) -> api_pb2.SignalResponse:
        with _as_status():
            _require_id(request.id)
            await self.table.signal(request.id, request.pid, request.signal)
        return api_pb2.SignalResponse()

    async def CreateCheckpoint(
        self, request: api_pb2.CreateCheckpointRequest, call: ServerCall
    ) -> api_pb2.CreateCheckpointResponse:
        with _as_status():
            _require_id(request.id)
            if not request.HasField("checkpoint"):
                # containerd 0.2 dereferenced the missing message and crashed here.
                raise InvalidRequest("the checkpoint field (at least its name) is required")
            checkpoint = request.checkpoint
            options = CheckpointOptions(
                name=checkpoint.name,
                exit=checkpoint.exit,
                tcp=checkpoint.tcp,
                unix_sockets=checkpoint.unixSockets,
                shell=checkpoint.shell,
                empty_ns=tuple(checkpoint.emptyNS),
                pre_dump=checkpoint.preDump,
                parent=checkpoint.parentCheckpoint,
            )
            await self.table.checkpoint(request.id, request.checkpointDir, options)
        return api_pb2.CreateCheckpointResponse()

    async def DeleteCheckpoint(
        self, request: api_pb2.DeleteCheckpointRequest, call: ServerCall
    ) -> api_pb2.DeleteCheckpointResponse:
        with _as_status():
            _require_id(request.id)
            await self.table.delete_checkpoint(request.id, request.name, request.checkpointDir)
        return api_pb2.DeleteCheckpointResponse()

    async def ListCheckpoint(
        self, request: api_pb2.ListCheckpointRequest, call: ServerCall
    ) -> api_pb2.ListCheckpointResponse:
        with _as_status():
            _require_id(request.id)
            records = await self.table.list_checkpoints(request.id, request.checkpointDir)
        return api_pb2.ListCheckpointResponse(
            checkpoints=[_checkpoint_message(record) for record in records]
        )

    async def State(self, request: api_pb2.StateRequest, call: ServerCall) -> api_pb2.StateResponse:
        with _as_status():
            views = await self.table.views(request.id)
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return api_pb2.StateResponse(
            containers=[_container_message(view) for view in views],
            machine=api_pb2.Machine(cpus=os.cpu_count() or 1, memory=memory),
        )

    async def Events(
        self, request: api_pb2.EventsRequest, call: ServerCall
    ) -> AsyncIterator[api_pb2.Event]:
        after_ns: int | None = None
        if request.HasField("timestamp"):
            after_ns = request.timestamp.seconds * 1_000_000_000 + request.timestamp.nanos
        if request.storedOnly and after_ns is None:
            raise RpcError(
                StatusCode.INVALID_ARGUMENT, "storedOnly needs a timestamp to replay from"
            )
        subscription = self.events.subscribe(
            after_ns=after_ns, container_id=request.id, follow=not request.storedOnly
        )
        try:
            async for event in subscription.events():
                yield _event_message(event)
        except SubscriberTooSlow as error:
            raise RpcError(StatusCode.RESOURCE_EXHAUSTED, str(error)) from None
        finally:
            subscription.close()


def build_server(table: ContainerTable, events: EventLog) -> tuple[Server, HealthServicer]:
    """A `wire` server answering ``types.API`` and health checks ("" and "types.API")."""
    server = Server()
    add_APIServicer_to_server(RuntimeAPI(table, events), server)
    health = HealthServicer()
    health.set("types.API", SERVING)
    add_HealthServicer_to_server(health, server)
    return server, health
