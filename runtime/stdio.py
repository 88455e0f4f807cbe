"""A task's stdin, stdout and stderr: pipes owned by the runtime, copied to and from files.

Owns: making the three pipes a task gets as fds 0, 1 and 2 (CRIU can dump a pipe, but
not a host file or /dev/null seen from inside a container, and a plain file that grew
after a dump fails the restore), copying what the task writes to the files a client
named (opened with O_APPEND, so a restored task's output lands after what came before),
and feeding the task's stdin from a file.

Must not: know which kind of task is on the other end, or how it was started. The
caller hands the task-side fds to the task (spawn, runc or CRIU's inherit-fd), then
calls `TaskStdio.task_has_fds` so only the task holds them: that is what makes the task's
exit (or death in a dump) show up here as end of file.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field

import trio

__all__ = ["StdioPaths", "TaskStdio"]

log = logging.getLogger("runtime.stdio")

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class StdioPaths:
    """The files a client named for a task's stdio; an empty path means none."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""


@dataclass
class TaskStdio:
    """Three pipes between one task and the runtime, and the copying that serves them."""

    paths: StdioPaths
    # The ends the task gets as 0, 1, 2; -1 once given away.
    task_fds: list[int] = field(default_factory=list)
    # Our ends: the write end of stdin, the read ends of stdout and stderr.
    _ours: list[int] = field(default_factory=list)
    finished: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def open(cls, paths: StdioPaths) -> TaskStdio:
        stdin_read, stdin_write = os.pipe2(os.O_CLOEXEC)
        stdout_read, stdout_write = os.pipe2(os.O_CLOEXEC)
        stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
        return cls(
            paths,
            task_fds=[stdin_read, stdout_write, stderr_write],
            _ours=[stdin_write, stdout_read, stderr_read],
        )

    def task_has_fds(self) -> None:
        """The task holds its ends now: drop ours, so its exit reads as end of file."""
        for index, fd in enumerate(self.task_fds):
            if fd >= 0:
                os.close(fd)
                self.task_fds[index] = -1

    def close(self) -> None:
        """Close every fd still held (for a task that never started)."""
        self.task_has_fds()
        for index, fd in enumerate(self._ours):
            if fd >= 0:
                os.close(fd)
                self._ours[index] = -1
        self.finished.set()

    async def copy(self) -> None:
        """Copy until the task's stdout and stderr are closed by every holder."""
        stdin_write, stdout_read, stderr_read = self._ours
        self._ours = [-1, -1, -1]  # owned by the streams below from here on
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, trio.lowlevel.FdStream(stdin_write), self.paths.stdin)
                nursery.start_soon(_drain, trio.lowlevel.FdStream(stdout_read), self.paths.stdout)
                nursery.start_soon(_drain, trio.lowlevel.FdStream(stderr_read), self.paths.stderr)
        finally:
            self.finished.set()


def _open_output(path: str) -> int:
    # O_APPEND: several incarnations of a task (start, then restores) share the file and
    # each write lands at its end. Blocking open: a FIFO waits here for its reader.
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _drain(stream: trio.lowlevel.FdStream, path: str) -> None:
    """Copy one of the task's outputs to *path* (or discard it) until end of file."""
    output = -1
    async with stream:
        try:
            if path:
                output = await trio.to_thread.run_sync(_open_output, path, abandon_on_cancel=True)
            while True:
                try:
                    chunk = await stream.receive_some(_CHUNK)
                except trio.BrokenResourceError:
                    return
                if not chunk:
                    return
                if output >= 0:
                    try:
                        await trio.to_thread.run_sync(_write_all, output, chunk)
                    except OSError as error:
                        # Keep draining, or the task would block on a full pipe.
                        log.warning("cannot write task output to %s: %s", path, error)
                        os.close(output)
                        output = -1
        except OSError as error:
            log.warning("cannot open %s for task output: %s", path, error)
            await _discard(stream)
        finally:
            if output >= 0:
                os.close(output)


async def _discard(stream: trio.lowlevel.FdStream) -> None:
    try:
        while await stream.receive_some(_CHUNK):
            pass
    except trio.BrokenResourceError:
        return


async def _feed(stream: trio.lowlevel.FdStream, path: str) -> None:
    """Copy *path* into the task's stdin, then close it; close it at once without one."""
    async with stream:
        if not path:
            return
        try:
            source = await trio.to_thread.run_sync(
                os.open, path, os.O_RDONLY | os.O_CLOEXEC, abandon_on_cancel=True
            )
        except OSError as error:
            log.warning("cannot open %s for task input: %s", path, error)
            return
        try:
            while chunk := await trio.to_thread.run_sync(os.read, source, _CHUNK):
                await stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the task closed its stdin or exited
        except OSError as error:
            if error.errno != errno.EPIPE:
                log.warning("cannot copy %s to task input: %s", path, error)
        finally:
            os.close(source)
