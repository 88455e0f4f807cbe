"""From a run's results to figures and a Markdown report.

Owns the arithmetic bench.md asks for — medians over repetitions, the spread of each
cell, CPU seconds per 10,000 calls, and cryo's ratios to the peers measured in the
same run — and the report's layout. It must not run anything: it reads a `RunRecord`.

Ratios are the median of per-repetition ratios (cryo's rep k over the peer's rep k):
repetitions are interleaved, so the two cells of one repetition saw the same machine
load, and the ratio cancels most of the drift between repetitions.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.runner import RunRecord
from bench.stack_profile import render_markdown, summarise
from bench.workloads import CRYO, LIBRARY_TITLES, WORKLOADS, CellResult

UNRESOLVED = 0.30
"""bench.md: on these machines, gaps under about 30 % are within the noise."""


@dataclass(slots=True)
class CellStats:
    """One (client, server, workload) cell over all its repetitions."""

    client: str
    server: str
    workload: str
    results: list[CellResult] = field(default_factory=list)

    @property
    def ok(self) -> list[CellResult]:
        return [r for r in self.results if r.error is None]

    @property
    def errors(self) -> list[str]:
        return [f"rep {r.rep}: {r.error}" for r in self.results if r.error is not None]

    def median(self, value: Callable[[CellResult], float]) -> float:
        values = [v for v in (value(r) for r in self.ok) if not math.isnan(v)]
        return statistics.median(values) if values else math.nan

    @property
    def rate(self) -> float:
        return self.median(lambda r: r.rate)

    @property
    def spread(self) -> float:
        """(max - min) / median of the rate, the noise figure of bench.md."""
        rates = [r.rate for r in self.ok]
        if len(rates) < 2:
            return math.nan
        return (max(rates) - min(rates)) / statistics.median(rates)


def pair_name(client: str, server: str) -> str:
    if client == server:
        return LIBRARY_TITLES.get(client, client)
    return f"{client} client → {server} server"


def collect(results: Sequence[CellResult]) -> dict[tuple[str, str, str], CellStats]:
    cells: dict[tuple[str, str, str], CellStats] = {}
    for result in results:
        key = (result.client, result.server, result.workload)
        cells.setdefault(key, CellStats(*key)).results.append(result)
    return cells


def ratio(
    cells: dict[tuple[str, str, str], CellStats],
    workload: str,
    peer: str,
    value: Callable[[CellResult], float],
) -> tuple[float, int]:
    """Median over repetitions of cryo's value over the peer's, and how many reps paired."""
    ours = cells.get((CRYO, CRYO, workload))
    theirs = cells.get((peer, peer, workload))
    if ours is None or theirs is None:
        return math.nan, 0
    by_rep = {r.rep: r for r in theirs.ok}
    ratios = []
    for mine in ours.ok:
        other = by_rep.get(mine.rep)
        if other is None:
            continue
        a, b = value(mine), value(other)
        if b > 0 and not (math.isnan(a) or math.isnan(b)):
            ratios.append(a / b)
    return (statistics.median(ratios) if ratios else math.nan), len(ratios)


def _num(value: float, digits: int = 0) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{value * 100:.0f} %"


def _ratio_text(value: float, n: int, *, higher_is_better: bool) -> str:
    if math.isnan(value):
        return "—"
    text = f"{value:.2f}x"
    if n < 3:
        return text + f" (only {n} paired reps: unresolved)"
    if abs(value - 1) < UNRESOLVED and abs(1 / value - 1) < UNRESOLVED:
        return text + " (within noise)"
    better = value > 1 if higher_is_better else value < 1
    return text + (" better" if better else " worse")


@dataclass(frozen=True, slots=True)
class Figure:
    """A column of the main table."""

    workload: str
    title: str
    value: Callable[[CellResult], float]
    digits: int = 0
    higher_is_better: bool = True


FIGURES = (
    Figure("W1", "W1 calls/s", lambda r: r.rate),
    Figure("W1", "W1 p50 µs", lambda r: r.p50_us, higher_is_better=False),
    Figure("W1", "W1 p99 µs", lambda r: r.p99_us, higher_is_better=False),
    Figure("W2", "W2 calls/s", lambda r: r.rate),
    Figure("W3", "W3 MB/s", lambda r: r.rate),
    Figure("W4", "W4 msgs/s", lambda r: r.rate),
    Figure("W5", "W5 rt/s", lambda r: r.rate),
    Figure("W1", "CPU s / 10k W1", lambda r: r.cpu_per_10k, 2, higher_is_better=False),
    Figure("W2", "CPU s / 10k W2", lambda r: r.cpu_per_10k, 2, higher_is_better=False),
)


def _pairs(
    record: RunRecord, cells: dict[tuple[str, str, str], CellStats]
) -> list[tuple[str, str]]:
    libs = [str(lib) for lib in record.options.get("libs", [])]  # type: ignore[attr-defined]
    pairs = [(lib, lib) for lib in libs]
    for client, server, _ in cells:
        if (client, server) not in pairs:
            pairs.append((client, server))
    return [p for p in pairs if any((p[0], p[1], w) in cells for w in WORKLOADS)]


def render_report(record: RunRecord, *, profile_top: int = 15) -> str:
    cells = collect(record.results)
    workloads = [w for w in WORKLOADS if any(k[2] == w for k in cells)]
    figures = [f for f in FIGURES if f.workload in workloads]
    pairs = _pairs(record, cells)
    reps = record.options.get("reps", "?")
    env = record.environment
    out: list[str] = [f"# cryo benchmarks, {record.started}", ""]

    out += [
        "## How this was measured",
        "",
        f"Server and client are separate processes on 127.0.0.1; each cell warms up "
        f"unmeasured on its own connection first; {reps} repetitions interleaved across "
        "libraries (the library order rotates each repetition); medians reported. CPU is "
        "user + system seconds of both processes over the measured part. MB = 10^6 bytes "
        "of request payload. Ratios are medians of per-repetition ratios (same machine "
        f"load). Gaps under {UNRESOLVED:.0%} are within this machine's noise (bench.md).",
        "",
        "Workloads: " + "; ".join(f"{w} = {WORKLOADS[w].title}" for w in workloads) + ".",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in env.items()) + ".",
        "",
    ]
    if env.get("GLIBC_TUNABLES", "(none)") != "(none)":
        out += [
            f"Heap: every process, of every library, ran with "
            f"GLIBC_TUNABLES={env['GLIBC_TUNABLES']} (`--heap steady`).",
            "",
        ]
    out += [
        f"Load average (1, 5, 15 min) before: {_loads(record.load_before)}; after: "
        f"{_loads(record.load_after)}. Finished {record.finished}. Other work on this "
        "2-core machine during the run shows up as spread below.",
        "",
    ]
    if record.options.get("scale", 1.0) != 1.0:
        out += [f"**Counts scaled by {record.options['scale']}: not comparable to full runs.**", ""]

    out += [f"## Figures (medians of {reps})", ""]
    out.append("| library | " + " | ".join(f.title for f in figures) + " |")
    out.append("|---|" + "---|" * len(figures))
    for client, server in pairs:
        row = []
        for f in figures:
            stats = cells.get((client, server, f.workload))
            row.append(_num(stats.median(f.value), f.digits) if stats is not None else "—")
        out.append(f"| {pair_name(client, server)} | " + " | ".join(row) + " |")
    out.append("")

    peers = [lib for lib, other in pairs if lib == other and lib != CRYO]
    if (CRYO, CRYO) in pairs and peers:
        out += [
            "## cryo relative to the peers in this run",
            "",
            "cryo's figure over the peer's (for latency and CPU, lower is better).",
            "",
        ]
        out.append("| figure | " + " | ".join(f"vs {LIBRARY_TITLES[p]}" for p in peers) + " |")
        out.append("|---|" + "---|" * len(peers))
        for f in figures:
            row = []
            for peer in peers:
                value, n = ratio(cells, f.workload, peer, f.value)
                row.append(_ratio_text(value, n, higher_is_better=f.higher_is_better))
            out.append(f"| {f.title} | " + " | ".join(row) + " |")
        out.append("")

    out += [
        "## Every cell",
        "",
        "| library | workload | median | min | max | spread | p50 µs | p99 µs | "
        "CPU s / 10k ops | kernel share of CPU | server share of CPU | reps ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for client, server in pairs:
        for w in workloads:
            stats = cells.get((client, server, w))
            if stats is None:
                continue
            rates = [r.rate for r in stats.ok]
            unit = WORKLOADS[w].unit
            out.append(
                f"| {pair_name(client, server)} | {w} | {_num(stats.rate)} {unit} | "
                f"{_num(min(rates)) if rates else '—'} | {_num(max(rates)) if rates else '—'} | "
                f"{_pct(stats.spread)} | {_num(stats.median(lambda r: r.p50_us))} | "
                f"{_num(stats.median(lambda r: r.p99_us))} | "
                f"{_num(stats.median(lambda r: r.cpu_per_10k), 2)} | "
                f"{_pct(stats.median(lambda r: r.kernel_share))} | "
                f"{_pct(stats.median(_server_share))} | "
                f"{len(stats.ok)}/{len(stats.results)} |"
            )
    out.append("")

    failures = [(k, e) for k, s in cells.items() for e in s.errors]
    if failures or record.notes:
        out += ["## Failures and notes", ""]
        out += [f"- {pair_name(c, s)} {w}, {e}" for (c, s, w), e in failures]
        out += [f"- {note}" for note in record.notes]
        out.append("")

    if record.profiles:
        out += [
            "## Where cryo's time goes (profiles)",
            "",
            "Separate, longer runs of the cryo cells under a sampling profiler, one side "
            "at a time; not part of the figures above. Raw profiles are next to this "
            "report.",
            "",
        ]
        for profile in record.profiles:
            if profile.kind == "py-spy" and profile.path.exists():
                summary = summarise(profile.path.read_text(), profile.name)
                out.append(render_markdown(summary, top=profile_top))
                out.append(f"Raw: `{profile.path.name}`")
                out.append("")
            else:
                out += [f"- {profile.name}: `{profile.path.name}`", ""]
    return "\n".join(out).rstrip() + "\n"


def _server_share(result: CellResult) -> float:
    total = result.client_cpu + result.server_cpu
    return result.server_cpu / total if total > 0 else math.nan


def _loads(loads: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in loads)


def write_report(record: RunRecord, out: Path) -> str:
    """Write the Markdown report at `out` and return its text."""
    text = render_report(record)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
