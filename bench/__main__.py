"""`python -m bench`: run the gRPC workloads W1-W5 and write the Markdown report.

    python -m bench [--workloads W1,W2,...] [--libs cryo,grpcio,grpcio-aio]
                    [--reps 5] [--profile] [--cross] [--scale 1.0] [--heap steady]
                    [--out bench/results/<timestamp>.md]

The report is printed and written to `--out`; the raw results go next to it as JSON
(same name, `.json`), and with `--profile` the profiles go into a folder beside it
(same name, `.profiles/`). This module only parses arguments and wires the runner to
the report.

`--heap steady` runs every process, of every library alike, with glibc's malloc told
to keep freed memory (see `bench.runner.STEADY_HEAP_TUNABLES`): W3 then measures the
libraries rather than how often the kernel hands pages back and forth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from bench.report import write_report
from bench.runner import (
    HEAPS,
    REPO,
    RunOptions,
    find_profiler,
    log_to_stderr,
    run_benchmark,
    run_profiles,
    set_heap,
)
from bench.workloads import CRYO, DEFAULT_LIBRARIES, LIBRARIES, WORKLOADS


def _names(text: str, allowed: object, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]  # type: ignore[operator]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(unknown) or '(none)'}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        type=lambda t: _names(t, WORKLOADS, "workload"),
        help="comma-separated, from W1..W5 (default: all)",
    )
    parser.add_argument(
        "--libs",
        default=",".join(DEFAULT_LIBRARIES),
        type=lambda t: _names(t, LIBRARIES, "library"),
        help=f"comma-separated, from {', '.join(LIBRARIES)}",
    )
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the cryo cells (py-spy, else pyinstrument)",
    )
    parser.add_argument("--profile-rate", type=int, default=250, help="samples per second")
    parser.add_argument(
        "--cross", action="store_true", help="also run cryo against each peer, both directions"
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every count (for quick checks; figures not comparable)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one client process may take"
    )
    parser.add_argument(
        "--heap",
        choices=HEAPS,
        default="default",
        help="glibc malloc settings for every process: default, or steady (keep freed memory)",
    )
    parser.add_argument("--out", type=Path, help="report path (default: bench/results/<UTC>.md)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.scale <= 0:
        parser.error("--scale must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_heap(args.heap)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or REPO / "bench" / "results" / f"{stamp}.md"
    options = RunOptions(
        workloads=args.workloads,
        libs=args.libs,
        reps=args.reps,
        scale=args.scale,
        cross=args.cross,
        timeout=args.timeout,
        profile=args.profile,
        profile_rate=args.profile_rate,
    )
    record = run_benchmark(options)
    if args.profile:
        profiler = find_profiler(args.profile_rate)
        if profiler is None:
            record.notes.append("--profile: neither py-spy nor pyinstrument is installed")
        elif CRYO not in args.libs:
            record.notes.append("--profile: cryo was not among the libraries run")
        else:
            profile_dir = out.with_suffix(".profiles")
            record.profiles.extend(run_profiles(options, profile_dir, profiler))
    text = write_report(record, out)
    out.with_suffix(".json").write_text(json.dumps(record.to_json(), indent=1))
    print(text)
    log_to_stderr(f"report written to {out}")
    failed = any(r.error is not None for r in record.results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
