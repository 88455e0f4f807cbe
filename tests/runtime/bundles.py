"""Counters for the runtime's tests: reading back what a container wrote.

The bundles themselves come from `daemon.bundles` (re-exported here). Owns
`CounterOutput`, which reads a counter's numbers back from the file the runtime
appends them to, and `wait_until`, for the things a test can only watch by looking
again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import trio

from daemon.bundles import (
    BUSYBOX_LINKS,
    PYTHON_COUNTER,
    SHELL_COUNTER,
    busybox_path,
    make_process_bundle,
    make_runc_bundle,
)

__all__ = [
    "BUSYBOX_LINKS",
    "PYTHON_COUNTER",
    "SHELL_COUNTER",
    "CounterOutput",
    "assert_consecutive",
    "busybox_path",
    "make_process_bundle",
    "make_runc_bundle",
    "wait_until",
]


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
