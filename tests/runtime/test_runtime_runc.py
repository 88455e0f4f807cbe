"""The runtime end to end with runc: a busybox container checkpointed and restored.

Owns: the round trip Docker 17 made through containerd 0.2, here through cryo: a runc
container running a shell counter is checkpointed with exit and with leave-running
(with the options libcontainerd sent), listed, restored into the same id, and counts on
in the same output file; it can be paused; checkpoints are deleted; events come in
order; and nothing is left in runc's state once the runtime stops.
Must not: skip on CI (runc, busybox-static and CRIU are there), or leave a container
behind (the runtime deletes its containers; a last `runc delete -f` by id guards it).
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from google.protobuf.timestamp_pb2 import Timestamp

from daemon import supervisor
from proto.types import api_pb2
from proto.types.api_cryo import APIStub
from tests.runtime.bundles import CounterOutput, assert_consecutive, make_runc_bundle
from wire.client import ClientConn

pytestmark = pytest.mark.criu

DOCKER_OPTIONS: dict[str, Any] = {"tcp": True, "unixSockets": True, "emptyNS": ["network"]}


@pytest.fixture
async def runc_api(tmp_path: Path, runc_path: str, criu_path: str) -> AsyncIterator[APIStub]:
    state = tmp_path / "state"
    try:
        async with (
            supervisor.launch(state, runc=runc_path, log_file=tmp_path / "runtime.log") as launched,
            ClientConn(launched.target) as conn,
        ):
            yield APIStub(conn)
    finally:
        # The runtime deletes its containers as it stops; this only guards against a
        # runtime that died first.
        with trio.CancelScope(shield=True):
            await trio.run_process(
                [runc_path, "--root", str(state / "runc"), "delete", "-f", "c1"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )


async def wait_for_status(api: APIStub, status: str) -> api_pb2.Container:
    with trio.fail_after(10):
        while True:
            (container,) = (await api.State(api_pb2.StateRequest(id="c1"))).containers
            if container.status == status:
                return container
            await trio.sleep(0.02)


async def test_busybox_container_round_trips_through_checkpoints(
    runc_api: APIStub, tmp_path: Path, runc_path: str
) -> None:
    api = runc_api
    bundle = make_runc_bundle(tmp_path / "bundle", runc_path)
    output = CounterOutput(tmp_path / "counter.out")
    create = api_pb2.CreateContainerRequest(
        id="c1",
        bundlePath=str(bundle),
        runtime="runc",
        stdout=str(output.path),
        stderr=str(tmp_path / "counter.err"),
    )
    created = await api.CreateContainer(create)
    init = created.container.processes[0].systemPid
    assert created.container.status == "running"
    assert init in created.container.pids
    await output.wait_for(5)

    await api.UpdateContainer(api_pb2.UpdateContainerRequest(id="c1", status="paused"))
    frozen = len(output.numbers())
    await trio.sleep(0.2)
    assert len(output.numbers()) <= frozen + 1, "a paused container kept counting"
    await api.UpdateContainer(api_pb2.UpdateContainerRequest(id="c1", status="running"))
    await output.wait_for_more(3)

    # Exit checkpoint, then restore into the same id: the count goes on.
    await api.CreateCheckpoint(
        api_pb2.CreateCheckpointRequest(
            id="c1", checkpoint=api_pb2.Checkpoint(name="cp1", exit=True, **DOCKER_OPTIONS)
        )
    )
    await wait_for_status(api, "stopped")
    before = output.numbers()
    assert_consecutive(before)
    await api.CreateContainer(api_pb2.CreateContainerRequest(checkpoint="cp1", **_fields(create)))
    after = await output.wait_for(len(before) + 10)
    assert after[len(before)] == before[-1] + 1, "the restored container did not resume"
    assert_consecutive(after)

    # Leave-running checkpoint; the container goes on; killed; restored to that moment.
    lines_before = len(output.numbers())
    await api.CreateCheckpoint(
        api_pb2.CreateCheckpointRequest(
            id="c1", checkpoint=api_pb2.Checkpoint(name="live", exit=False, **DOCKER_OPTIONS)
        )
    )
    lines_after = len(output.numbers())
    assert_consecutive(await output.wait_for_more(5))
    await api.Signal(api_pb2.SignalRequest(id="c1", pid="init", signal=signal.SIGKILL))
    await wait_for_status(api, "stopped")
    at_kill = output.numbers()
    await api.CreateContainer(api_pb2.CreateContainerRequest(checkpoint="live", **_fields(create)))
    resumed = (await output.wait_for(len(at_kill) + 10))[len(at_kill) :]
    assert_consecutive(resumed)
    assert lines_before <= resumed[0] <= lines_after

    listed = (await api.ListCheckpoint(api_pb2.ListCheckpointRequest(id="c1"))).checkpoints
    assert [(c.name, c.exit) for c in listed] == [("cp1", True), ("live", False)]
    for name in ("cp1", "live"):
        await api.DeleteCheckpoint(api_pb2.DeleteCheckpointRequest(id="c1", name=name))
    assert not (await api.ListCheckpoint(api_pb2.ListCheckpointRequest(id="c1"))).checkpoints

    request = api_pb2.EventsRequest(timestamp=Timestamp(seconds=0), storedOnly=True, id="c1")
    async with api.Events(request) as stream:
        events = [(event.type, event.status) async for event in stream]
    assert events == [
        ("start-container", 0),
        ("pause", 0),
        ("resume", 0),
        ("checkpoint", 0),
        ("exit", 137),
        ("start-container", 0),
        ("restore", 0),
        ("checkpoint", 0),
        ("exit", 137),
        ("start-container", 0),
        ("restore", 0),
    ]


def _fields(request: api_pb2.CreateContainerRequest) -> dict[str, Any]:
    return {
        "id": request.id,
        "bundlePath": request.bundlePath,
        "runtime": request.runtime,
        "stdout": request.stdout,
        "stderr": request.stderr,
    }


async def test_the_runtime_deletes_its_runc_containers_when_it_stops(
    tmp_path: Path, runc_path: str, criu_path: str
) -> None:
    bundle = make_runc_bundle(tmp_path / "bundle", runc_path)
    state = tmp_path / "state"
    async with (
        supervisor.launch(state, runc=runc_path) as launched,
        ClientConn(launched.target) as conn,
    ):
        api = APIStub(conn)
        await api.CreateContainer(
            api_pb2.CreateContainerRequest(id="c1", bundlePath=str(bundle), runtime="runc")
        )
        assert await runc_containers(runc_path, state) == ["c1"]
    assert await runc_containers(runc_path, state) == [], "a runc container outlived the runtime"


async def runc_containers(runc_path: str, state: Path) -> list[str]:
    listed = await trio.run_process(
        [runc_path, "--root", str(state / "runc"), "list", "-q"], capture_stdout=True
    )
    return listed.stdout.decode().split()
