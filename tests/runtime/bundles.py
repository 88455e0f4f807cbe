"""Bundles and counters for the runtime's tests: what a container runs, and reading it.

Owns: building a `process` bundle (a config.json whose process runs on the host) and a
runc bundle (busybox-static in rootfs/bin, a config from ``runc spec`` with no terminal),
both running a counter that writes 0, 1, 2, … one line per write; `CounterOutput`,
which reads those numbers back from the file the runtime appends them to; and
`wait_until`, for the things a test can only watch by looking again.

Must not: start anything itself; the runtime under test does that.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import trio

# One os.write per number, so a checkpoint never splits a line; the pause keeps the
# count small and the CPU free. An optional TCP connection (COUNTER_CONNECT=host:port)
# makes a task CRIU refuses to dump without --tcp-established.
PYTHON_COUNTER = """
import os, socket, time
target = os.environ.get("COUNTER_CONNECT")
if target:
    host, port = target.rsplit(":", 1)
    held = socket.create_connection((host, int(port)))
count = 0
while True:
    os.write(1, b"%d\\n" % count)
    count += 1
    time.sleep(0.01)
"""

# busybox sh: `echo` is a builtin (one write per line), `sleep` a fresh child each time.
SHELL_COUNTER = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done"

BUSYBOX_LINKS = ("sh", "sleep", "echo", "cat", "true")


def make_process_bundle(
    directory: Path, *, args: list[str] | None = None, env: dict[str, str] | None = None
) -> Path:
    """A bundle for the `process` runtime; by default it runs the Python counter."""
    directory.mkdir(parents=True, exist_ok=True)
    environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", **(env or {})}
    config = {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "args": args or [sys.executable, "-c", PYTHON_COUNTER],
            "env": [f"{key}={value}" for key, value in environment.items()],
            "cwd": "/",
        },
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    return directory


def busybox_path() -> str | None:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return candidate
    return shutil.which("busybox")


def make_runc_bundle(directory: Path, runc: str, *, command: str = SHELL_COUNTER) -> Path:
    """A busybox-static bundle whose container runs *command* under ``sh -c``."""
    busybox = busybox_path()
    if busybox is None:
        raise FileNotFoundError("busybox-static is not installed")
    bin_dir = directory / "rootfs" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(busybox, bin_dir / "busybox")
    for name in BUSYBOX_LINKS:
        (bin_dir / name).symlink_to("busybox")
    subprocess.run([runc, "spec"], cwd=directory, check=True)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = ["sh", "-c", command]
    config["root"]["readonly"] = False
    config_path.write_text(json.dumps(config, indent=1))
    return directory


class CounterOutput:
    """The numbers a counter has written to the file the runtime appends its stdout to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def numbers(self) -> list[int]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        # The last line may still be on its way; only complete lines count.
        return [int(line) for line in text.split("\n")[:-1] if line]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[int]:
        """Wait until at least *count* numbers are there."""
        await wait_until(lambda: len(self.numbers()) >= count, timeout)
        return self.numbers()

    async def wait_for_more(self, extra: int, timeout: float = 10.0) -> list[int]:
        return await self.wait_for(len(self.numbers()) + extra, timeout)


async def wait_until(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Look at *condition* until it holds (files, /proc and other processes send no
    event to wait on); fail after *timeout* seconds."""
    with trio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 -- nothing to wait on but time
            await trio.sleep(interval)


def assert_consecutive(numbers: list[int]) -> None:
    """The counter neither skipped nor repeated a value."""
    assert numbers, "the counter wrote nothing"
    expected = list(range(numbers[0], numbers[0] + len(numbers)))
    if numbers != expected:
        breaks = [
            (before, after) for before, after in itertools.pairwise(numbers) if after != before + 1
        ]
        raise AssertionError(f"the count broke at {breaks[:5]}")
