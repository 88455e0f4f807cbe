"""CPU seconds used by a process (all its threads), read from this machine's kernel.

Owns one question only — how much CPU has a process used so far, in user space and in
the kernel — so that the client can read its own and its server's time at the same
two instants. It must not start,
signal or wait for processes.
"""

from __future__ import annotations

import os
import resource

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> tuple[float, float]:
    """User and system CPU of this process, all threads (µs resolution)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU of another process, all threads, from /proc/<pid>/stat.

    The kernel counts in clock ticks (usually 10 ms), which is fine over the seconds a
    workload runs. Raises OSError when the process is gone.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return utime / _TICKS_PER_SECOND, stime / _TICKS_PER_SECOND
