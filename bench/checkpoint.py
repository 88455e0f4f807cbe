"""Checkpoint benchmarks C1 and C2: what the runtime adds to CRIU, and what concurrency buys.

    python -m bench.checkpoint [--reps 5] [--containers 8] [--kind runc|process]
                               [--out bench/results/checkpoint-<UTC>.md]

- **C1**: a running counter process (a `process` container) is checkpointed, leaving
  it running, through the daemon's HTTP API (``POST /containers/{id}/checkpoints``, as
  the docker CLI sends it, to a `cryo daemon` started for the run), through the
  runtime's gRPC API (``/types.API/CreateCheckpoint``) and with the bare
  ``criu dump --leave-running`` command line, in rotating order, *reps* times each.
  Reported: the median seconds of each and the overhead over bare CRIU. The runtime's
  figure includes what bare CRIU does not do: the gRPC round trip, recording the task's
  stdio, and flushing the images to disk before the checkpoint is named; the daemon's
  adds an HTTP request, Docker's checks and the per-container lock.
- **C2**: *containers* containers (runc busybox by default) are checkpointed, leaving
  them running, one after another and all at once, alternately, *reps* times each.
  Reported: the median of each total and the speed-up.

Owns: setting the work up (a runtime on a temporary state directory, bundles, counters),
timing it, and writing a Markdown report. Must not: leave anything running (the
runtime stops its containers; checkpoints live in a temporary directory) or run
unbounded (every call has a timeout).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from daemon import server, supervisor
from daemon.bundles import PYTHON_COUNTER
from proto.types import api_pb2
from proto.types.api_cryo import APIStub
from runtime.criu import CriuBinary
from tests.runtime.bundles import CounterOutput, make_process_bundle, make_runc_bundle
from wire.client import ClientConn

CALL_TIMEOUT = 120.0
REPO = Path(__file__).resolve().parent.parent


def _median_and_spread(samples: list[float]) -> tuple[float, float]:
    median = statistics.median(samples)
    return median, (max(samples) - min(samples)) / median if median else 0.0


async def _timed(action: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await action()
    return time.perf_counter() - started


async def _checkpoint(api: APIStub, container_id: str, name: str) -> None:
    request = api_pb2.CreateCheckpointRequest(
        id=container_id, checkpoint=api_pb2.Checkpoint(name=name, exit=False)
    )
    await api.CreateCheckpoint(request, timeout=CALL_TIMEOUT)


async def _delete(api: APIStub, container_id: str, name: str) -> None:
    request = api_pb2.DeleteCheckpointRequest(id=container_id, name=name)
    await api.DeleteCheckpoint(request, timeout=CALL_TIMEOUT)


class DaemonUnderTest:
    """A `cryo daemon` of the run's own, and plain HTTP/1.1 requests to its socket."""

    def __init__(self, work: Path) -> None:
        self.socket = work / "daemon.sock"
        self.log = work / "daemon.log"
        self.root = work / "daemon-root"
        self.process: trio.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                server.command_line(f"unix://{self.socket}", self.root),
                stdout=log,
                stderr=log,
                env=server.child_environment(),
            )
        with trio.fail_after(60):
            while True:
                try:
                    if (await self.request("GET", "/_ping"))[0] == 200:
                        return
                except OSError:
                    pass
                if self.process.returncode is not None:
                    raise RuntimeError(f"the daemon exited: {self.log.read_text()[-2000:]}")
                await trio.sleep(0.1)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            with trio.move_on_after(60):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, bytes]:
        """One request on a fresh connection, as the docker CLI makes them."""
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} /v1.41{path} HTTP/1.1\r\nHost: docker\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        stream = await trio.open_unix_socket(str(self.socket))
        async with stream:
            await stream.send_all(head + data)
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
        head_bytes, _, body_bytes = bytes(received).partition(b"\r\n\r\n")
        status = int(head_bytes.split(b" ", 2)[1])
        if status >= 400:
            raise RuntimeError(f"{method} {path}: {status} {body_bytes!r}")
        return status, body_bytes


async def measure_c1(
    api: APIStub, work: Path, criu: str, reps: int, daemon: DaemonUnderTest
) -> dict[str, list[float]]:
    bundle = make_process_bundle(work / "c1-bundle")
    output = CounterOutput(work / "c1.out")
    created = await api.CreateContainer(
        api_pb2.CreateContainerRequest(
            id="c1", bundlePath=str(bundle), runtime="process", stdout=str(output.path)
        ),
        timeout=CALL_TIMEOUT,
    )
    pid = created.container.processes[0].systemPid
    await output.wait_for(5)
    samples: dict[str, list[float]] = {"daemon": [], "runtime": [], "bare": []}
    counter = [sys.executable, "-c", PYTHON_COUNTER]
    _, answer = await daemon.request(
        "POST",
        "/containers/create?name=c1",
        {"Image": "busybox", "Cmd": counter, "HostConfig": {"Runtime": "process"}},
    )
    daemon_id = json.loads(answer)["Id"]
    await daemon.request("POST", f"/containers/{daemon_id}/start")
    await trio.sleep(0.3)

    async def through_daemon(name: str) -> None:
        await daemon.request(
            "POST", f"/containers/{daemon_id}/checkpoints", {"CheckpointID": name, "Exit": False}
        )

    async def delete_through_daemon(name: str) -> None:
        await daemon.request("DELETE", f"/containers/{daemon_id}/checkpoints/{name}")

    async def bare_dump(rep: int) -> None:
        images = work / f"bare-{rep}"
        images.mkdir()
        # The same log level the runtime asks for (4), so both write the same log.
        await trio.run_process(
            [
                criu,
                "dump",
                "-t",
                str(pid),
                "-D",
                str(images),
                "--leave-running",
                "-o",
                "dump.log",
                "-v4",
            ],
            capture_stdout=True,
            capture_stderr=True,
        )
        await trio.to_thread.run_sync(shutil.rmtree, images)

    # One unmeasured round of each first: page cache, imports, CRIU's own warm-up.
    await _checkpoint(api, "c1", "warm-up")
    await _delete(api, "c1", "warm-up")
    await through_daemon("warm-up")
    await delete_through_daemon("warm-up")
    await bare_dump(0)
    paths = ["daemon", "runtime", "bare"]
    for rep in range(1, reps + 1):
        k = rep % len(paths)
        for which in paths[k:] + paths[:k]:
            name = f"rep-{rep}"
            if which == "daemon":
                samples["daemon"].append(await _timed(partial(through_daemon, name)))
                await delete_through_daemon(name)
            elif which == "runtime":
                samples["runtime"].append(await _timed(partial(_checkpoint, api, "c1", name)))
                await _delete(api, "c1", name)
            else:
                samples["bare"].append(await _timed(partial(bare_dump, rep)))
    await daemon.request("DELETE", f"/containers/{daemon_id}?force=1")
    return samples


async def measure_c2(
    api: APIStub, work: Path, kind: str, count: int, reps: int, runc: str | None
) -> dict[str, list[float]]:
    ids = [f"c2-{number}" for number in range(count)]
    for container_id in ids:
        bundle_dir = work / f"{container_id}-bundle"
        if kind == "runc":
            assert runc is not None
            bundle = make_runc_bundle(bundle_dir, runc)
        else:
            bundle = make_process_bundle(bundle_dir)
        await api.CreateContainer(
            api_pb2.CreateContainerRequest(
                id=container_id,
                bundlePath=str(bundle),
                runtime=kind,
                stdout=str(work / f"{container_id}.out"),
            ),
            timeout=CALL_TIMEOUT,
        )
    for container_id in ids:
        await CounterOutput(work / f"{container_id}.out").wait_for(3)

    async def one_after_another(name: str) -> None:
        for container_id in ids:
            await _checkpoint(api, container_id, name)

    async def all_at_once(name: str) -> None:
        async with trio.open_nursery() as nursery:
            for container_id in ids:
                nursery.start_soon(_checkpoint, api, container_id, name)

    async def clean(name: str) -> None:
        for container_id in ids:
            await _delete(api, container_id, name)

    await all_at_once("warm-up")
    await clean("warm-up")
    samples: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    for rep in range(1, reps + 1):
        order = ["sequential", "concurrent"] if rep % 2 else ["concurrent", "sequential"]
        for which in order:
            name = f"{which}-{rep}"
            run = one_after_another if which == "sequential" else all_at_once
            samples[which].append(await _timed(partial(run, name)))
            await clean(name)
    return samples


def render(
    c1: dict[str, list[float]], c2: dict[str, list[float]], kind: str, count: int, reps: int
) -> str:
    daemon_s, daemon_spread = _median_and_spread(c1["daemon"])
    runtime_s, runtime_spread = _median_and_spread(c1["runtime"])
    bare_s, bare_spread = _median_and_spread(c1["bare"])
    sequential_s, sequential_spread = _median_and_spread(c2["sequential"])
    concurrent_s, concurrent_spread = _median_and_spread(c2["concurrent"])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Checkpoint benchmarks C1 and C2 ({stamp})",
        "",
        f"Medians of {reps} interleaved repetitions after one unmeasured warm-up; spread is "
        "(max - min) / median. Machine: "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}.",
        "",
        "## C1: checkpoint one running counter process (leave running)",
        "",
        "| path | seconds | spread | over bare CRIU |",
        "|---|---|---|---|",
        f"| daemon HTTP `POST /containers/{{id}}/checkpoints` | {daemon_s:.3f} | "
        f"{daemon_spread:.0%} | {daemon_s / bare_s:.2f}x |",
        f"| runtime gRPC `CreateCheckpoint` | {runtime_s:.3f} | {runtime_spread:.0%} | "
        f"{runtime_s / bare_s:.2f}x |",
        f"| bare `criu dump --leave-running` | {bare_s:.3f} | {bare_spread:.0%} | 1.00x |",
        "",
        f"Daemon over runtime: {daemon_s - runtime_s:+.3f} s; runtime over bare CRIU: "
        f"{runtime_s - bare_s:+.3f} s. The runtime also records the task's stdio, writes "
        "config.json and flushes every image to disk before naming the checkpoint; bare "
        "CRIU does none of that.",
        "",
        f"## C2: {count} {kind} containers (leave running)",
        "",
        "| order | seconds for all | spread |",
        "|---|---|---|",
        f"| one after another | {sequential_s:.3f} | {sequential_spread:.0%} |",
        f"| all at once | {concurrent_s:.3f} | {concurrent_spread:.0%} |",
        "",
        f"Speed-up from checkpointing at once: {sequential_s / concurrent_s:.2f}x "
        "(containerd 0.2 ran every checkpoint through one loop, so it had none).",
        "",
    ]
    return "\n".join(lines)


async def run(options: argparse.Namespace) -> str:
    criu = (await CriuBinary.locate()).path
    runc = shutil.which("runc")
    if options.kind == "runc" and runc is None:
        raise SystemExit("C2 with runc containers needs runc; use --kind process")
    with tempfile.TemporaryDirectory(prefix="cryo-bench-checkpoint-") as scratch:
        work = Path(scratch)
        daemon = DaemonUnderTest(work)
        async with (
            supervisor.launch(work / "state", runc=runc, log_file=work / "runtime.log") as launched,
            ClientConn(launched.target) as conn,
        ):
            api = APIStub(conn)
            try:
                with trio.fail_after(options.time_limit):
                    await daemon.start()
                    c1 = await measure_c1(api, work, criu, options.reps, daemon)
                    await daemon.stop()
                    c2 = await measure_c2(
                        api, work, options.kind, options.containers, options.reps, runc
                    )
            finally:
                with trio.CancelScope(shield=True):
                    await daemon.stop()
    return render(c1, c2, options.kind, options.containers, options.reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.checkpoint", description=__doc__)
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--containers", type=int, default=8, help="containers in C2")
    parser.add_argument("--kind", choices=("runc", "process"), default="runc")
    parser.add_argument(
        "--time-limit", type=float, default=600.0, help="seconds before the run gives up"
    )
    parser.add_argument("--out", type=Path, help="also write the report here")
    options = parser.parse_args(argv)
    if options.reps < 1 or options.containers < 1:
        parser.error("--reps and --containers must be at least 1")
    if os.geteuid() != 0:
        parser.error("checkpoints need root")
    report = trio.run(run, options)
    print(report)
    out = options.out
    if out is None:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        out = REPO / "bench" / "results" / f"checkpoint-{stamp}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
