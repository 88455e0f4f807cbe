"""The runc driver: run, signal, pause, checkpoint and restore OCI containers with runc.

Owns: building runc command lines (global ``--root``, ``--criu``, ``--log`` in JSON), the
checkpoint and restore flags containerd 0.2 used (``--image-path``, ``--work-path``,
``--leave-running``, ``--tcp-established``, ``--ext-unix-sk``, ``--shell-job``,
``--empty-ns``), reading the PID runc writes, and turning a failed runc command into
`RuncError` with runc's own message and, when CRIU failed under it, the relevant lines
of CRIU's log.

Must not: decide where checkpoints live, track container state, or wait for a
container's task (after ``runc run -d`` the task is re-parented to the runtime, which
must be a child subreaper; the container table watches it).

Facts (runc 1.1.5 on this machine): ``run -d`` and ``restore -d`` pass runc's own stdin,
stdout and stderr to the container when there is no terminal, and ``restore`` hands a
restored task's pipes back through CRIU's inherit-fd, mapped to runc's own fds 0-2 by the
``descriptors.json`` that ``checkpoint`` writes. So giving runc fresh pipes at restore is
all it takes to reconnect a restored container's stdio.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from runtime.criu import relevant_log_lines
from runtime.errors import OperationFailed

__all__ = ["Runc", "RuncCheckpointFlags", "RuncError"]

# Generous: a checkpoint or restore takes 0.3 s here, but a large container takes longer.
_COMMAND_TIMEOUT = 120.0


class RuncError(OperationFailed):
    """A runc command failed; the message has runc's words and CRIU's log lines."""


@dataclass(frozen=True)
class RuncCheckpointFlags:
    """The options shared by ``runc checkpoint`` and ``runc restore``."""

    tcp_established: bool = False
    ext_unix_sk: bool = False
    shell_job: bool = False
    empty_ns: tuple[str, ...] = ()

    def arguments(self) -> list[str]:
        flags = []
        if self.tcp_established:
            flags.append("--tcp-established")
        if self.ext_unix_sk:
            flags.append("--ext-unix-sk")
        if self.shell_job:
            flags.append("--shell-job")
        for namespace in self.empty_ns:
            flags += ["--empty-ns", namespace]
        return flags


@dataclass(frozen=True)
class Runc:
    """One runc binary, its state root, and the CRIU it should use."""

    binary: str
    root: Path
    criu: str | None = None

    def _command(self, log_file: Path, *arguments: str) -> list[str]:
        command = [self.binary, "--root", str(self.root), "--log", str(log_file)]
        command += ["--log-format", "json"]
        if self.criu is not None:
            command += ["--criu", self.criu]
        return command + list(arguments)

    async def run_detached(
        self,
        container_id: str,
        bundle: Path,
        *,
        stdio: Sequence[int],
        pid_file: Path,
        log_file: Path,
        no_pivot_root: bool = False,
        extra: Sequence[str] = (),
    ) -> int:
        """``runc run -d``: start the container with *stdio* as its fds 0-2; its PID."""
        arguments = ["run", "-d", "--bundle", str(bundle), "--pid-file", str(pid_file)]
        if no_pivot_root:
            arguments.append("--no-pivot")
        arguments += [*extra, container_id]
        await self._run(log_file, arguments, what="start", stdio=stdio)
        return await trio.to_thread.run_sync(_read_pid, pid_file)

    async def checkpoint(
        self,
        container_id: str,
        image_path: Path,
        work_path: Path,
        flags: RuncCheckpointFlags,
        *,
        log_file: Path,
        leave_running: bool,
        pre_dump: bool = False,
        parent_path: str | None = None,
    ) -> None:
        arguments = ["checkpoint", "--image-path", str(image_path)]
        arguments += ["--work-path", str(work_path)]
        if leave_running:
            arguments.append("--leave-running")
        if pre_dump:
            arguments.append("--pre-dump")
        if parent_path is not None:
            arguments += ["--parent-path", parent_path]
        arguments += [*flags.arguments(), container_id]
        await self._run(log_file, arguments, what="checkpoint", criu_log=work_path / "dump.log")

    async def restore_detached(
        self,
        container_id: str,
        bundle: Path,
        image_path: Path,
        work_path: Path,
        flags: RuncCheckpointFlags,
        *,
        stdio: Sequence[int],
        pid_file: Path,
        log_file: Path,
        no_pivot_root: bool = False,
    ) -> int:
        """``runc restore -d``: bring the container back with *stdio* as its new pipes."""
        arguments = ["restore", "-d", "--image-path", str(image_path)]
        arguments += ["--work-path", str(work_path), "--bundle", str(bundle)]
        arguments += ["--pid-file", str(pid_file)]
        if no_pivot_root:
            arguments.append("--no-pivot")
        arguments += [*flags.arguments(), container_id]
        await self._run(
            log_file,
            arguments,
            what="restore",
            stdio=stdio,
            criu_log=work_path / "restore.log",
        )
        return await trio.to_thread.run_sync(_read_pid, pid_file)

    async def pause(self, container_id: str, *, log_file: Path) -> None:
        await self._run(log_file, ["pause", container_id], what="pause")

    async def resume(self, container_id: str, *, log_file: Path) -> None:
        await self._run(log_file, ["resume", container_id], what="resume")

    async def kill(self, container_id: str, signum: int, *, log_file: Path) -> None:
        await self._run(log_file, ["kill", container_id, str(signum)], what="signal")

    async def delete(self, container_id: str, *, log_file: Path) -> None:
        """``runc delete -f``: remove what runc keeps of a container; gone already is fine."""
        try:
            await self._run(log_file, ["delete", "-f", container_id], what="delete")
        except RuncError as error:
            if "does not exist" not in str(error):
                raise

    async def state(self, container_id: str, *, log_file: Path) -> dict[str, Any] | None:
        """runc's view of the container (``status``, ``pid``…), or None if it has none."""
        try:
            output = await self._run(log_file, ["state", container_id], what="state")
        except RuncError as error:
            if "does not exist" in str(error):
                return None
            raise
        state = json.loads(output)
        return state if isinstance(state, dict) else None

    async def _run(
        self,
        log_file: Path,
        arguments: list[str],
        *,
        what: str,
        stdio: Sequence[int] | None = None,
        criu_log: Path | None = None,
    ) -> bytes:
        command = self._command(log_file, *arguments)
        offset = await trio.to_thread.run_sync(_size_of, log_file)
        streams: dict[str, Any]
        if stdio is not None:
            # The container inherits these as its stdio; runc's own complaints are read
            # back from its log file instead.
            streams = {"stdin": stdio[0], "stdout": stdio[1], "stderr": stdio[2]}
        else:
            streams = {"stdin": subprocess.DEVNULL, "capture_stdout": True, "capture_stderr": True}
        with trio.fail_after(_COMMAND_TIMEOUT):
            try:
                result = await trio.run_process(command, check=False, **streams)
            except OSError as error:
                raise RuncError(f"cannot run {self.binary}: {error.strerror or error}") from None
        if result.returncode == 0:
            return result.stdout or b""
        message = await trio.to_thread.run_sync(_runc_messages, log_file, offset)
        if not message and result.stderr:
            message = result.stderr.decode(errors="replace").strip()
        text = f"runc {what} failed: {message or f'exit status {result.returncode}'}"
        if criu_log is not None:
            lines = await trio.to_thread.run_sync(_criu_lines, criu_log)
            if lines:
                text += "\nCRIU log:\n" + "\n".join(f"  {line}" for line in lines)
        raise RuncError(text)


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _runc_messages(log_file: Path, offset: int) -> str:
    """The error messages runc logged since *offset* (its log is JSON lines)."""
    try:
        with log_file.open("rb") as file:
            file.seek(offset)
            text = file.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    messages = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "fatal"):
            messages.append(str(record.get("msg", "")).strip())
    return "; ".join(message for message in messages if message)


def _criu_lines(criu_log: Path) -> list[str]:
    try:
        text = criu_log.read_text(errors="replace")
    except OSError:
        return []
    return relevant_log_lines(text)


def _read_pid(pid_file: Path) -> int:
    return int(pid_file.read_text().strip())
