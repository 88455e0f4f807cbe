"""`cryo demo`: cryo's main job, end to end, as a Docker user does it.

    docker CLI ──HTTP/1.1──▶ cryo daemon ──gRPC /types.API/CreateCheckpoint──▶ runtime ──▶ CRIU

1. start `cryo daemon` on a private socket and data root (it starts and supervises the
   runtime), with its gRPC calls traced;
2. `docker run -d` a busybox container (runc) that counts 0, 1, 2, …;
3. `docker checkpoint create counter cp1`: the daemon validates the request as Docker 17
   did and calls the runtime's CreateCheckpoint, which dumps the container with CRIU
   and stops it;
4. `docker checkpoint ls`, then `docker start --checkpoint cp1 counter`, and check with
   `docker logs` that the counter goes on from the number after its last one;
5. `docker checkpoint rm`, `docker rm -f`, stop the daemon; then show the
   CreateCheckpoint call as both ends traced it (the daemon's client, the runtime's
   server: each writes its own `CRYO_TRACE` file), step by step and frame by frame.

Owns: the story and its checks. Talks to the daemon only through the docker CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

from daemon import server
from daemon.bundles import SHELL_COUNTER
from daemon.demo import DemoFailed, Story
from wire.trace import TraceEvent, installed_tracer
from wire.trace_env import child_destination
from wire.tracing import read_json_lines, render_terminal

CONTAINER = "counter"
CHECKPOINT = "cp1"
TRACED_METHOD = "/types.API/CreateCheckpoint"


class DockerDemo:
    """The daemon process, and the docker CLI pointed at it."""

    def __init__(self, work: Path, story: Story) -> None:
        self.work = work
        self.story = story
        self.socket = work / "docker.sock"
        self.trace_file = work / "daemon-trace.jsonl"
        self.log = work / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_seen = 0  # bytes of the daemon's log already looked at
        docker = shutil.which("docker")
        if docker is None:
            raise DemoFailed("the docker CLI is not on this machine's PATH")
        self.docker_path = docker

    def start_daemon(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                server.command_line(f"unix://{self.socket}", self.work / "root"),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server.child_environment(CRYO_TRACE=str(self.trace_file)),
            )
        deadline = time.monotonic() + 60
        while self.docker("version", "--format", "{{.Server.Version}}", check=False).returncode:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed(f"the daemon did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop_daemon(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.docker_path, "-H", f"unix://{self.socket}", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DOCKER_CONFIG": str(self.work / "docker-config")},
        )
        if check and done.returncode != 0:
            raise DemoFailed(f"docker {' '.join(args)}: {done.stderr.strip()}\n{self.log_tail()}")
        return done

    def say_docker(self, *args: str) -> str:
        """Run a docker command, showing it, the HTTP requests it made of the daemon
        (from the daemon's log), and what it printed."""
        self.story.say("$ docker " + " ".join(_quoted(a) for a in args))
        self.new_requests()  # the demo's own checks in between are not this command's
        out = self.docker(*args).stdout.rstrip("\n")
        for request in self.new_requests():
            self.story.detail(f"HTTP {request}")
        for line in out.splitlines()[:8]:
            self.story.detail(line)
        return out

    def new_requests(self) -> list[str]:
        """API requests the daemon logged since the last look, but the CLI's pings."""
        try:
            with self.log.open("rb") as f:
                f.seek(self._log_seen)
                data = f.read()
        except OSError:
            return []
        self._log_seen += len(data)
        marker = "cryo daemon: api: "
        lines = data.decode(errors="replace").splitlines()
        return [
            line.removeprefix(marker)
            for line in lines
            if line.startswith(marker) and " /_ping " not in line and "/_ping " not in line
        ]

    def numbers(self) -> list[int]:
        out = self.docker("logs", CONTAINER).stdout
        return [int(line) for line in out.splitlines() if line.strip().isdigit()]

    def wait_for_numbers(self, at_least: int, timeout: float = 30) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(numbers := self.numbers()) < at_least:
            if time.monotonic() > deadline:
                raise DemoFailed(f"the counter wrote {len(numbers)} numbers, expected {at_least}")
            time.sleep(0.05)
        return numbers

    def log_tail(self) -> str:
        try:
            return "daemon log:\n" + "\n".join(self.log.read_text().splitlines()[-20:])
        except OSError:
            return ""

    def traced_call(self) -> list[TraceEvent]:
        """The daemon's CreateCheckpoint call, both sides: the daemon's client events
        and the runtime's server events (its trace file; the call id is shared)."""
        if not self.trace_file.exists():
            raise DemoFailed("the daemon wrote no trace")
        events = list(read_json_lines(self.trace_file.read_text().splitlines()))
        runtime_file = Path(child_destination(str(self.trace_file), "runtime"))
        if runtime_file.exists():
            events += read_json_lines(runtime_file.read_text().splitlines())
        everywhere = installed_tracer()
        if everywhere is not None:  # CRYO_TRACE for `cryo demo` itself gets them too
            for event in events:
                everywhere.emit(event)
        calls = {
            e.call_id
            for e in events
            if e.kind == "step" and e.side == "client" and e.attrs.get("method") == TRACED_METHOD
        }
        return [e for e in events if e.call_id in calls]


def _quoted(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " ;$()<>|&") else arg


def run_docker_demo(out: TextIO, *, color: bool = False) -> None:
    """The whole story; raises `DemoFailed` if any step goes wrong."""
    story = Story(out)
    work = Path(tempfile.mkdtemp(prefix="cryo-demo-"))
    demo = DockerDemo(work, story)
    try:
        demo.start_daemon()
        version = demo.docker(
            "version", "--format", "{{.Server.Version}} (Engine API {{.Server.APIVersion}})"
        ).stdout.strip()
        story.say(f"cryo daemon {version} started on {demo.socket}; it runs the runtime")
        demo.say_docker("run", "-d", "--name", CONTAINER, "busybox", "sh", "-c", SHELL_COUNTER)
        before = demo.wait_for_numbers(30)
        story.detail(f"docker logs {CONTAINER}: … {before[-3:]}")

        started = time.monotonic()
        demo.say_docker("checkpoint", "create", CONTAINER, CHECKPOINT)
        took = time.monotonic() - started
        story.detail(f"took {took:.3f} s: HTTP → daemon → gRPC CreateCheckpoint → CRIU dump")
        stopped = demo.numbers()
        status = demo.docker("ps", "-a", "--format", "{{.Status}}").stdout.strip()
        story.detail(f"the container: {status}; the counter stopped at {stopped[-1]}")
        time.sleep(0.3)
        if demo.numbers() != stopped:
            raise DemoFailed("the counter kept writing after an exit checkpoint")
        listing = demo.say_docker("checkpoint", "ls", CONTAINER)
        if CHECKPOINT not in listing.split():
            raise DemoFailed(f"docker checkpoint ls does not show {CHECKPOINT}")

        started = time.monotonic()
        demo.say_docker("start", "--checkpoint", CHECKPOINT, CONTAINER)
        story.detail(f"restored in {time.monotonic() - started:.3f} s")
        after = demo.wait_for_numbers(len(stopped) + 20)
        resumed = after[len(stopped) :]
        if after[: len(stopped)] != stopped or resumed[0] != stopped[-1] + 1:
            raise DemoFailed(
                f"the restored counter began at {resumed[0]}, expected {stopped[-1] + 1}"
            )
        story.detail(f"counter after restore: {stopped[-1]} | {resumed[:5]} … (no gap, no repeat)")

        demo.say_docker("checkpoint", "rm", CONTAINER, CHECKPOINT)
        demo.say_docker("rm", "-f", CONTAINER)
        demo.stop_daemon()
        story.say(
            "daemon stopped; the CreateCheckpoint call it made, as the daemon (client) and "
            "the runtime (server) traced it:"
        )
        events = demo.traced_call()
        if not events:
            raise DemoFailed(f"no {TRACED_METHOD} call in the daemon's trace")
        out.write(render_terminal(events, color=color))
        out.write("\n")
    finally:
        demo.stop_daemon()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    color = sys.stdout.isatty()
    try:
        run_docker_demo(sys.stdout, color=color)
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(
        "demo finished: docker checkpoint create and docker start --checkpoint worked through "
        "cryo's daemon, its gRPC stack, the runtime and CRIU"
    )
    return 0
