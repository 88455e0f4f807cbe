"""`cryo demo`: cryo's main job, end to end, on this machine.

What it does, as `docker checkpoint create` did through containerd 0.2:

1. start the runtime (`python -m runtime`) on a private unix socket and wait for its
   health check;
2. create a container running a counter (a `process` container by default, or a runc
   busybox container with `--kind runc`), its stdout appended to a file;
3. checkpoint it with `/types.API/CreateCheckpoint` (exit after the dump, with the
   options libcontainerd sent), showing that call's trace: every grpc-go step and
   every HTTP/2 frame, as the client saw them;
4. list the checkpoint, restore the container from it into the same id, and check
   that the counter goes on from the number after the last one it wrote before;
5. delete the checkpoint, stop the container and the runtime.

Owns: the demo's story and its checks. Reaches the runtime only over gRPC.
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import trio

from daemon import supervisor
from daemon.backend import libcontainerd_checkpoint
from daemon.bundles import make_process_bundle, make_runc_bundle
from proto.types import api_pb2
from proto.types.api_cryo import APIStub
from wire.client import ClientConn
from wire.trace import TraceCollector, TraceFanout, TraceSink, installed_tracer
from wire.tracing import render_terminal

CONTAINER_ID = "demo"
CHECKPOINT_NAME = "cp1"


class DemoFailed(Exception):
    """The demo saw something a working cryo would not do."""


def _numbers(path: Path) -> list[int]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [int(line) for line in text.split("\n")[:-1] if line.strip().isdigit()]


async def _wait_for_numbers(path: Path, at_least: int, timeout: float = 20.0) -> list[int]:
    with trio.move_on_after(timeout):
        while len(numbers := _numbers(path)) < at_least:  # noqa: ASYNC110 -- a file, no event
            await trio.sleep(0.02)
        return numbers
    raise DemoFailed(f"the counter wrote {len(_numbers(path))} numbers, expected {at_least}")


class Story:
    """Numbered steps with their duration, on one output stream."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.step = 0
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        self.step += 1
        self.out.write(f"{self.step:>2}. {text}\n")
        self.out.flush()

    def detail(self, text: str) -> None:
        self.out.write(f"      {text}\n")
        self.out.flush()


async def run_demo(kind: str, out: TextIO, *, color: bool = False) -> None:
    """Run the whole story; raise `DemoFailed` (or `RpcError`) if any step goes wrong."""
    story = Story(out)
    work = Path(tempfile.mkdtemp(prefix="cryo-demo-"))
    try:
        if kind == "runc":
            runc = shutil.which("runc")
            if runc is None:
                raise DemoFailed("runc is not installed (make setup installs it)")
            bundle = make_runc_bundle(work / "bundle", runc)
        else:
            bundle = make_process_bundle(work / "bundle")
        output = work / "counter.out"
        async with supervisor.launch(work / "state", log_file=work / "runtime.log") as rt:
            story.say(f"runtime started (pid {rt.pid}), serving types.API on {rt.target}")
            async with ClientConn(rt.target) as conn:
                api = APIStub(conn)
                version = await api.GetServerVersion(api_pb2.GetServerVersionRequest(), timeout=5)
                story.detail(
                    f"GetServerVersion: {version.major}.{version.minor}.{version.patch}"
                    f" ({version.revision})"
                )
                await _run_story(story, api, rt.target, kind, bundle, output, color)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _run_story(
    story: Story,
    api: APIStub,
    target: str,
    kind: str,
    bundle: Path,
    output: Path,
    color: bool,
) -> None:
    await api.CreateContainer(
        api_pb2.CreateContainerRequest(
            id=CONTAINER_ID,
            bundlePath=str(bundle),
            stdout=str(output),
            stderr=str(output.with_suffix(".err")),
            runtime=kind,
        ),
        timeout=30,
    )
    story.say(f"container {CONTAINER_ID!r} ({kind}) created; it counts 0, 1, 2, … into a file")
    before = await _wait_for_numbers(output, 30)
    story.detail(f"counter so far: … {before[-3:]}")

    # What libcontainerd sent for `docker checkpoint create demo cp1`.
    request = api_pb2.CreateCheckpointRequest(
        id=CONTAINER_ID,
        checkpoint=libcontainerd_checkpoint(CHECKPOINT_NAME, exit=True, runtime=kind),
    )
    collector = TraceCollector()
    everywhere = installed_tracer()  # CRYO_TRACE wants this call too
    sink: TraceSink = collector if everywhere is None else TraceFanout(collector, everywhere)
    started = time.monotonic()
    async with ClientConn(target, tracer=sink) as traced:
        await APIStub(traced).CreateCheckpoint(request, timeout=120)
    took = time.monotonic() - started
    story.say(f"CreateCheckpoint {CHECKPOINT_NAME!r} (exit) done in {took:.3f} s; the call:")
    story.out.write(render_terminal(collector.events, color=color))
    story.out.write("\n")

    stopped = _numbers(output)
    listing = await api.ListCheckpoint(api_pb2.ListCheckpointRequest(id=CONTAINER_ID), timeout=10)
    names = [c.name for c in listing.checkpoints]
    if CHECKPOINT_NAME not in names:
        raise DemoFailed(f"ListCheckpoint does not show {CHECKPOINT_NAME!r}: {names}")
    story.say(f"ListCheckpoint: {names}; the counter stopped at {stopped[-1]}")
    await trio.sleep(0.3)
    if _numbers(output) != stopped:
        raise DemoFailed("the counter kept writing after an exit checkpoint")

    started = time.monotonic()
    await api.CreateContainer(
        api_pb2.CreateContainerRequest(
            id=CONTAINER_ID,
            bundlePath=str(bundle),
            checkpoint=CHECKPOINT_NAME,
            stdout=str(output),
            stderr=str(output.with_suffix(".err")),
            runtime=kind,
        ),
        timeout=120,
    )
    story.say(
        f"restored {CONTAINER_ID!r} from {CHECKPOINT_NAME!r} in {time.monotonic() - started:.3f} s"
    )
    after = await _wait_for_numbers(output, len(stopped) + 20)
    resumed = after[len(stopped) :]
    if resumed[0] != stopped[-1] + 1:
        raise DemoFailed(f"the restored counter began at {resumed[0]}, expected {stopped[-1] + 1}")
    story.detail(f"counter after restore: {stopped[-1]} | {resumed[:5]} … (no gap, no repeat)")

    await api.DeleteCheckpoint(
        api_pb2.DeleteCheckpointRequest(id=CONTAINER_ID, name=CHECKPOINT_NAME), timeout=10
    )
    await api.Signal(
        api_pb2.SignalRequest(id=CONTAINER_ID, pid="init", signal=signal.SIGKILL), timeout=10
    )
    story.say("checkpoint deleted, container killed; stopping the runtime")


def main(kind: str) -> int:
    color = sys.stdout.isatty()
    try:
        trio.run(lambda: run_demo(kind, sys.stdout, color=color))
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print("demo finished: checkpoint and restore through cryo's gRPC stack worked")
    return 0
