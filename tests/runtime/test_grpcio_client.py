"""A client that is not cryo: grpcio stubs generated from cryo's ``types`` proto.

Owns: showing that the runtime speaks plain gRPC that another implementation (grpcio,
the C core) understands, for unary calls, the server-streaming Events call, and error
statuses, through a checkpoint and restore of a real task.
Must not: use any cryo client code; grpcio is synchronous, so it runs in a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
import trio
from google.protobuf.timestamp_pb2 import Timestamp

from daemon import supervisor
from proto.types import api_pb2, api_pb2_grpc
from tests.runtime.bundles import CounterOutput, assert_consecutive, make_process_bundle

pytestmark = [pytest.mark.criu, pytest.mark.interop]

TIMEOUT = 20  # seconds, per call


def drive_with_grpcio(target: str, bundle: Path, output: Path) -> dict[str, object]:
    """Everything grpcio saw, for the test to check once the thread is back."""
    seen: dict[str, object] = {}
    with grpc.insecure_channel(target) as channel:
        # grpcio's generated stubs carry no type hints.
        stub: Any = api_pb2_grpc.APIStub(channel)  # type: ignore[no-untyped-call]
        version = stub.GetServerVersion(api_pb2.GetServerVersionRequest(), timeout=TIMEOUT)
        seen["version"] = (version.major, version.minor, version.patch)
        create = api_pb2.CreateContainerRequest(
            id="c1", bundlePath=str(bundle), runtime="process", stdout=str(output)
        )
        created = stub.CreateContainer(create, timeout=TIMEOUT)
        seen["created"] = created.container.status
        seen["pid"] = created.container.processes[0].systemPid

        try:
            stub.CreateCheckpoint(api_pb2.CreateCheckpointRequest(id="c1"), timeout=TIMEOUT)
        except grpc.RpcError as error:
            seen["missing checkpoint"] = (error.code(), error.details())
        try:
            stub.State(api_pb2.StateRequest(id="nope"), timeout=TIMEOUT)
        except grpc.RpcError as error:
            seen["unknown container"] = (error.code(), error.details())

        trio.from_thread.run(CounterOutput(output).wait_for, 5)
        stub.CreateCheckpoint(
            api_pb2.CreateCheckpointRequest(
                id="c1", checkpoint=api_pb2.Checkpoint(name="cp1", exit=True)
            ),
            timeout=TIMEOUT,
        )
        listed = stub.ListCheckpoint(api_pb2.ListCheckpointRequest(id="c1"), timeout=TIMEOUT)
        seen["listed"] = [(c.name, c.exit) for c in listed.checkpoints]
        seen["before restore"] = CounterOutput(output).numbers()
        create.checkpoint = "cp1"
        restored = stub.CreateContainer(create, timeout=TIMEOUT)
        seen["restored pid"] = restored.container.processes[0].systemPid

        request = api_pb2.EventsRequest(timestamp=Timestamp(seconds=0), storedOnly=True)
        seen["events"] = [
            (event.type, event.id, event.status) for event in stub.Events(request, timeout=TIMEOUT)
        ]
    return seen


async def test_grpcio_stubs_checkpoint_and_restore_through_the_runtime(
    tmp_path: Path, criu_path: str
) -> None:
    bundle = make_process_bundle(tmp_path / "bundle")
    output = tmp_path / "counter.out"
    async with supervisor.launch(tmp_path / "state") as launched:
        seen = await trio.to_thread.run_sync(
            drive_with_grpcio, f"unix:{launched.socket_path}", bundle, output
        )
        before = seen["before restore"]
        assert isinstance(before, list)
        after = await CounterOutput(output).wait_for(len(before) + 5)
    assert seen["version"] == (0, 2, 9)
    assert seen["created"] == "running"
    assert seen["restored pid"] == seen["pid"]
    missing = seen["missing checkpoint"]
    assert isinstance(missing, tuple)
    assert missing[0] == grpc.StatusCode.INVALID_ARGUMENT and "checkpoint" in missing[1]
    assert seen["unknown container"] == (grpc.StatusCode.NOT_FOUND, "no such container: nope")
    assert seen["listed"] == [("cp1", True)]
    assert after[len(before)] == before[-1] + 1
    assert_consecutive(after)
    assert seen["events"] == [
        ("start-container", "c1", 0),
        ("checkpoint", "c1", 0),
        ("exit", "c1", 137),
        ("start-container", "c1", 0),
        ("restore", "c1", 0),
    ]
