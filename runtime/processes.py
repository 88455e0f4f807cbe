"""Host process facts the runtime needs: identity, membership, waiting and reaping.

Owns: telling one task from a later task that reuses its PID (the start time in
``/proc/PID/stat``), listing the PIDs of a session or of a container's cgroup, waiting
for a task that is not our child (a pidfd turns readable when it exits), making this
process a child subreaper (so containers that runc leaves behind become our children,
as containerd's shim did), reaping orphans that nobody else waits for, and turning a
wait status into containerd's exit status.

Must not: start processes, or reap a child that someone else is waiting for.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import trio

__all__ = [
    "UNKNOWN_EXIT_STATUS",
    "OrphanReaper",
    "become_subreaper",
    "cgroup_pids",
    "containerd_exit_status",
    "is_running",
    "send_signal",
    "session_pids",
    "start_ticks",
    "wait_pid_gone",
]

log = logging.getLogger("runtime.processes")

# containerd 0.2's status for a task whose exit code could not be known (it was not our
# child, e.g. adopted after a restart).
UNKNOWN_EXIT_STATUS = 255

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    """Adopt orphaned descendants (``runc run -d`` exits and leaves its container)."""
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(code)}")


def containerd_exit_status(wait_status: int) -> int:
    """An exit code, or 128 + the signal (``subprocess``-style negative) as the shim did."""
    return 128 - wait_status if wait_status < 0 else wait_status


def _stat_fields(pid: int) -> list[str]:
    """``/proc/PID/stat`` from field 3 on (the command name may contain anything)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int:
    """When *pid* started, in clock ticks after boot; 0 if there is no such task."""
    try:
        # Field 22 of stat; index 19 once the first two fields are cut off.
        return int(_stat_fields(pid)[19])
    except (OSError, ValueError, IndexError):
        return 0


def is_running(pid: int, ticks: int) -> bool:
    """Whether *pid* is still the task that started at *ticks*, and not a zombie."""
    try:
        fields = _stat_fields(pid)
        return fields[0] != "Z" and int(fields[19]) == ticks
    except (OSError, ValueError, IndexError):
        return False


def _all_tasks() -> Iterator[tuple[int, list[str]]]:
    """(pid, stat fields after the name) of every task in /proc, as far as it can be read."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            yield int(entry), _stat_fields(int(entry))
        except (OSError, ValueError):
            continue  # exited while we looked


def session_pids(session: int) -> list[int]:
    """Every task in session *session* (a `process` container is one session)."""
    # Field 6 is the session; field 3 the state ("Z" for a zombie).
    return sorted(
        pid for pid, fields in _all_tasks() if int(fields[3]) == session and fields[0] != "Z"
    )


def cgroup_pids(pid: int) -> list[int]:
    """Every task in *pid*'s cgroup (a runc container's), or just *pid* if unknown."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    candidates: list[Path] = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if path == "/":
            continue  # the root cgroup holds the whole machine, not one container
        if "pids" in controllers.split(","):
            candidates.insert(0, Path("/sys/fs/cgroup/pids") / path.lstrip("/"))
        elif hierarchy == "0" and not controllers:
            for base in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
                candidates.append(base / path.lstrip("/"))
    for directory in candidates:
        try:
            text = (directory / "cgroup.procs").read_text()
        except OSError:
            continue
        pids = sorted(int(line) for line in text.split())
        if pids:
            return pids
    return [pid]


def send_signal(pid: int, signum: int) -> None:
    """Signal exactly the task *pid* names now (a pidfd, so no PID-reuse race)."""
    pidfd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(pidfd, signum)
    finally:
        os.close(pidfd)


async def wait_pid_gone(pid: int) -> None:
    """Wait until *pid* exits, whoever its parent is (the exit status stays unknown)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


class OrphanReaper:
    """Reaps zombie children that no one waits for.

    As a subreaper the runtime inherits every orphan below it (a daemonising task, a
    helper runc or CRIU left behind); left alone they would stay zombies forever. Only a
    zombie seen on two scans in a row and not announced as waited-for is reaped, so a
    child that trio or a task watcher is about to reap is never taken from them.
    """

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self.waited_for: set[int] = set()
        self._seen: set[int] = set()

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            self.scan()

    def scan(self) -> list[int]:
        zombies = set(_zombie_children()) - self.waited_for
        reaped = []
        for pid in zombies & self._seen:
            try:
                # WNOHANG on a known zombie: returns at once.
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if done:
                reaped.append(pid)
                log.info("reaped orphan %d (wait status %d)", pid, status)
        self._seen = zombies - set(reaped)
        return reaped


def _zombie_children() -> list[int]:
    me = os.getpid()
    return [pid for pid, fields in _all_tasks() if fields[0] == "Z" and int(fields[1]) == me]
