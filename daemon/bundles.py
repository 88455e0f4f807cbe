"""OCI bundles for the runtime: what a container runs.

In Docker the daemon, not the runtime, prepares each container's bundle (a rootfs and
a config.json) and hands the runtime its path; cryo's daemon does the same. Owns:
building a `process` bundle (a config.json whose process runs on the host) and a runc
bundle (busybox-static in rootfs/bin, a config from ``runc spec`` with no terminal),
by default both running a counter that writes 0, 1, 2, … one line per write.

Must not: start anything; the runtime does that.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
    return make_busybox_bundle(directory, runc, args=["sh", "-c", command])


def busybox_applets(busybox: str) -> list[str]:
    """The commands this busybox provides (``busybox --list``), or a minimal set."""
    listed = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=False)
    names = [n for n in listed.stdout.split() if n and "/" not in n and n != "busybox"]
    return names or list(BUSYBOX_LINKS)


def make_busybox_bundle(
    directory: Path,
    runc: str,
    *,
    args: list[str],
    env: list[str] | None = None,
    cwd: str = "/",
    hostname: str | None = None,
    applets: list[str] | None = None,
) -> Path:
    """A runc bundle: busybox-static in rootfs/bin with a link per applet, and a
    config from ``runc spec`` running *args* without a terminal."""
    busybox = busybox_path()
    if busybox is None:
        raise FileNotFoundError("busybox-static is not installed")
    bin_dir = directory / "rootfs" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2(busybox, bin_dir / "busybox")
    for name in applets if applets is not None else BUSYBOX_LINKS:
        (bin_dir / name).symlink_to("busybox")
    for name in ("tmp", "proc", "dev", "sys", "etc"):
        (directory / "rootfs" / name).mkdir(exist_ok=True)
    subprocess.run([runc, "spec"], cwd=directory, check=True, capture_output=True)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["process"]["cwd"] = cwd
    if env is not None:
        config["process"]["env"] = env
    if hostname is not None:
        config["hostname"] = hostname
    config["root"]["readonly"] = False
    config_path.write_text(json.dumps(config, indent=1))
    return directory
