"""The benchmark harness works: every workload runs for cryo, and the report adds up.

Tiny counts (20 operations) through the real server and client processes; no timing
is asserted, only that the harness measures and reports what it ran.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.report import render_report
from bench.runner import (
    REPO,
    STEADY_HEAP_TUNABLES,
    Cell,
    EchoServer,
    RunRecord,
    plan_cells,
    run_client,
)
from bench.stack_profile import HTTP2, SOCKET, TRIO, WIRE, summarise
from bench.workloads import CRYO, GRPCIO, TCP_TRIO, WORKLOADS, CellResult

TINY = 20


def tiny_scale(workload: str) -> float:
    return TINY / WORKLOADS[workload].count


@pytest.fixture(scope="module")
def cryo_server() -> Iterator[EchoServer]:
    with EchoServer(CRYO) as server:
        yield server


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_each_workload_runs_for_cryo(cryo_server: EchoServer, workload: str) -> None:
    result = run_client(
        Cell(CRYO, CRYO, workload), cryo_server, scale=tiny_scale(workload), timeout=120
    )

    assert result.error is None
    assert result.count == TINY
    assert result.seconds > 0
    assert result.rate > 0
    assert result.client_cpu > 0
    if WORKLOADS[workload].latency:
        assert 0 < result.p50_us <= result.p99_us
    else:
        assert math.isnan(result.p50_us)


def test_a_client_that_cannot_reach_its_server_reports_an_error(
    cryo_server: EchoServer,
) -> None:
    @dataclass
    class Nowhere:
        port: int
        pid: int

    result = run_client(
        Cell(CRYO, CRYO, "W1"), Nowhere(1, cryo_server.pid), scale=tiny_scale("W1"), timeout=60
    )

    assert result.error is not None
    assert "UNAVAILABLE" in result.error


def test_the_command_line_writes_a_report_and_raw_results(tmp_path: Path) -> None:
    out = tmp_path / "run.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--libs",
            "cryo",
            "--workloads",
            "W1,W4",
            "--reps",
            "2",
            "--scale",
            "0.01",
            "--heap",
            "steady",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert done.returncode == 0, done.stderr
    report = out.read_text()
    assert "| cryo (wire, trio) |" in report
    assert "W1 calls/s" in report and "W4 msgs/s" in report
    assert "Counts scaled by 0.01" in report
    raw = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["workload"], r["rep"]) for r in raw["results"]) == [
        ("W1", 1),
        ("W1", 2),
        ("W4", 1),
        ("W4", 2),
    ]
    assert report in done.stdout
    # Every process of the run, whatever its library, had the same heap settings.
    assert f"GLIBC_TUNABLES={STEADY_HEAP_TUNABLES} (`--heap steady`)" in report
    assert raw["environment"]["GLIBC_TUNABLES"] == STEADY_HEAP_TUNABLES


def _result(client: str, workload: str, rep: int, seconds: float) -> CellResult:
    return CellResult(
        client=client,
        server=client,
        workload=workload,
        count=1000,
        seconds=seconds,
        client_cpu=0.2,
        server_cpu=0.2,
        client_sys=0.05,
        server_sys=0.05,
        payload_bytes=10_000,
        rep=rep,
    )


def test_the_report_gives_cryo_ratios_to_peers_from_the_same_repetitions() -> None:
    # cryo twice as fast as grpcio on W1 in every rep, although the machine slowed
    # down fourfold between reps: paired ratios must still say 2.00x.
    results = []
    for rep, slowdown in ((1, 1.0), (2, 4.0), (3, 2.0)):
        results.append(_result(CRYO, "W1", rep, 0.5 * slowdown))
        results.append(_result(GRPCIO, "W1", rep, 1.0 * slowdown))
    record = RunRecord(
        started="now",
        options={"libs": [CRYO, GRPCIO], "reps": 3},
        environment={},
        load_before=(0.0, 0.0, 0.0),
        results=results,
    )

    report = render_report(record)

    assert "| W1 calls/s | 2.00x better |" in report
    # The median of cryo's rates over reps: 1000 calls in 1.0 s.
    assert "| cryo (wire, trio) | 1,000 |" in report


def test_the_report_calls_small_gaps_unresolved_and_lists_failures() -> None:
    results = [_result(CRYO, "W1", rep, 1.1) for rep in (1, 2, 3)]
    results += [_result(GRPCIO, "W1", rep, 1.0) for rep in (1, 2, 3)]
    failed = _result(CRYO, "W1", 4, 0.0)
    failed.error = "client did not finish within 300 s"
    results.append(failed)
    record = RunRecord(
        started="now",
        options={"libs": [CRYO, GRPCIO], "reps": 4},
        environment={},
        load_before=(0.0, 0.0, 0.0),
        results=results,
    )

    report = render_report(record)

    assert "0.91x (within noise)" in report
    assert "rep 4: client did not finish within 300 s" in report
    assert "| cryo (wire, trio) | W1 | 909 calls/s | 909 | 909 | 0 % |" in report


def test_cross_pairs_are_planned_only_where_both_sides_speak_grpc() -> None:
    cells = plan_cells([CRYO, GRPCIO, TCP_TRIO], ["W1", "W2"], cross=True)
    pairs = {(c.client, c.server, c.workload) for c in cells}

    assert (CRYO, GRPCIO, "W1") in pairs and (GRPCIO, CRYO, "W2") in pairs
    assert (TCP_TRIO, TCP_TRIO, "W1") in pairs
    assert (TCP_TRIO, TCP_TRIO, "W2") not in pairs  # the raw floor has no W2
    assert not any(TCP_TRIO in (c, s) and c != s for c, s, _ in pairs)


SITE = "/venv/lib/python3.11/site-packages"
COLLAPSED = "\n".join(
    [
        # h2 reached from cryo, with a stdlib leaf that h2 owns
        f"main (/r/bench/echo_clients.py:1);receive_data (/r/wire/connection.py:501);"
        f"H2Connection.receive_data ({SITE}/h2/connection.py:1519);"
        f"EnumType.__call__ (/usr/lib/python3.11/enum.py:700) 40",
        # cryo's own code
        "main (/r/bench/echo_clients.py:1);encode_prefix (/r/wire/framing.py:43) 20",
        # trio, and the socket call inside it
        f"main (/r/bench/echo_clients.py:1);unrolled_run ({SITE}/trio/_core/_run.py:2800) 30",
        f"main (/r/bench/echo_clients.py:1);"
        f"_SocketType._nonblocking_helper ({SITE}/trio/_socket.py:1050) 10",
        # asleep in epoll, and importing: not work
        f"main (/r/bench/echo_clients.py:1);EpollIOManager.get_events "
        f"({SITE}/trio/_core/_io_epoll.py:243) 500",
        "<module> (/r/x.py:1);_find_and_load (<frozen importlib._bootstrap>:1176) 7",
        # another thread, blocked on stdin
        "Thread._bootstrap (/usr/lib/python3.11/threading.py:995);"
        "watch_stdin (/r/bench/echo_servers.py:51) 99",
    ]
)


def test_profile_summary_attributes_samples_to_the_library_that_owns_them() -> None:
    summary = summarise(COLLAPSED, "client")

    assert summary.counted == 100
    assert (summary.epoll, summary.imports, summary.other_threads) == (500, 7, 99)
    assert summary.by_owner[HTTP2] == 40  # the enum call counts as h2's
    assert summary.by_owner[WIRE] == 20
    assert summary.by_owner[TRIO] == 30
    assert summary.by_owner[SOCKET] == 10
    assert summary.inclusive[WIRE] == 60
    assert summary.http2_entries[("H2Connection.receive_data", "wire/connection.py:501")] == 40
