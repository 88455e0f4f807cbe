"""The real docker CLI against `cryo daemon`: containers, and checkpoints through
`/types.API/CreateCheckpoint` down to CRIU, as `docker checkpoint create` did with
Docker 17."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon import server
from runtime.criu import CriuBinary, CriuNotFound

ON_CI = os.environ.get("CI") == "true"


def require_tools() -> None:
    """docker, runc, busybox-static and CRIU, as root: skipped on a developer machine
    without them, a failure on CI (the set-up script provides them all)."""
    missing = [tool for tool in ("docker", "runc", "busybox") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    try:
        trio.run(CriuBinary.locate)
    except CriuNotFound as error:
        missing.append(f"CRIU ({error.reason})")
    if missing:
        reason = "needs " + ", ".join(missing)
        if ON_CI:
            pytest.fail(f"{reason}; CI must provide it (scripts/setup-system.sh)")
        pytest.skip(reason)


COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done"
PROCESS_COUNTER = (
    "import os, time\n"
    "i = 0\n"
    "while True:\n"
    "    os.write(1, b'%d\\n' % i)\n"
    "    i += 1\n"
    "    time.sleep(0.01)\n"
)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    host: str
    root: Path
    config: Path
    log: Path

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker", "-H", self.host, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DOCKER_CONFIG": str(self.config)},
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}\n"
                f"daemon log:\n{self.log.read_text()[-3000:]}"
            )
        return done

    def numbers(self, container: str) -> list[int]:
        out = self.docker("logs", container).stdout
        return [int(line) for line in out.splitlines() if line.strip().isdigit()]

    def wait_for_numbers(self, container: str, at_least: int, timeout: float = 30) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            numbers = self.numbers(container)
            if len(numbers) >= at_least:
                return numbers
            time.sleep(0.05)
        raise AssertionError(
            f"{container} wrote {len(self.numbers(container))} numbers, not {at_least}"
        )

    def inspect(self, container: str) -> dict[str, Any]:
        data = json.loads(self.docker("inspect", container).stdout)
        assert isinstance(data, list) and len(data) == 1
        return data[0]  # type: ignore[no-any-return]


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(str(path))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: cryo\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_daemon(work: Path, host: str | None = None) -> Daemon:
    """`cryo daemon` on *host* (a unix socket in *work* by default), once it answers."""
    sock = work / "docker.sock"
    host = host or f"unix://{sock}"
    log = work / "daemon.log"
    process = subprocess.Popen(
        server.command_line(host, work / "root"),
        env=server.child_environment(),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    daemon = Daemon(process, host, work / "root", work / "docker-config", log)
    deadline = time.monotonic() + 60
    while not (_answers(sock) if host.startswith("unix://") else _answers_cli(daemon)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the daemon did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return daemon


def _answers_cli(daemon: Daemon) -> bool:
    return daemon.docker("version", check=False).returncode == 0


def stop_daemon(daemon: Daemon) -> None:
    daemon.process.send_signal(signal.SIGTERM)
    try:
        daemon.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        daemon.process.kill()
        daemon.process.wait()
        raise AssertionError("the daemon did not stop on SIGTERM") from None


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    require_tools()
    work = tmp_path_factory.mktemp("cryo-daemon")
    running = start_daemon(work)
    try:
        yield running
    finally:
        stop_daemon(running)
        assert running.process.returncode == 0, running.log.read_text()[-3000:]


def test_the_cli_sees_an_experimental_engine_and_its_checkpoint_commands(daemon: Daemon) -> None:
    version = daemon.docker(
        "version", "--format", "{{.Server.APIVersion}} {{.Server.Experimental}}"
    )
    assert version.stdout.split() == ["1.41", "true"]
    helped = daemon.docker("checkpoint", "--help")
    assert "create" in helped.stdout and "Create a checkpoint" in helped.stdout


def test_a_runc_container_is_checkpointed_listed_restored_and_removed(daemon: Daemon) -> None:
    created = daemon.docker("create", "--name", "counter", "busybox", "sh", "-c", COUNTER)
    container_id = created.stdout.strip()
    assert len(container_id) == 64
    daemon.docker("start", "counter")
    before = daemon.wait_for_numbers("counter", 30)
    assert before[:3] == [0, 1, 2]
    assert daemon.inspect("counter")["State"]["Running"] is True

    made = daemon.docker("checkpoint", "create", "counter", "cp1")
    assert made.stdout.strip() == "cp1"
    state = daemon.inspect("counter")["State"]
    assert state["Running"] is False
    stopped = daemon.numbers("counter")
    time.sleep(0.3)
    assert daemon.numbers("counter") == stopped, "the counter ran on after an exit checkpoint"
    listing = daemon.docker("checkpoint", "ls", "counter").stdout.split()
    assert listing == ["CHECKPOINT", "NAME", "cp1"]
    images = daemon.root / "containers" / container_id / "checkpoints" / "cp1"
    assert (images / "config.json").is_file() and list(images.glob("*.img"))

    daemon.docker("start", "--checkpoint", "cp1", "counter")
    after = daemon.wait_for_numbers("counter", len(stopped) + 20)
    assert after[len(stopped)] == stopped[-1] + 1, "the restored counter did not go on"
    assert after[: len(stopped)] == stopped

    daemon.docker("checkpoint", "create", "--leave-running", "counter", "cp2")
    assert daemon.inspect("counter")["State"]["Running"] is True
    daemon.docker("checkpoint", "rm", "counter", "cp1")
    assert daemon.docker("checkpoint", "ls", "counter").stdout.split()[2:] == ["cp2"]

    ps = daemon.docker("ps", "--format", "{{.Names}} {{.Status}}").stdout
    assert ps.startswith("counter Up")
    daemon.docker("rm", "-f", "counter")
    assert "counter" not in daemon.docker("ps", "-a", "--format", "{{.Names}}").stdout
    assert not (daemon.root / "containers" / container_id).exists()


def test_checkpoint_errors_read_as_docker_wrote_them(daemon: Daemon) -> None:
    daemon.docker("create", "--name", "idle", "busybox", "sleep", "1000")
    missing = daemon.docker("checkpoint", "create", "nosuch", "cp1", check=False)
    assert missing.returncode != 0 and "No such container: nosuch" in missing.stderr
    not_running = daemon.docker("checkpoint", "create", "idle", "cp1", check=False)
    assert not_running.returncode != 0 and "Container idle not running" in not_running.stderr
    daemon.docker("start", "idle")
    for bad in ("../escape", ".hidden", "a/b"):
        refused = daemon.docker("checkpoint", "create", "idle", bad, check=False)
        assert refused.returncode != 0
        assert f"Invalid checkpoint ID ({bad})" in refused.stderr
    daemon.docker("checkpoint", "create", "--leave-running", "idle", "once")
    again = daemon.docker("checkpoint", "create", "--leave-running", "idle", "once", check=False)
    assert again.returncode != 0
    assert "Cannot checkpoint container idle" in again.stderr and "exists" in again.stderr
    relative = daemon.docker(
        "checkpoint", "create", "--checkpoint-dir", "rel/dir", "idle", "x", check=False
    )
    assert relative.returncode != 0 and "absolute" in relative.stderr
    in_use = daemon.docker("rm", "idle", check=False)
    assert in_use.returncode != 0 and "You cannot remove a running container" in in_use.stderr
    daemon.docker("rm", "-f", "idle")


def test_a_custom_checkpoint_dir_and_the_process_runtime(daemon: Daemon, tmp_path: Path) -> None:
    daemon.docker(
        "create",
        "--name",
        "host-counter",
        "--runtime",
        "process",
        "busybox",
        sys.executable,
        "-c",
        PROCESS_COUNTER,
    )
    daemon.docker("start", "host-counter")
    before = daemon.wait_for_numbers("host-counter", 20)
    assert before[:2] == [0, 1]
    store = tmp_path / "checkpoints"
    daemon.docker("checkpoint", "create", "--checkpoint-dir", str(store), "host-counter", "c1")
    assert (store / "c1" / "config.json").is_file()
    listed = daemon.docker("checkpoint", "ls", "--checkpoint-dir", str(store), "host-counter")
    assert listed.stdout.split()[2:] == ["c1"]
    stopped = daemon.numbers("host-counter")
    daemon.docker("start", "--checkpoint", "c1", "--checkpoint-dir", str(store), "host-counter")
    after = daemon.wait_for_numbers("host-counter", len(stopped) + 10)
    assert after[len(stopped)] == stopped[-1] + 1
    daemon.docker("stop", "-t", "5", "host-counter")
    assert daemon.inspect("host-counter")["State"]["Running"] is False
    daemon.docker("rm", "host-counter")


def test_the_daemon_restarts_a_runtime_that_died_and_keeps_its_records(
    tmp_path: Path,
) -> None:
    require_tools()
    first = start_daemon(tmp_path)
    try:
        first.docker("create", "--name", "kept", "busybox", "sleep", "1000")
        first.docker("start", "kept")
        runtime_pid = _runtime_pid(first)
        os.kill(runtime_pid, signal.SIGKILL)  # a child of the daemon this test started
        deadline = time.monotonic() + 30
        while "runtime restarted" not in first.log.read_text():
            assert time.monotonic() < deadline, first.log.read_text()[-3000:]
            time.sleep(0.1)
        first.docker("create", "--name", "after", "busybox", "true")
        first.docker("start", "after")
        assert first.docker("wait", "after").stdout.strip() == "0"
    finally:
        stop_daemon(first)
    second = start_daemon(tmp_path)
    try:
        names = second.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert sorted(names) == ["after", "kept"]
        assert second.inspect("kept")["State"]["Running"] is False
        second.docker("rm", "kept", "after")
    finally:
        stop_daemon(second)


def _runtime_pid(daemon: Daemon) -> int:
    """The runtime's pid, as the daemon logged it when it started it."""
    found = re.findall(r"runtime (?:re)?started \(pid (\d+)\)", daemon.log.read_text())
    assert found, daemon.log.read_text()
    pid = int(found[-1])
    assert Path(f"/proc/{pid}/status").read_text().count(f"PPid:\t{daemon.process.pid}\n") == 1
    return pid


def test_docker_run_shows_output_returns_the_exit_code_and_rm_removes(daemon: Daemon) -> None:
    ran = daemon.docker(
        "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 4", check=False
    )
    assert ran.returncode == 4
    assert ran.stdout == "out\n" and ran.stderr == "err\n"
    assert daemon.docker("ps", "-a", "-q").stdout == ""
    kept = daemon.docker("run", "--name", "kept-output", "busybox", "echo", "two")
    assert kept.stdout == "two\n"
    assert daemon.inspect("kept-output")["State"]["ExitCode"] == 0
    assert daemon.docker("logs", "kept-output").stdout == "two\n"
    daemon.docker("rm", "kept-output")
    with_stdin = daemon.docker("run", "-i", "--rm", "busybox", "cat", check=False)
    assert with_stdin.returncode != 0 and "no stdin" in with_stdin.stderr


def test_events_record_the_lifecycle_and_the_checkpoint(daemon: Daemon) -> None:
    since = str(int(time.time()) - 1)
    daemon.docker("run", "-d", "--name", "evented", "busybox", "sleep", "1000")
    daemon.docker("checkpoint", "create", "evented", "ev1")
    daemon.docker("rm", "evented")
    until = str(int(time.time()) + 1)
    out = daemon.docker(
        "events",
        "--since",
        since,
        "--until",
        until,
        "--filter",
        "container=evented",
        "--format",
        "{{.Action}}",
    ).stdout.split()
    assert out == ["create", "start", "checkpoint", "die", "destroy"]


def test_an_rm_container_checkpointed_with_exit_stays_to_be_restored(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--rm", "--name", "keep-me", "busybox", "sh", "-c", COUNTER)
    daemon.wait_for_numbers("keep-me", 10)
    daemon.docker("checkpoint", "create", "keep-me", "k1")
    time.sleep(0.3)
    assert daemon.inspect("keep-me")["State"]["Running"] is False
    typo = daemon.docker("start", "--checkpoint", "k2", "keep-me", check=False)
    assert typo.returncode != 0 and "no checkpoint 'k2'" in typo.stderr
    time.sleep(0.3)  # a failed restore must not count as the exit --rm waits for
    assert daemon.inspect("keep-me")["State"]["ExitCode"] == 137
    stopped = daemon.numbers("keep-me")
    daemon.docker("start", "--checkpoint", "k1", "keep-me")
    assert daemon.wait_for_numbers("keep-me", len(stopped) + 5)[len(stopped)] == stopped[-1] + 1
    daemon.docker("kill", "keep-me")
    assert daemon.docker("wait", "keep-me", check=False).returncode in (0, 1)
    deadline = time.monotonic() + 10
    while "keep-me" in daemon.docker("ps", "-a", "--format", "{{.Names}}").stdout:
        assert time.monotonic() < deadline, "--rm did not remove the container after it died"
        time.sleep(0.1)


def test_the_api_can_also_listen_on_loopback_tcp(tmp_path: Path) -> None:
    require_tools()
    with socket.socket() as probe:  # a free port, released for the daemon to take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = start_daemon(tmp_path, f"tcp://127.0.0.1:{port}")
    try:
        assert daemon.docker("run", "--rm", "busybox", "echo", "over tcp").stdout == "over tcp\n"
    finally:
        stop_daemon(daemon)


def test_env_workdir_and_a_command_that_cannot_start(daemon: Daemon) -> None:
    ran = daemon.docker(
        "run",
        "--rm",
        "-e",
        "GREETING=hi",
        "-e",
        "PATH=/bin",
        "-w",
        "/tmp",
        "busybox",
        "sh",
        "-c",
        "echo $GREETING $PATH; pwd",
    )
    assert ran.stdout == "hi /bin\n/tmp\n"
    kept_path = daemon.docker("run", "--rm", "-e", "ONLY=1", "busybox", "sh", "-c", "echo $PATH")
    assert "/bin" in kept_path.stdout  # the image's PATH stays when only others are given
    failed = daemon.docker("run", "--rm", "busybox", "no-such-command", check=False, timeout=30)
    assert failed.returncode == 127
    assert "executable file not found" in failed.stderr
    assert daemon.docker("ps", "-a", "-q").stdout == ""  # --rm removed it
    daemon.docker("create", "--name", "cannot-run", "busybox", "no-such-command")
    assert daemon.docker("start", "cannot-run", check=False).returncode != 0
    state = daemon.inspect("cannot-run")["State"]
    assert state["ExitCode"] == 127 and "no-such-command" in state["Error"]
    assert state["Running"] is False
    daemon.docker("rm", "cannot-run")


def _raw(daemon: Daemon, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """One request straight to the daemon's socket: what a client other than the CLI sends."""
    sock_path = daemon.host.removeprefix("unix://")
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(sock_path)
        s.sendall(head + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    payload = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(payload) if payload.strip() else {}


def test_bad_requests_get_docker_shaped_errors(daemon: Daemon) -> None:
    status, answer = _raw(daemon, "POST", "/v1.41/containers/create", b"{not json")
    assert status == 400 and "invalid JSON" in answer["message"]
    status, answer = _raw(daemon, "POST", "/v1.41/containers/create", b'{"Image": "nosuch"}')
    assert status == 404 and answer["message"] == "No such image: nosuch:latest"
    status, answer = _raw(daemon, "POST", "/v1.41/containers/create", b'{"Image": 7}')
    assert status == 400 and "Image" in answer["message"]
    status, answer = _raw(
        daemon, "POST", "/v1.41/containers/create", b'{"Image": "busybox", "Cmd": "x", "Env": [1]}'
    )
    assert status == 400 and "Env" in answer["message"]
    status, answer = _raw(daemon, "GET", "/v1.99/version")
    assert status == 400 and "too new" in answer["message"]
    status, answer = _raw(daemon, "GET", "/v1.41/no/such/route")
    assert status == 404 and "page not found" in answer["message"]
    status, answer = _raw(daemon, "PUT", "/v1.41/containers/json")
    assert status == 405
    status, answer = _raw(
        daemon, "POST", "/containers/nosuch/checkpoints", b'{"CheckpointID": "a1"}'
    )
    assert status == 404 and answer["message"] == "No such container: nosuch"
    daemon.docker("run", "-d", "--name", "raw-target", "busybox", "sleep", "1000")
    for body in (b"[]", b'{"CheckpointID": 5}', b'{"CheckpointID": "ok1", "Exit": "yes"}'):
        status, answer = _raw(daemon, "POST", "/containers/raw-target/checkpoints", body)
        assert status == 400, (body, answer)
    status, answer = _raw(
        daemon, "POST", "/containers/raw-target/checkpoints", b'{"CheckpointID": "../../etc"}'
    )
    assert status == 400 and "Invalid checkpoint ID (../../etc)" in answer["message"]
    status, _ = _raw(daemon, "POST", "/containers/raw-target/start")
    assert status == 304  # already running, as Docker answers
    daemon.docker("rm", "-f", "raw-target")


def test_ps_filters_by_status_name_label_and_exit_code(daemon: Daemon) -> None:
    daemon.docker("run", "-d", "--name", "filt-up", "--label", "team=a", "busybox", "sleep", "1000")
    done = daemon.docker(
        "run",
        "--name",
        "filt-done",
        "--label",
        "team=b",
        "busybox",
        "sh",
        "-c",
        "exit 3",
        check=False,
    )
    assert done.returncode == 3

    def names(*filters: str) -> list[str]:
        args = ["ps", "-a", "--format", "{{.Names}}"]
        for f in filters:
            args += ["--filter", f]
        return sorted(daemon.docker(*args).stdout.split())

    assert names("status=running", "name=filt") == ["filt-up"]
    assert names("status=exited", "name=filt") == ["filt-done"]
    assert names("label=team", "name=^filt-") == ["filt-done", "filt-up"]
    assert names("label=team=b") == ["filt-done"]
    assert names("exited=3") == ["filt-done"]
    assert names("exited=0", "name=filt") == []
    bad = daemon.docker("ps", "--filter", "status=sleepy", check=False)
    assert bad.returncode != 0 and "invalid filter 'status=sleepy'" in bad.stderr
    unknown = daemon.docker("ps", "--filter", "volume=x", check=False)
    assert unknown.returncode != 0 and "invalid filter 'volume'" in unknown.stderr
    daemon.docker("rm", "-f", "filt-up", "filt-done")
