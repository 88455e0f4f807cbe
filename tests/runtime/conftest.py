"""Fixtures for the runtime's tests: the tools it needs, a launched runtime, a client.

Owns: finding CRIU and runc (a test that needs one is skipped on a developer machine
without it, and fails on CI, where `CI=true`: there the set-up script provides both),
starting ``python -m runtime`` for one test on a state directory of its own, and an
``APIStub`` connected to it. The runtime stops its containers when it stops, so every
task a test started is gone after the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from daemon import supervisor
from proto.types.api_cryo import APIStub
from runtime.criu import CriuBinary, CriuNotFound
from wire.client import ClientConn

ON_CI = os.environ.get("CI") == "true"


def _missing(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"{reason}; CI must provide it (scripts/setup-system.sh)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def criu_path() -> str:
    if os.geteuid() != 0:
        _missing("checkpoints need root")
    try:
        return trio.run(CriuBinary.locate).path
    except CriuNotFound as error:
        _missing(f"needs a usable CRIU: {error.reason}")
        raise


@pytest.fixture(scope="session")
def runc_path(criu_path: str) -> str:
    found = shutil.which("runc")
    if found is None:
        _missing("needs runc")
        raise AssertionError("unreachable")
    return found


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def launched(
    tmp_path: Path, state_dir: Path, criu_path: str
) -> AsyncIterator[supervisor.LaunchedRuntime]:
    async with supervisor.launch(state_dir, log_file=tmp_path / "runtime.log") as running:
        yield running


@pytest.fixture
async def api(launched: supervisor.LaunchedRuntime) -> AsyncIterator[APIStub]:
    async with ClientConn(launched.target) as conn:
        yield APIStub(conn)
