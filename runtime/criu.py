"""The CRIU driver: checkpoint and restore processes by talking to `criu swrk` from trio.

Owns: finding a CRIU that works on this kernel (4.1 or newer), one `criu swrk` child per
request, the swrk RPC exchange (one `criu_req`, NOTIFY round trips, one final
`criu_resp`), turning CRIU failures into `CriuError` with the relevant lines of CRIU's
log, refusing incremental dumps that the kernel cannot do, and reaping tasks CRIU
restores as our children.

Must not: import `daemon` or `wire`, decide where checkpoints live or how they are
named (the runtime's checkpoint store does that), or keep state between requests.

API
---
- ``await CriuBinary.locate()`` picks the binary: ``$CRYO_CRIU`` when set (then it is the
  only candidate: an explicit choice that does not work is an error, not a hint to try
  something else), otherwise ``/var/cache/cryo/criu/criu``, then ``criu`` on ``PATH``.
  A candidate is accepted only if it answers a VERSION request with 4.1 or newer;
  otherwise `CriuNotFound` lists why each candidate was rejected.
- ``CriuBinary(path)``: ``version()``, ``check()``, ``features()``, ``dump(pid, dir, …)``
  and ``restore(dir, …) -> pid``. Every call starts its own ``criu swrk`` child and
  reaps it before returning, also when cancelled (the child is killed then).
- ``describe_fds(pid)`` reads ``/proc/PID/fd``; record it before a dump so a restore can
  hand the task fresh pipes through ``inherit_fds`` (keys such as ``"pipe:[12345]"``).
- ``wait_pid_exit(pid)`` reaps a task that CRIU restored with ``rst_sibling`` and
  ``wait_pid_free(pid)`` waits until a dumped task's PID may be reused by a restore.

Facts the caller must respect (measured on kernel 6.18, see design/checkpoint.md)
--------------------------------------------------------------------------------
- A restored task keeps its PID, so the original must be gone: after ``dump(…,
  leave_running=False)`` reap it (it was killed by CRIU) and ``await wait_pid_free(pid)``.
- With ``rst_sibling=True`` (the default) the restored task becomes a child of *this*
  process, which trio's process API knows nothing about. The caller must reap it with
  ``await wait_pid_exit(pid)`` (a pidfd, so no thread and no SIGCHLD handler), or it
  stays a zombie.
- The dumped task's stdout and stderr must be pipes (or files opened with O_APPEND): a
  plain file that grew after the dump makes the restore fail with "has bad size".
- Memory dirty tracking is off on this kernel, so ``track_mem`` / ``parent_img`` raise
  `CriuFeatureMissing` before CRIU is even asked to dump.
- Cancelling a dump kills the swrk child. Before CRIU has frozen the task (e.g. during
  the "pre-dump" notification) the task is untouched; later, CRIU's ptrace detaches
  when it dies but a half-injected parasite can take the task down with it.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import IO

import trio

from proto.criu import rpc_pb2

__all__ = [
    "CRIU_CACHE_PATH",
    "CRIU_MINIMUM_VERSION",
    "CriuBinary",
    "CriuError",
    "CriuFeatureMissing",
    "CriuFeatures",
    "CriuNotFound",
    "CriuVersion",
    "NotifyHandler",
    "describe_fds",
    "relevant_log_lines",
    "wait_pid_exit",
    "wait_pid_free",
]

CRIU_CACHE_PATH = "/var/cache/cryo/criu/criu"
CRIU_MINIMUM_VERSION = (4, 1)
CRIU_PATH_ENV = "CRYO_CRIU"

# CRIU's log levels: 0 messages only, 1 errors, 2 warnings, 3 info, 4 debug. runc asks
# for 4; the debug lines are what makes the lines before an error worth showing.
DEFAULT_LOG_LEVEL = 4

# CRIU replies are a few hundred bytes; this leaves room for any future field while
# still letting a truncated message be detected (MSG_TRUNC) instead of misparsed.
_MAX_RESPONSE_BYTES = 1 << 20
# CRIU may attach one fd to a NOTIFY (orphan_pts_master); cryo never asks for one, but
# an attached fd must still be received so it can be closed rather than leak.
_ANCILLARY_BYTES = socket.CMSG_SPACE(4 * 4)

# `--empty-ns` names the runtime accepts; CRIU itself refuses every flag but CLONE_NEWNET
# (cr-service.c checks `empty_ns & ~CLONE_NEWNET`). Python 3.11 has no os.CLONE_NEWNET.
_CLONE_NEWNET = 0x40000000
_EMPTY_NS_FLAGS = {"network": _CLONE_NEWNET, "net": _CLONE_NEWNET}

# Lines CRIU logs on every run on this machine that do not explain any failure.
_HARMLESS_LOG_MARKERS = ("Can't setup RLIMIT_NOFILE",)

# CRIU prefixes problems as "(00.028918) Error (compel/src/lib/infect.c:418): message";
# without a log file (swrk's own stderr) the timestamp is absent.
_LOG_PROBLEM = re.compile(r"\b(?P<level>Error|Warn) +\([^)]*\): (?P<message>.*)")

_INCREMENTAL_UNSUPPORTED = (
    "incremental (pre-dump / track-mem) checkpoints need memory dirty tracking, "
    "which this kernel does not offer"
)

NotifyHandler = Callable[[str], "Awaitable[None] | None"]
"""Called with CRIU's stage name ("pre-dump", "post-dump", "setup-namespaces",
"post-restore", …) while CRIU waits; may be sync or async. Raising makes CRIU abort."""


class CriuError(Exception):
    """CRIU refused or failed a request.

    `reason` is a one-line summary (CRIU's own words for the cause, no log excerpt);
    ``str(error)`` adds CRIU's errno and the relevant log lines, for the runtime's own
    log. Either may name host paths: the runtime decides what a remote peer gets to see.
    """

    def __init__(
        self,
        reason: str,
        *,
        errno: int | None = None,
        log_path: str | None = None,
        log_lines: Sequence[str] = (),
    ) -> None:
        self.reason = reason
        self.errno = errno
        self.log_path = log_path
        self.log_lines = tuple(log_lines)
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = self.reason
        if self.errno:
            text += f" (errno {self.errno}: {os.strerror(self.errno)})"
        if self.log_lines:
            where = f" from {self.log_path}" if self.log_path else ""
            text += f"\nCRIU log{where}:\n" + "\n".join(f"  {line}" for line in self.log_lines)
        return text


class CriuFeatureMissing(CriuError):
    """The request needs a CRIU or kernel feature this machine does not have."""


class CriuNotFound(CriuError):
    """No CRIU binary new enough for this kernel was found."""


@dataclass(frozen=True)
class CriuVersion:
    major: int
    minor: int
    sublevel: int = 0
    gitid: str = ""

    def at_least(self, minimum: tuple[int, int]) -> bool:
        return (self.major, self.minor) >= minimum

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}"
        if self.sublevel:
            text += f".{self.sublevel}"
        return text + (f" ({self.gitid})" if self.gitid else "")


@dataclass(frozen=True)
class CriuFeatures:
    """What CRIU reports it can do on this kernel (FEATURE_CHECK)."""

    mem_track: bool
    lazy_pages: bool
    pidfd_store: bool


@dataclass
class CriuBinary:
    """One CRIU executable; each method runs one request through its own `criu swrk`."""

    path: str
    # The kernel's abilities do not change while the runtime runs, so one probe is enough.
    _features: CriuFeatures | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    async def locate(cls) -> CriuBinary:
        """Return the first acceptable CRIU (see the module docstring for the order)."""
        explicit = os.environ.get(CRIU_PATH_ENV)
        candidates: list[tuple[str, str]]
        if explicit:
            candidates = [(explicit, f"${CRIU_PATH_ENV}")]
        else:
            candidates = [(CRIU_CACHE_PATH, "the cryo cache")]
            on_path = shutil.which("criu")
            if on_path is not None:
                candidates.append((on_path, "PATH"))
        rejected: list[str] = []
        for path, origin in candidates:
            if not await trio.to_thread.run_sync(_is_executable_file, path):
                rejected.append(f"{path} (from {origin}) is not an executable file")
                continue
            binary = cls(path)
            try:
                version = await binary.version()
            except CriuError as error:
                rejected.append(
                    f"{path} (from {origin}) did not answer a VERSION request: {error.reason}"
                )
                continue
            if not version.at_least(CRIU_MINIMUM_VERSION):
                rejected.append(
                    f"{path} (from {origin}) is CRIU {version}, older than "
                    f"{CRIU_MINIMUM_VERSION[0]}.{CRIU_MINIMUM_VERSION[1]}"
                )
                continue
            return binary
        raise CriuNotFound(
            "no usable CRIU (4.1 or newer is needed on kernels >= 6.13): "
            + "; ".join(rejected)
            + f". Build one with scripts/setup-criu.sh or point ${CRIU_PATH_ENV} at one."
        )

    async def version(self) -> CriuVersion:
        response = await self._request(rpc_pb2.criu_req(type=rpc_pb2.VERSION), what="version")
        version = response.version
        return CriuVersion(
            major=version.major_number,
            minor=version.minor_number,
            sublevel=version.sublevel,
            gitid=version.gitid,
        )

    async def check(self) -> None:
        """Raise `CriuError` unless CRIU's own self-check passes on this kernel."""
        # CRIU 4.1 dereferences the options of a CHECK request, and a log file needs a
        # directory to live in, so the check gets a scratch images directory.
        with tempfile.TemporaryDirectory(prefix="cryo-criu-check-") as scratch:
            opts = rpc_pb2.criu_opts(log_file="check.log", log_level=DEFAULT_LOG_LEVEL)
            await self._request_in_dir(rpc_pb2.CHECK, opts, scratch, log_dir=scratch, what="check")

    async def features(self) -> CriuFeatures:
        if self._features is None:
            asked = rpc_pb2.criu_features(mem_track=True, lazy_pages=True, pidfd_store=True)
            response = await self._request(
                rpc_pb2.criu_req(type=rpc_pb2.FEATURE_CHECK, features=asked),
                what="feature check",
            )
            answer = response.features
            self._features = CriuFeatures(
                mem_track=answer.mem_track,
                lazy_pages=answer.lazy_pages,
                pidfd_store=answer.pidfd_store,
            )
        return self._features

    async def dump(
        self,
        pid: int,
        images_dir: str,
        *,
        leave_running: bool,
        tcp_established: bool = False,
        ext_unix_sk: bool = False,
        shell_job: bool = False,
        file_locks: bool = False,
        empty_ns: Sequence[str] = (),
        external: Sequence[str] = (),
        log_file: str = "dump.log",
        log_level: int = DEFAULT_LOG_LEVEL,
        work_dir: str | None = None,
        track_mem: bool = False,
        parent_img: str | None = None,
        on_notify: NotifyHandler | None = None,
    ) -> None:
        """Dump the process tree rooted at *pid* into the existing directory *images_dir*.

        Without *leave_running* CRIU kills the tree once the images are written. The log
        lands in *work_dir* (default: *images_dir*) as *log_file*.
        """
        if pid <= 0:
            raise ValueError(f"cannot dump pid {pid}")
        namespaces = 0
        for name in empty_ns:
            flag = _EMPTY_NS_FLAGS.get(name)
            if flag is None:
                raise ValueError(f"CRIU can only leave the network namespace empty, not {name!r}")
            namespaces |= flag
        incremental = track_mem or parent_img is not None
        if incremental and not (await self.features()).mem_track:
            raise CriuFeatureMissing(_INCREMENTAL_UNSUPPORTED)
        opts = rpc_pb2.criu_opts(
            pid=pid,
            leave_running=leave_running,
            tcp_established=tcp_established,
            ext_unix_sk=ext_unix_sk,
            shell_job=shell_job,
            file_locks=file_locks,
            external=list(external),
            log_file=log_file,
            log_level=log_level,
            track_mem=track_mem,
        )
        if namespaces:
            opts.empty_ns = namespaces
        if parent_img is not None:
            opts.parent_img = parent_img
        await self._request_in_dir(
            rpc_pb2.DUMP,
            opts,
            images_dir,
            log_dir=work_dir or images_dir,
            work_dir=work_dir,
            on_notify=on_notify,
            what=f"dump of pid {pid}",
        )

    async def restore(
        self,
        images_dir: str,
        *,
        rst_sibling: bool = True,
        inherit_fds: Sequence[tuple[str, int]] = (),
        shell_job: bool = False,
        tcp_established: bool = False,
        ext_unix_sk: bool = False,
        file_locks: bool = False,
        external: Sequence[str] = (),
        log_file: str = "restore.log",
        log_level: int = DEFAULT_LOG_LEVEL,
        work_dir: str | None = None,
        on_notify: NotifyHandler | None = None,
    ) -> int:
        """Restore the tree dumped in *images_dir* and return the root task's PID.

        *inherit_fds* pairs a key recorded at dump time (``describe_fds``' value, such
        as ``"pipe:[12345]"``) with an fd of this process that the restored task gets
        in its place; the caller keeps ownership of those fds and may close them once
        this returns. With *rst_sibling* the task becomes our child: reap it with
        `wait_pid_exit`.
        """
        opts = rpc_pb2.criu_opts(
            rst_sibling=rst_sibling,
            shell_job=shell_job,
            tcp_established=tcp_established,
            ext_unix_sk=ext_unix_sk,
            file_locks=file_locks,
            external=list(external),
            log_file=log_file,
            log_level=log_level,
        )
        for key, fd in inherit_fds:
            # swrk is started with pass_fds, which keeps fd numbers, so CRIU finds the
            # fd under the same number in its own table.
            opts.inherit_fd.add(key=key, fd=fd)
        response = await self._request_in_dir(
            rpc_pb2.RESTORE,
            opts,
            images_dir,
            log_dir=work_dir or images_dir,
            work_dir=work_dir,
            extra_fds=[fd for _, fd in inherit_fds],
            on_notify=on_notify,
            what=f"restore from {PurePath(images_dir).name}",
        )
        return response.restore.pid

    async def _request_in_dir(
        self,
        kind: rpc_pb2.criu_req_type,
        opts: rpc_pb2.criu_opts,
        images_dir: str,
        *,
        log_dir: str,
        what: str,
        work_dir: str | None = None,
        extra_fds: Sequence[int] = (),
        on_notify: NotifyHandler | None = None,
    ) -> rpc_pb2.criu_resp:
        """Run a request whose options name directories by fd, and close those fds."""
        opened: list[int] = []
        try:
            images_fd = os.open(images_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            opened.append(images_fd)
            opts.images_dir_fd = images_fd
            if work_dir is not None:
                work_fd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                opened.append(work_fd)
                opts.work_dir_fd = work_fd
            if on_notify is not None:
                opts.notify_scripts = True
            request = rpc_pb2.criu_req(type=kind, opts=opts)
            log_path = os.path.join(log_dir, opts.log_file) if opts.log_file else None
            return await self._request(
                request,
                what=what,
                pass_fds=[*opened, *extra_fds],
                on_notify=on_notify,
                log_path=log_path,
            )
        finally:
            for fd in opened:
                os.close(fd)

    async def _request(
        self,
        request: rpc_pb2.criu_req,
        *,
        what: str,
        pass_fds: Sequence[int] = (),
        on_notify: NotifyHandler | None = None,
        log_path: str | None = None,
    ) -> rpc_pb2.criu_resp:
        """Start `criu swrk`, send *request*, answer NOTIFYs, return the final response."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # swrk's stdout/stderr only matter when it dies before it can answer (bad binary,
        # missing library); an unnamed file needs no reader task to keep it from filling.
        with ours, theirs, tempfile.TemporaryFile() as output:
            try:
                process = await trio.lowlevel.open_process(
                    [self.path, "swrk", str(theirs.fileno())],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    pass_fds=(theirs.fileno(), *pass_fds),
                )
            except OSError as error:
                raise CriuError(f"cannot start {self.path}: {error.strerror or error}") from error
            # Our copy must go, or a crashed swrk would never look like EOF to us.
            theirs.close()
            try:
                link = trio.socket.from_stdlib_socket(ours)
                try:
                    await link.send(request.SerializeToString())
                    response = await _exchange(link, on_notify)
                except (BrokenPipeError, ConnectionResetError):
                    # swrk died (or was never CRIU): the same as hanging up unanswered.
                    response = None
                except _NotifyHandlerFailed as refusal:
                    await process.wait()
                    raise CriuError(
                        f"criu {what} aborted: the {refusal.script!r} handler failed: "
                        f"{refusal.__cause__}",
                        log_path=log_path,
                        log_lines=await _read_relevant_lines(log_path, output),
                    ) from refusal.__cause__
                await process.wait()
                if response is None:
                    raise CriuError(
                        f"criu {what}: swrk exited with status {process.returncode} "
                        "before answering",
                        log_path=log_path,
                        log_lines=await _read_relevant_lines(log_path, output),
                    )
                if not response.success:
                    log_lines = await _read_relevant_lines(log_path, output)
                    cause = _failure_cause(response.cr_errmsg, log_lines)
                    raise CriuError(
                        f"criu {what} failed" + (f": {cause}" if cause else ""),
                        errno=response.cr_errno or None,
                        log_path=log_path,
                        log_lines=log_lines,
                    )
                return response
            finally:
                if process.returncode is None:
                    # Cancelled or failed mid-exchange: never leave swrk running or a
                    # zombie. (Closing our socket alone stops a swrk that is waiting
                    # for us, but not one that is busy dumping.)
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()


class _NotifyHandlerFailed(Exception):
    """The caller's notify handler raised; CRIU was told and has answered."""

    def __init__(self, script: str) -> None:
        super().__init__(script)
        self.script = script


async def _exchange(
    link: trio.socket.SocketType, on_notify: NotifyHandler | None
) -> rpc_pb2.criu_resp | None:
    """Read responses until the final one (None if swrk hung up), answering NOTIFYs."""
    while True:
        data = await _receive_message(link)
        if not data:
            return None
        response: rpc_pb2.criu_resp = rpc_pb2.criu_resp.FromString(data)
        if response.type != rpc_pb2.NOTIFY:
            return response
        script = response.notify.script
        failure: Exception | None = None
        if on_notify is not None:
            try:
                outcome = on_notify(script)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as error:  # handed back to CRIU first, then re-raised
                failure = error
        reply = rpc_pb2.criu_req(type=rpc_pb2.NOTIFY, notify_success=failure is None)
        await link.send(reply.SerializeToString())
        if failure is not None:
            # CRIU now aborts and sends its final response; read it so swrk exits
            # cleanly, but the caller's own error is the one worth reporting.
            await _receive_message(link)
            raise _NotifyHandlerFailed(script) from failure


async def _receive_message(link: trio.socket.SocketType) -> bytes:
    data, ancillary, flags, _ = await link.recvmsg(_MAX_RESPONSE_BYTES, _ANCILLARY_BYTES)
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            for fd in memoryview(payload)[:usable].cast("i"):
                os.close(fd)
    if flags & socket.MSG_TRUNC:
        raise CriuError(f"criu sent a message larger than {_MAX_RESPONSE_BYTES} bytes")
    return data


async def _read_relevant_lines(log_path: str | None, output: IO[bytes]) -> list[str]:
    """The lines explaining a failure: from CRIU's log, else from swrk's own output."""

    def read() -> list[str]:
        text = ""
        if log_path is not None:
            try:
                with open(log_path, encoding="utf-8", errors="replace") as log:
                    text = log.read()
            except OSError:
                text = ""
        if not text:
            output.seek(0)
            text = output.read().decode("utf-8", errors="replace")
        return relevant_log_lines(text)

    return await trio.to_thread.run_sync(read)


def _failure_cause(errmsg: str, log_lines: Sequence[str]) -> str:
    """CRIU's own error message, unless it is the harmless first error it always logs."""
    # cr_errmsg is the first error CRIU logged, which here is always the RLIMIT_NOFILE
    # line; the first real error line of the log names the actual cause instead.
    if errmsg and not _is_harmless(errmsg):
        return errmsg.strip()
    for line in log_lines:
        match = _LOG_PROBLEM.search(line)
        if match is not None and match.group("level") == "Error":
            return match.group("message").strip()
    return ""


def _is_harmless(line: str) -> bool:
    return any(marker in line for marker in _HARMLESS_LOG_MARKERS)


def relevant_log_lines(text: str, *, context: int = 3, limit: int = 40) -> list[str]:
    """Pick the lines of a CRIU log that explain a failure.

    Every error or warning line plus the *context* lines before it, in log order,
    without CRIU's known harmless noise; at most *limit* lines (the last ones, since
    CRIU's final errors summarise the earlier ones). Without any such line, the last
    *context* + 2 lines, which usually show where CRIU stopped. A successful dump or
    restore logs no warnings here, so the warnings before a failure are worth showing.
    """
    lines = [line for line in text.splitlines() if line.strip() and not _is_harmless(line)]
    chosen: set[int] = set()
    for index, line in enumerate(lines):
        if _LOG_PROBLEM.search(line) is not None:
            chosen.update(range(max(0, index - context), index + 1))
    if not chosen:
        return lines[-(context + 2) :]
    picked = [lines[index] for index in sorted(chosen)]
    return picked[-limit:]


def describe_fds(pid: int) -> dict[int, str]:
    """Map each open fd of *pid* to its target as CRIU names it (``pipe:[123]``, a path…).

    These targets are the keys `CriuBinary.restore` takes in ``inherit_fds``.
    """
    directory = f"/proc/{pid}/fd"
    targets: dict[int, str] = {}
    for name in os.listdir(directory):
        try:
            targets[int(name)] = os.readlink(os.path.join(directory, name))
        except FileNotFoundError:
            continue  # closed between listdir and readlink
    return targets


async def wait_pid_exit(pid: int) -> int:
    """Wait for our child *pid* (e.g. a task restored with rst_sibling) to exit; reap it.

    Returns the exit status the way `subprocess` does: the exit code, or minus the
    signal number. Uses a pidfd, so it neither blocks a thread nor races with PID reuse.
    Raises ProcessLookupError if *pid* does not exist, ChildProcessError if it is not
    our child.
    """
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            await trio.lowlevel.wait_readable(pidfd)
            # WNOHANG, and the pidfd said the child changed state: this never blocks.
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)  # noqa: ASYNC222
            if result is None:
                continue  # woken without a state change; wait again
            if result.si_code == os.CLD_EXITED:
                return result.si_status
            return -result.si_status
    finally:
        os.close(pidfd)


async def wait_pid_free(pid: int, *, poll_interval: float = 0.005) -> None:
    """Wait until no task has PID *pid*, so CRIU can restore a task under it.

    Reap the dumped process first (if it was our child); wrap this in
    `trio.fail_after`, since another process may have taken the PID for good.
    """
    # Polling is the only way: the kernel signals nothing when a PID is released, and a
    # pidfd cannot be opened for a task that is already gone.
    while _pid_exists(pid):  # noqa: ASYNC110
        await trio.sleep(poll_interval)


def _pid_exists(pid: int) -> bool:
    # A procfs lookup: answered from kernel memory, it never waits on a disk.
    return os.path.exists(f"/proc/{pid}")


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
