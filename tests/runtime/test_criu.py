"""Tests for the CRIU driver against the real CRIU: no mocks, real processes, real images.

Owns: checking what a runtime user relies on — a checkpoint can be taken with the
process left running or stopped, a stopped process comes back under its PID and
continues where it was, failures explain themselves, and nothing is left running.
Must not: touch processes it did not start, or skip on CI (there CRIU must be present).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from runtime.criu import (
    CriuBinary,
    CriuError,
    CriuFeatureMissing,
    CriuNotFound,
    describe_fds,
    relevant_log_lines,
    wait_pid_exit,
    wait_pid_free,
)

# Writes 0, 1, 2, … one per line to stdout, each with a single write(2) so a line is
# never split by a checkpoint; the pause keeps the count small and the CPU free.
COUNTER_SOURCE = """
import os, time
count = 0
while True:
    os.write(1, b"%d\\n" % count)
    count += 1
    time.sleep(0.01)
"""

STEP_TIMEOUT = 10  # seconds; a CRIU step takes about 0.1 s here


@pytest.fixture(scope="session")
def criu() -> CriuBinary:
    try:
        return trio.run(CriuBinary.locate)
    except CriuNotFound as error:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"needs a usable CRIU: {error.reason}")


@pytest.fixture
def images_dir(tmp_path: Path) -> str:
    path = tmp_path / "images"
    path.mkdir()
    return str(path)


class LineReader:
    """Collects the counter's numbers from a pipe."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.pending = b""
        self.numbers: list[int] = []

    async def read_at_least(self, count: int) -> list[int]:
        with trio.fail_after(STEP_TIMEOUT):
            while len(self.numbers) < count:
                chunk = await self.stream.receive_some()
                if not chunk:
                    raise AssertionError(f"pipe closed after {self.numbers}")
                self._take(chunk)
        return self.numbers

    async def read_to_end(self) -> list[int]:
        with trio.fail_after(STEP_TIMEOUT):
            while chunk := await self.stream.receive_some():
                self._take(chunk)
        return self.numbers

    def _take(self, chunk: bytes | bytearray) -> None:
        *complete, self.pending = (self.pending + chunk).split(b"\n")
        self.numbers.extend(int(line) for line in complete)


@asynccontextmanager
async def running_counter() -> AsyncIterator[trio.Process]:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", COUNTER_SOURCE],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Its own session, so CRIU needs no --shell-job and the test's terminal is
        # not part of what gets dumped.
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()


def our_children() -> list[str]:
    """Our child processes, zombies included, as "pid state comm: command line"."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited while we looked
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid():
            command = b" ".join(arg for arg in argv if arg).decode(errors="replace")
            found.append(f"{entry} {state} {comm}: {command}")
    return found


def criu_children() -> list[str]:
    return [child for child in our_children() if child.split()[2] == "criu:"]


def assert_consecutive(numbers: list[int]) -> None:
    expected = list(range(numbers[0], numbers[0] + len(numbers)))
    assert numbers == expected, "the counter skipped or repeated a value"


@pytest.fixture(autouse=True)
def no_criu_left_behind() -> Iterator[None]:
    yield
    assert criu_children() == [], "a criu swrk child was left running or unreaped"


async def test_version_is_new_enough_for_this_kernel(criu: CriuBinary) -> None:
    version = await criu.version()
    assert version.at_least((4, 1)), f"CRIU {version} fails on kernels >= 6.13"
    assert str(version).startswith(f"{version.major}.{version.minor}")


async def test_self_check_passes(criu: CriuBinary) -> None:
    await criu.check()


async def test_features_match_this_kernel(criu: CriuBinary) -> None:
    features = await criu.features()
    # pidfd_open and pidfd_getfd exist on every kernel this runtime supports (>= 5.6).
    assert features.pidfd_store is True
    assert await criu.features() is features, "the kernel's features are probed once"


async def test_dump_leaving_the_process_running(criu: CriuBinary, images_dir: str) -> None:
    async with running_counter() as process:
        assert process.stdout is not None
        output = LineReader(process.stdout)
        await output.read_at_least(5)
        stages: list[str] = []
        with trio.fail_after(STEP_TIMEOUT):
            await criu.dump(process.pid, images_dir, leave_running=True, on_notify=stages.append)
        before = len(output.numbers)
        await output.read_at_least(before + 10)
        assert process.returncode is None, "leave_running must not stop the process"
        assert_consecutive(output.numbers)
        assert "post-dump" in stages
        images = set(os.listdir(images_dir))
        assert {"inventory.img", "pstree.img", f"core-{process.pid}.img"} <= images


async def test_dump_with_exit_then_restore_continues_the_count(
    criu: CriuBinary, images_dir: str
) -> None:
    restored_pid = None
    stdout_read, stdout_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    try:
        async with running_counter() as process:
            assert process.stdout is not None
            pid = process.pid
            output = LineReader(process.stdout)
            await output.read_at_least(5)
            # What a runtime records next to the images, to reconnect the task's output.
            fds = describe_fds(pid)
            assert fds[1].startswith("pipe:[") and fds[2].startswith("pipe:[")
            with trio.fail_after(STEP_TIMEOUT):
                await criu.dump(pid, images_dir, leave_running=False)
                assert await process.wait() == -signal.SIGKILL
            before = await output.read_to_end()
            assert_consecutive(before)
        with trio.fail_after(STEP_TIMEOUT):
            await wait_pid_free(pid)

        stages: list[str] = []

        async def record_stage(stage: str) -> None:
            await trio.lowlevel.checkpoint()
            stages.append(stage)

        with trio.fail_after(STEP_TIMEOUT):
            restored_pid = await criu.restore(
                images_dir,
                inherit_fds=[(fds[1], stdout_write), (fds[2], stderr_write)],
                on_notify=record_stage,
            )
        # The task holds the write ends now; ours must go so its exit reads as EOF.
        os.close(stdout_write)
        os.close(stderr_write)
        stdout_write = stderr_write = -1
        assert restored_pid == pid, "CRIU restores a task under its old PID"
        assert "post-restore" in stages
        after = LineReader(trio.lowlevel.FdStream(stdout_read))
        stdout_read = -1  # owned by the stream now
        async with after.stream:
            numbers = await after.read_at_least(5)
            assert numbers[0] == before[-1] + 1, "the restored counter did not resume"
            assert_consecutive(numbers)
            os.kill(restored_pid, signal.SIGTERM)
            with trio.fail_after(STEP_TIMEOUT):
                assert await wait_pid_exit(restored_pid) == -signal.SIGTERM
            restored_pid = None
            await after.read_to_end()  # EOF proves no one else holds the pipe
    finally:
        if restored_pid is not None:
            os.kill(restored_pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await wait_pid_exit(restored_pid)
        for fd in (stdout_read, stdout_write, stderr_read, stderr_write):
            if fd >= 0:
                os.close(fd)


def pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def unused_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return next(pid for pid in range(pid_max - 1, 1, -1) if not pid_exists(pid))


async def test_dump_of_a_missing_process_explains_why(criu: CriuBinary, images_dir: str) -> None:
    pid = unused_pid()
    with pytest.raises(CriuError) as caught:
        with trio.fail_after(STEP_TIMEOUT):
            await criu.dump(pid, images_dir, leave_running=True)
    error = caught.value
    assert f"dump of pid {pid} failed" in error.reason
    assert "RLIMIT_NOFILE" not in error.reason, "the harmless first error is not the cause"
    assert error.log_lines and any("Error" in line for line in error.log_lines)
    assert all("RLIMIT_NOFILE" not in line for line in error.log_lines)
    assert error.log_lines[-1] in str(error)
    assert error.log_path == os.path.join(images_dir, "dump.log")


async def test_restore_from_an_empty_directory_fails_cleanly(
    criu: CriuBinary, images_dir: str
) -> None:
    with pytest.raises(CriuError) as caught:
        with trio.fail_after(STEP_TIMEOUT):
            await criu.restore(images_dir)
    assert "restore" in caught.value.reason
    assert caught.value.log_lines


async def test_incremental_dump_is_refused_without_dirty_tracking(
    criu: CriuBinary, images_dir: str
) -> None:
    async with running_counter() as process:
        assert process.stdout is not None
        output = LineReader(process.stdout)
        await output.read_at_least(3)
        if (await criu.features()).mem_track:
            # A kernel with dirty tracking must not be refused.
            await criu.dump(process.pid, images_dir, leave_running=True, track_mem=True)
            assert "inventory.img" in os.listdir(images_dir)
            return
        for options in ({"track_mem": True}, {"parent_img": "../previous"}):
            with pytest.raises(CriuFeatureMissing, match="memory dirty tracking"):
                await criu.dump(process.pid, images_dir, leave_running=True, **options)
        assert os.listdir(images_dir) == [], "CRIU must not even be asked"
        await output.read_at_least(len(output.numbers) + 3)
        assert process.returncode is None


async def test_failing_notify_handler_aborts_the_dump(criu: CriuBinary, images_dir: str) -> None:
    def refuse(stage: str) -> None:
        raise RuntimeError(f"not now ({stage})")

    async with running_counter() as process:
        assert process.stdout is not None
        output = LineReader(process.stdout)
        await output.read_at_least(3)
        with pytest.raises(CriuError, match="not now") as caught:
            with trio.fail_after(STEP_TIMEOUT):
                await criu.dump(process.pid, images_dir, leave_running=False, on_notify=refuse)
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert "pre-dump" in caught.value.reason
        # CRIU itself must have been told to stop, not merely hung up on.
        assert any("script error" in line for line in caught.value.log_lines)
        # Refused at "pre-dump", before CRIU froze it: the process just keeps counting.
        await output.read_at_least(len(output.numbers) + 5)
        assert process.returncode is None
        assert_consecutive(output.numbers)


async def test_cancelled_dump_leaves_no_criu_and_the_process_running(
    criu: CriuBinary, images_dir: str
) -> None:
    async with running_counter() as process:
        assert process.stdout is not None
        output = LineReader(process.stdout)
        await output.read_at_least(3)
        with trio.CancelScope() as scope:

            async def cancel_mid_dump(stage: str) -> None:
                # CRIU is now blocked waiting for our answer: the dump is under way.
                scope.cancel()
                await trio.sleep_forever()

            with trio.fail_after(STEP_TIMEOUT):
                await criu.dump(
                    process.pid, images_dir, leave_running=False, on_notify=cancel_mid_dump
                )
        assert scope.cancelled_caught
        assert criu_children() == []
        await output.read_at_least(len(output.numbers) + 5)
        assert process.returncode is None
        assert_consecutive(output.numbers)


async def test_cancelling_a_request_kills_a_criu_that_does_not_answer(tmp_path: Path) -> None:
    # A swrk that is busy (here: never reads its socket) cannot notice that we hung up;
    # cancelling must still end it at once instead of waiting for it.
    stuck = tmp_path / "criu"
    stuck.write_text("#!/bin/sh\nexec sleep 3.25\n")
    stuck.chmod(0o755)
    started = trio.current_time()
    with trio.move_on_after(0.3) as scope:
        await CriuBinary(str(stuck)).version()
    assert scope.cancelled_caught
    assert trio.current_time() - started < 2, "the stuck swrk was waited for, not killed"
    assert not [child for child in our_children() if child.split()[2] == "sleep:"]


async def test_locate_rejects_a_binary_that_is_not_criu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYO_CRIU", "/bin/true")
    with pytest.raises(CriuNotFound, match=r"/bin/true \(from \$CRYO_CRIU\) did not answer"):
        await CriuBinary.locate()
    monkeypatch.setenv("CRYO_CRIU", "/nonexistent/criu")
    with pytest.raises(CriuNotFound, match="not an executable file"):
        await CriuBinary.locate()


async def test_wait_pid_exit_reports_the_exit_code() -> None:
    # A child trio did not start, as a task restored with rst_sibling is.
    process = await trio.to_thread.run_sync(
        subprocess.Popen, [sys.executable, "-c", "raise SystemExit(7)"]
    )
    with trio.fail_after(STEP_TIMEOUT):
        assert await wait_pid_exit(process.pid) == 7
    assert not pid_exists(process.pid), "the child was not reaped"
    process.returncode = 7  # already reaped by us; keep Popen from waiting again


def test_log_excerpt_keeps_errors_and_what_led_to_them() -> None:
    log = "\n".join(
        [
            "(00.000001) Version: 4.1.1",
            "(00.000002) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self",
            "(00.000003) unrelated 1",
            "(00.000004) unrelated 2",
            "(00.000005) Seizing 42",
            "(00.000006) Warn  (criu/seize.c:63): Failed to open /proc/42/comm",
            "(00.000007) Unseizing 42",
            "(00.000008) Error (criu/cr-dump.c:2111): Dumping FAILED.",
        ]
    )
    lines = relevant_log_lines(log, context=1)
    assert lines == [
        "(00.000005) Seizing 42",
        "(00.000006) Warn  (criu/seize.c:63): Failed to open /proc/42/comm",
        "(00.000007) Unseizing 42",
        "(00.000008) Error (criu/cr-dump.c:2111): Dumping FAILED.",
    ]
    quiet = "(0.1) a\n(0.2) b\n(0.3) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE\n"
    assert relevant_log_lines(quiet) == ["(0.1) a", "(0.2) b"]
