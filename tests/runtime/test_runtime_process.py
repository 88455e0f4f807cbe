"""The runtime end to end with `process` containers: real CRIU, real gRPC, real files.

Owns: what a client of ``types.API`` sees: a counter checkpointed with exit and with
leave-running comes back and counts on from where it was checkpointed, in the same
output file; events arrive in order; every error has the status the API promises;
checkpoints of two containers run at once while other calls are answered; a runtime
killed in the middle of a dump comes back with nothing half-made.
Must not: skip on CI (CRIU is there), or leave a task running (the runtime stops its
containers when the test ends; tasks a test kills itself it kills by PID).
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from google.protobuf.timestamp_pb2 import Timestamp

from daemon import supervisor
from proto.health import health_pb2
from proto.health.health_cryo import HealthStub
from proto.types import api_pb2
from proto.types.api_cryo import APIStub
from tests.runtime.bundles import (
    CounterOutput,
    assert_consecutive,
    make_process_bundle,
    wait_until,
)
from wire.client import ClientConn
from wire.errors import RpcError
from wire.status import StatusCode

pytestmark = pytest.mark.criu

# What Docker 17's libcontainerd asked for on every checkpoint.
DOCKER_OPTIONS: dict[str, Any] = {"tcp": True, "unixSockets": True, "emptyNS": ["network"]}


def create_request(
    bundle: Path, output: Path, container_id: str = "c1", **fields: Any
) -> api_pb2.CreateContainerRequest:
    fields.setdefault("runtime", "process")
    return api_pb2.CreateContainerRequest(
        id=container_id,
        bundlePath=str(bundle),
        stdout=str(output),
        stderr=str(output.with_suffix(".err")),
        **fields,
    )


def checkpoint_request(
    name: str, container_id: str = "c1", *, exit: bool, **fields: Any
) -> api_pb2.CreateCheckpointRequest:
    directory = fields.pop("checkpointDir", "")
    return api_pb2.CreateCheckpointRequest(
        id=container_id,
        checkpoint=api_pb2.Checkpoint(name=name, exit=exit, **{**DOCKER_OPTIONS, **fields}),
        checkpointDir=directory,
    )


async def expect_status(code: StatusCode, call: Awaitable[Any]) -> str:
    with pytest.raises(RpcError) as caught:
        await call
    assert caught.value.code == code, caught.value.message
    return caught.value.message


async def checkpoint_names(api: APIStub, container_id: str = "c1") -> list[str]:
    request = api_pb2.ListCheckpointRequest(id=container_id)
    return [checkpoint.name for checkpoint in (await api.ListCheckpoint(request)).checkpoints]


async def wait_until_stopped(api: APIStub, container_id: str) -> api_pb2.Container:
    with trio.fail_after(10):
        while True:
            (container,) = (await api.State(api_pb2.StateRequest(id=container_id))).containers
            if container.status == "stopped":
                return container
            await trio.sleep(0.02)


async def stored_events(api: APIStub, container_id: str = "") -> list[tuple[str, str, int]]:
    request = api_pb2.EventsRequest(
        timestamp=Timestamp(seconds=0), storedOnly=True, id=container_id
    )
    with trio.fail_after(10):
        async with api.Events(request) as events:
            return [(event.type, event.id, event.status) async for event in events]


def pid_alive(pid: int) -> bool:
    """The task runs (a zombie, dead but not yet reaped by its new parent, does not)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


async def test_exit_checkpoint_then_restore_continues_the_count(
    api: APIStub, tmp_path: Path
) -> None:
    bundle = make_process_bundle(tmp_path / "bundle")
    output = CounterOutput(tmp_path / "counter.out")
    created = await api.CreateContainer(create_request(bundle, output.path))
    assert created.container.status == "running"
    pid = created.container.processes[0].systemPid
    assert list(created.container.pids) == [pid]
    await output.wait_for(5)

    await api.CreateCheckpoint(checkpoint_request("cp1", exit=True))
    (stopped,) = (await api.State(api_pb2.StateRequest(id="c1"))).containers
    assert stopped.status == "stopped", "an exit checkpoint returns once the task is gone"
    assert not pid_alive(pid)
    before = output.numbers()
    assert_consecutive(before)
    listed = (await api.ListCheckpoint(api_pb2.ListCheckpointRequest(id="c1"))).checkpoints
    assert [(c.name, c.exit, c.tcp, list(c.emptyNS)) for c in listed] == [
        ("cp1", True, True, ["network"])
    ]

    restored = await api.CreateContainer(create_request(bundle, output.path, checkpoint="cp1"))
    assert restored.container.status == "running"
    assert restored.container.processes[0].systemPid == pid, "CRIU keeps the PID"
    after = await output.wait_for(len(before) + 10)
    assert after[len(before)] == before[-1] + 1, "the restored counter did not resume"
    assert_consecutive(after)

    await api.DeleteCheckpoint(api_pb2.DeleteCheckpointRequest(id="c1", name="cp1"))
    assert not (await api.ListCheckpoint(api_pb2.ListCheckpointRequest(id="c1"))).checkpoints
    assert os.listdir(bundle / "checkpoints") == []
    assert await stored_events(api, "c1") == [
        ("start-container", "c1", 0),
        ("checkpoint", "c1", 0),
        ("exit", "c1", 128 + signal.SIGKILL),
        ("start-container", "c1", 0),
        ("restore", "c1", 0),
    ]


async def test_leave_running_checkpoint_restores_to_the_moment_it_was_taken(
    api: APIStub, tmp_path: Path
) -> None:
    bundle = make_process_bundle(tmp_path / "bundle")
    output = CounterOutput(tmp_path / "counter.out")
    created = await api.CreateContainer(create_request(bundle, output.path))
    pid = created.container.processes[0].systemPid
    await output.wait_for(5)
    lines_before = len(output.numbers())
    await api.CreateCheckpoint(checkpoint_request("live", exit=False))
    lines_after = len(output.numbers())
    numbers = await output.wait_for_more(10)
    assert_consecutive(numbers)
    (running,) = (await api.State(api_pb2.StateRequest(id="c1"))).containers
    assert running.status == "running"

    message = await expect_status(
        StatusCode.ALREADY_EXISTS,
        api.CreateContainer(create_request(bundle, output.path, checkpoint="live")),
    )
    assert "already exists" in message
    other = tmp_path / "other.out"
    message = await expect_status(
        StatusCode.FAILED_PRECONDITION,
        api.CreateContainer(create_request(bundle, other, "c2", checkpoint="live")),
    )
    assert f"PID {pid}" in message, "the original still runs under the PID CRIU needs"

    await api.Signal(api_pb2.SignalRequest(id="c1", pid="init", signal=signal.SIGKILL))
    await wait_until_stopped(api, "c1")
    at_kill = output.numbers()

    await api.CreateContainer(create_request(bundle, output.path, checkpoint="live"))
    resumed = (await output.wait_for(len(at_kill) + 10))[len(at_kill) :]
    assert_consecutive(resumed)
    # The task resumes from the value it had written when the dump was taken.
    assert lines_before <= resumed[0] <= lines_after
    await api.Signal(api_pb2.SignalRequest(id="c1", signal=signal.SIGTERM))
    await wait_until_stopped(api, "c1")
    exits = [status for kind, _, status in await stored_events(api, "c1") if kind == "exit"]
    assert exits == [128 + signal.SIGKILL, 128 + signal.SIGTERM]


async def test_errors_carry_the_status_the_api_promises(api: APIStub, tmp_path: Path) -> None:
    bundle = make_process_bundle(tmp_path / "bundle")
    output = tmp_path / "counter.out"
    await api.CreateContainer(create_request(bundle, output))
    await CounterOutput(output).wait_for(3)

    not_found: list[Callable[[], Awaitable[Any]]] = [
        lambda: api.CreateCheckpoint(checkpoint_request("cp", "nope", exit=False)),
        lambda: api.ListCheckpoint(api_pb2.ListCheckpointRequest(id="nope")),
        lambda: api.DeleteCheckpoint(api_pb2.DeleteCheckpointRequest(id="nope", name="cp")),
        lambda: api.Signal(api_pb2.SignalRequest(id="nope", signal=signal.SIGTERM)),
        lambda: api.State(api_pb2.StateRequest(id="nope")),
        lambda: api.UpdateContainer(api_pb2.UpdateContainerRequest(id="nope", status="paused")),
        lambda: api.DeleteCheckpoint(api_pb2.DeleteCheckpointRequest(id="c1", name="never")),
        lambda: api.CreateContainer(create_request(bundle, output, "c9", checkpoint="never")),
    ]
    for call in not_found:
        await expect_status(StatusCode.NOT_FOUND, call())

    # containerd 0.2 crashed on a request without its checkpoint message.
    message = await expect_status(
        StatusCode.INVALID_ARGUMENT,
        api.CreateCheckpoint(api_pb2.CreateCheckpointRequest(id="c1")),
    )
    assert "checkpoint" in message
    invalid: list[Callable[[], Awaitable[Any]]] = [
        lambda: api.CreateCheckpoint(checkpoint_request("../escape", exit=False)),
        lambda: api.CreateCheckpoint(checkpoint_request(".hidden", exit=False)),
        lambda: api.CreateCheckpoint(checkpoint_request("ok", exit=False, checkpointDir="../..")),
        lambda: api.CreateCheckpoint(checkpoint_request("ok-name", exit=False, emptyNS=["pid"])),
        lambda: api.CreateContainer(create_request(Path("relative/bundle"), output, "c2")),
        lambda: api.CreateContainer(create_request(bundle, output, "c2", runtime="crun")),
        lambda: api.CreateContainer(create_request(bundle, output, "bad/id")),
    ]
    for call in invalid:
        await expect_status(StatusCode.INVALID_ARGUMENT, call())
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path.parent / "ok-name").exists()

    await api.CreateCheckpoint(checkpoint_request("cp1", exit=False))
    message = await expect_status(
        StatusCode.ALREADY_EXISTS, api.CreateCheckpoint(checkpoint_request("cp1", exit=False))
    )
    assert "cp1" in message
    await expect_status(
        StatusCode.ALREADY_EXISTS, api.CreateContainer(create_request(bundle, output))
    )

    incremental = checkpoint_request("cp2", exit=False, preDump=True)
    version = await api.GetServerVersion(api_pb2.GetServerVersionRequest())
    if "incremental" in version.revision:
        await expect_status(StatusCode.UNIMPLEMENTED, api.CreateCheckpoint(incremental))
    else:
        message = await expect_status(
            StatusCode.FAILED_PRECONDITION, api.CreateCheckpoint(incremental)
        )
        assert "memory dirty tracking" in message

    await api.Signal(api_pb2.SignalRequest(id="c1", signal=signal.SIGKILL))
    await wait_until_stopped(api, "c1")
    message = await expect_status(
        StatusCode.FAILED_PRECONDITION, api.CreateCheckpoint(checkpoint_request("cp3", exit=True))
    )
    assert "not running" in message
    await expect_status(
        StatusCode.FAILED_PRECONDITION,
        api.Signal(api_pb2.SignalRequest(id="c1", signal=signal.SIGTERM)),
    )
    names = [
        c.name
        for c in (await api.ListCheckpoint(api_pb2.ListCheckpointRequest(id="c1"))).checkpoints
    ]
    assert names == ["cp1"]


async def test_a_criu_failure_is_internal_and_quotes_criu(api: APIStub, tmp_path: Path) -> None:
    # A task with an established TCP connection cannot be dumped without "tcp" (and on
    # this machine's kernel not even with it: CRIU cannot read the socket's options).
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    host, port = listener.getsockname()
    bundle = make_process_bundle(tmp_path / "bundle", env={"COUNTER_CONNECT": f"{host}:{port}"})
    output = CounterOutput(tmp_path / "counter.out")
    with listener:
        await api.CreateContainer(create_request(bundle, output.path))
        accepted, _ = await listener.accept()
        with accepted:
            await output.wait_for(3)
            request = checkpoint_request("cp1", exit=True, tcp=False)
            message = await expect_status(StatusCode.INTERNAL, api.CreateCheckpoint(request))
            assert message.startswith("checkpoint failed: criu dump of pid")
            lines = message.split("CRIU log:\n", 1)[1].splitlines()
            assert any("Error (criu/" in line for line in lines), "CRIU's own words are missing"
            assert lines[-1].endswith("Dumping FAILED.")
            assert "RLIMIT_NOFILE" not in message, "CRIU's harmless noise is left out"
            assert str(tmp_path) not in message, "no host paths in what the client sees"
            # Nothing was made, and the task was not harmed.
            assert os.listdir(bundle / "checkpoints") == []
            assert await checkpoint_names(api) == []
            assert_consecutive(await output.wait_for_more(5))
            (container,) = (await api.State(api_pb2.StateRequest(id="c1"))).containers
            assert container.status == "running"


async def test_pause_resume_and_live_events(api: APIStub, tmp_path: Path) -> None:
    bundle = make_process_bundle(tmp_path / "bundle")
    output = CounterOutput(tmp_path / "counter.out")
    events: list[tuple[str, str]] = []

    async def follow(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with api.Events(api_pb2.EventsRequest()) as stream:
            task_status.started()
            async for event in stream:
                events.append((event.type, event.id))

    async with trio.open_nursery() as nursery:
        await nursery.start(follow)
        await api.CreateContainer(create_request(bundle, output.path))
        await output.wait_for(3)
        await api.UpdateContainer(api_pb2.UpdateContainerRequest(id="c1", status="paused"))
        (paused,) = (await api.State(api_pb2.StateRequest(id="c1"))).containers
        assert paused.status == "paused"
        frozen = len(output.numbers())
        await trio.sleep(0.2)
        assert len(output.numbers()) <= frozen + 1, "a paused counter kept counting"
        await api.UpdateContainer(api_pb2.UpdateContainerRequest(id="c1", status="running"))
        assert_consecutive(await output.wait_for_more(5))
        await expect_status(
            StatusCode.INVALID_ARGUMENT,
            api.UpdateContainer(api_pb2.UpdateContainerRequest(id="c1", status="frozen")),
        )
        await api.Signal(api_pb2.SignalRequest(id="c1", signal=signal.SIGKILL))
        await wait_until(lambda: ("exit", "c1") in events)
        nursery.cancel_scope.cancel()
    assert events == [
        ("start-container", "c1"),
        ("pause", "c1"),
        ("resume", "c1"),
        ("exit", "c1"),
    ]


async def test_stdin_is_fed_from_its_file_and_output_appended(api: APIStub, tmp_path: Path) -> None:
    bundle = make_process_bundle(tmp_path / "bundle", args=["/bin/cat"])
    source = tmp_path / "input.txt"
    source.write_text("first line\nsecond line\n")
    output = tmp_path / "output.txt"
    output.write_text("already here\n")
    request = create_request(bundle, output, stdin=str(source))
    await api.CreateContainer(request)
    container = await wait_until_stopped(api, "c1")
    assert container.processes[0].stdin == str(source)
    assert output.read_text() == "already here\nfirst line\nsecond line\n"
    assert ("exit", "c1", 0) in await stored_events(api, "c1")
    # A stopped id can be created again; output keeps being appended.
    await api.CreateContainer(request)
    await wait_until_stopped(api, "c1")
    assert output.read_text().count("first line") == 2


async def test_health_version_socket_mode_and_shutdown(tmp_path: Path, criu_path: str) -> None:
    bundle = make_process_bundle(tmp_path / "bundle")
    async with supervisor.launch(tmp_path / "state") as launched:
        assert stat.S_IMODE(os.stat(launched.socket_path).st_mode) == 0o600
        async with ClientConn(launched.target) as conn:
            health = HealthStub(conn)
            for service in ("", "types.API"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            api = APIStub(conn)
            version = await api.GetServerVersion(api_pb2.GetServerVersionRequest())
            assert (version.major, version.minor, version.patch) == (0, 2, 9)
            assert "criu 4." in version.revision
            created = await api.CreateContainer(create_request(bundle, tmp_path / "out"))
            pid = created.container.processes[0].systemPid
            assert pid_alive(pid)
            state = await api.State(api_pb2.StateRequest())
            assert state.machine.cpus == os.cpu_count() and state.machine.memory > 0
    assert not pid_alive(pid), "the runtime must stop its containers when it stops"


async def test_without_a_usable_criu_checkpoints_are_refused_clearly(tmp_path: Path) -> None:
    bundle = make_process_bundle(tmp_path / "bundle")
    output = CounterOutput(tmp_path / "counter.out")
    async with (
        supervisor.launch(tmp_path / "state", criu="/bin/true") as launched,
        ClientConn(launched.target) as conn,
    ):
        api = APIStub(conn)
        version = await api.GetServerVersion(api_pb2.GetServerVersionRequest())
        assert "criu unavailable" in version.revision
        # Containers still run; only what needs CRIU is refused, and says why.
        await api.CreateContainer(create_request(bundle, output.path))
        await output.wait_for(3)
        message = await expect_status(
            StatusCode.FAILED_PRECONDITION,
            api.CreateCheckpoint(checkpoint_request("cp1", exit=True)),
        )
        assert "checkpoint and restore are not available: no usable CRIU" in message
        assert await checkpoint_names(api) == []
        (container,) = (await api.State(api_pb2.StateRequest(id="c1"))).containers
        assert container.status == "running"


class SlowCriu:
    """A CRIU wrapper that, once `slow()` was called, notes when each request arrived
    (CLOCK_MONOTONIC, the same clock in every process) and sleeps before serving it.

    One process from start to end (it sleeps, then becomes CRIU), so killing it by PID
    leaves nothing behind.
    """

    def __init__(self, directory: Path, criu: str, delay: float) -> None:
        self.path = directory / "criu"
        self.marker = directory / "criu-is-slow"
        self.arrivals = directory / "criu-arrivals"
        self.delay = delay
        self.path.write_text(
            f"#!{sys.executable}\n"
            "import os, sys, time\n"
            f"if os.path.exists({str(self.marker)!r}):\n"
            f"    with open({str(self.arrivals)!r}, 'a') as log:\n"
            "        log.write(f'{time.monotonic()}\\n')\n"
            f"    time.sleep({delay})\n"
            f"os.execv({criu!r}, [{criu!r}, *sys.argv[1:]])\n"
        )
        self.path.chmod(0o755)

    def slow(self) -> None:
        self.marker.touch()

    def fast(self) -> None:
        self.marker.unlink(missing_ok=True)

    def arrived(self) -> list[float]:
        if not self.arrivals.exists():
            return []
        return sorted(float(line) for line in self.arrivals.read_text().split())


async def test_checkpoints_of_different_containers_run_at_once_and_others_are_served(
    tmp_path: Path, criu_path: str
) -> None:
    criu = SlowCriu(tmp_path, criu_path, delay=2.0)
    bundles = {name: make_process_bundle(tmp_path / name) for name in ("c1", "c2", "c3")}
    outputs = {name: CounterOutput(tmp_path / f"{name}.out") for name in ("c1", "c2")}
    async with (
        supervisor.launch(tmp_path / "state", criu=str(criu.path)) as launched,
        ClientConn(launched.target) as conn,
    ):
        api = APIStub(conn)
        for name, output in outputs.items():
            await api.CreateContainer(create_request(bundles[name], output.path, name))
        for output in outputs.values():
            await output.wait_for(3)
        live: list[tuple[str, str, float]] = []
        finished: dict[str, float] = {}

        async def follow(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with api.Events(api_pb2.EventsRequest()) as stream:
                task_status.started()
                async for event in stream:
                    live.append((event.type, event.id, trio.current_time()))

        async def checkpoint(container_id: str, name: str) -> None:
            await api.CreateCheckpoint(checkpoint_request(name, container_id, exit=False))
            finished[f"{container_id}/{name}"] = trio.current_time()

        criu.slow()
        async with trio.open_nursery() as nursery:
            await nursery.start(follow)
            nursery.start_soon(checkpoint, "c1", "first")
            nursery.start_soon(checkpoint, "c2", "first")
            await wait_until(lambda: len(criu.arrived()) == 2)
            assert not finished, "the second dump only began after the first had ended"
            # Same container: must wait for the first dump of c1 to end.
            nursery.start_soon(checkpoint, "c1", "second")
            # Both dumps are inside CRIU now; other calls must not wait for them.
            state = await api.State(api_pb2.StateRequest())
            assert {c.id: c.status for c in state.containers} == {"c1": "running", "c2": "running"}
            await api.CreateContainer(create_request(bundles["c3"], tmp_path / "c3.out", "c3"))
            assert not finished, "State and CreateContainer waited for a dump"
            await wait_until(lambda: len(finished) == 3, timeout=20)
            nursery.cancel_scope.cancel()
        criu.fast()
    first, _, third = criu.arrived()
    assert third - first >= criu.delay, "two checkpoints of one container overlapped"
    c3_started = next(at for kind, name, at in live if (kind, name) == ("start-container", "c3"))
    assert c3_started < min(finished.values()), "a live event waited for a dump"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry))
    return found


async def test_a_runtime_killed_during_a_dump_recovers_with_nothing_half_written(
    tmp_path: Path, criu_path: str
) -> None:
    criu = SlowCriu(tmp_path, criu_path, delay=5)
    bundle = make_process_bundle(tmp_path / "bundle")
    # A task that writes nothing outlives the runtime (the counter dies of a broken pipe).
    quiet_bundle = make_process_bundle(
        tmp_path / "quiet", args=[sys.executable, "-c", "import time; time.sleep(60)"]
    )
    output = CounterOutput(tmp_path / "counter.out")
    state = tmp_path / "state"
    checkpoints = bundle / "checkpoints"
    quiet = 0
    try:
        async with (
            supervisor.launch(state, criu=str(criu.path)) as first,
            ClientConn(first.target) as conn,
        ):
            api = APIStub(conn)
            created = await api.CreateContainer(create_request(bundle, output.path))
            task = created.container.processes[0].systemPid
            created = await api.CreateContainer(
                create_request(quiet_bundle, tmp_path / "quiet.out", "quiet")
            )
            quiet = created.container.processes[0].systemPid
            await output.wait_for(3)
            criu.slow()
            outcome: list[StatusCode] = []

            async def checkpoint() -> None:
                try:
                    await api.CreateCheckpoint(checkpoint_request("cp1", exit=True))
                except RpcError as error:
                    outcome.append(error.code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(checkpoint)
                await wait_until(
                    lambda: checkpoints.exists() and os.listdir(checkpoints), interval=0.005
                )
                await trio.sleep(0.1)  # now inside the (slow) CRIU
                # The CRIU under way (the slow wrapper), not the containers' tasks.
                helpers = [pid for pid in children_of(first.pid) if pid not in (task, quiet)]
                os.kill(first.pid, signal.SIGKILL)
                await first.process.wait()
            for pid in [*helpers, task]:
                if pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
        assert outcome == [StatusCode.UNAVAILABLE]
        (leftover,) = os.listdir(checkpoints)
        assert leftover.startswith(".cp1.partial-"), "the crash test did not crash mid-dump"
        assert os.listdir(state / "journal")
        assert pid_alive(quiet)

        criu.fast()
        async with supervisor.launch(state, criu=str(criu.path)) as second:
            assert os.listdir(checkpoints) == [], "recovery must remove the half-made checkpoint"
            assert os.listdir(state / "journal") == []
            async with ClientConn(second.target) as conn:
                api = APIStub(conn)
                assert await checkpoint_names(api) == []
                (container,) = (await api.State(api_pb2.StateRequest(id="c1"))).containers
                assert container.status == "stopped"
                assert ("exit", "c1", 255) in await stored_events(api, "c1")
                # The task that survived is adopted: still running, and still ours to stop.
                (adopted,) = (await api.State(api_pb2.StateRequest(id="quiet"))).containers
                assert adopted.status == "running"
                assert adopted.processes[0].systemPid == quiet
                await api.Signal(api_pb2.SignalRequest(id="quiet", signal=signal.SIGTERM))
                await wait_until_stopped(api, "quiet")
                assert not pid_alive(quiet)
                # The same id and the same checkpoint name work again.
                await api.CreateContainer(create_request(bundle, output.path))
                await output.wait_for_more(3)
                await api.CreateCheckpoint(checkpoint_request("cp1", exit=True))
                assert await checkpoint_names(api) == ["cp1"]
    finally:
        if quiet and pid_alive(quiet):
            os.kill(quiet, signal.SIGKILL)
