"""`python -m bench.checkpoint` runs C1 (daemon HTTP, runtime gRPC, bare CRIU) and C2,
and writes a report with a figure in every cell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from runtime.criu import CriuBinary, CriuNotFound

REPO = Path(__file__).resolve().parents[2]


def test_the_checkpoint_bench_measures_every_path(tmp_path: Path) -> None:
    try:
        if os.geteuid() != 0:
            raise CriuNotFound("checkpoints need root")
        trio.run(CriuBinary.locate)
    except CriuNotFound as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"needs CRIU as root ({error}); CI must provide it")
        pytest.skip(f"needs CRIU as root ({error})")
    out = tmp_path / "c.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.checkpoint",
            "--reps",
            "1",
            "--containers",
            "2",
            "--kind",
            "process",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = out.read_text()
    for path in ("daemon HTTP", "runtime gRPC", "bare `criu dump"):
        row = next(line for line in report.splitlines() if path in line)
        assert re.search(r"\| \d+\.\d{3} \|", row), row
    assert re.search(r"Speed-up from checkpointing at once: \d+\.\d\dx", report)
