"""Where the time goes: a summary of a sampled profile in collapsed-stack form.

py-spy's `--format raw` writes one line per distinct stack, `frame;frame;… count`,
each frame `function (path:line)`. This module reads that text and says how the
samples split between HTTP/2 (h2, hpack, hyperframe), cryo's `wire/`, trio, the
socket system calls, protobuf and the rest, and which functions cost the most. It
must not run a profiler or a benchmark; the runner does.

Attribution: a sample belongs to its innermost frame that is not the standard
library (so `enum.__call__` reached from h2 counts as h2's, and a dataclass
`__init__` counts for whoever built the object). Samples whose innermost frame is
trio's epoll wait are the process asleep or just woken, not work: they are counted
apart, as are samples taken while modules were being imported, and samples of threads
other than the main one (a trio process does all its work on the main thread; the
others only wait, and the sampler does not always see that they are idle).
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field

HTTP2 = "h2/hpack/hyperframe"
WIRE = "cryo wire/"
TRIO = "trio"
SOCKET = "socket send/recv (syscall)"
PROTOBUF = "protobuf"
GRPCIO = "grpcio"
BENCH = "bench harness"
ASYNCIO = "asyncio"
STDLIB = "stdlib"
OTHER = "other"

CATEGORY_ORDER = (HTTP2, WIRE, TRIO, SOCKET, PROTOBUF, GRPCIO, ASYNCIO, BENCH, STDLIB, OTHER)

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    path: str
    line: int

    @property
    def short_path(self) -> str:
        """The path from the package root: `h2/connection.py`, `wire/client.py`."""
        for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/"):
            cut = self.path.rfind(marker)
            if cut >= 0:
                return self.path[cut + len(marker) :]
        for top in ("/wire/", "/bench/", "/proto/"):
            cut = self.path.rfind(top)
            if cut >= 0:
                return self.path[cut + 1 :]
        return self.path

    @property
    def category(self) -> str:
        path = self.path
        if "site-packages/" in path:
            package = path[path.rfind("site-packages/") + len("site-packages/") :].split("/")[0]
            if package in ("h2", "hpack", "hyperframe"):
                return HTTP2
            if package in ("trio", "outcome", "sniffio"):
                if package == "trio" and self.function == "_SocketType._nonblocking_helper":
                    return SOCKET
                return TRIO
            if package == "google":
                return PROTOBUF
            if package == "grpc":
                return GRPCIO
            if package in ("attr", "_pytest", "pluggy"):
                return STDLIB  # library plumbing: let the caller own it
            return OTHER
        if "/wire/" in path:
            return WIRE
        if "/bench/" in path or "/proto/" in path:
            return BENCH
        if "/asyncio/" in path:
            return ASYNCIO
        if path.startswith("<") or "/lib/python3" in path:
            return STDLIB
        return OTHER


def parse_frame(text: str) -> Frame:
    match = _FRAME.match(text.strip())
    if match is None:
        return Frame(text.strip(), "", 0)
    line = match.group("line")
    return Frame(match.group("function"), match.group("path"), int(line) if line else 0)


def parse_collapsed(text: str) -> list[tuple[list[Frame], int]]:
    """Stacks (outermost frame first) and their sample counts."""
    stacks: list[tuple[list[Frame], int]] = []
    for raw in text.splitlines():
        raw = raw.rstrip()
        if not raw:
            continue
        body, _, count = raw.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [parse_frame(part) for part in body.split(";") if part.strip()]
        stacks.append((frames, int(count)))
    return stacks


def _is_import(frames: list[Frame]) -> bool:
    return any(f.function in ("_find_and_load", "_handle_fromlist") for f in frames)


def _is_other_thread(frames: list[Frame]) -> bool:
    return any(f.function == "Thread._bootstrap" for f in frames[:2])


def _is_epoll_wait(frames: list[Frame]) -> bool:
    return bool(frames) and frames[-1].function.endswith("IOManager.get_events")


def _owner(frames: list[Frame]) -> Frame | None:
    """The innermost frame outside the standard library."""
    for frame in reversed(frames):
        if frame.category != STDLIB:
            return frame
    return None


@dataclass(slots=True)
class ProfileSummary:
    """Shares of one process's samples (see the module docstring for the rules)."""

    name: str
    total: int = 0
    imports: int = 0
    epoll: int = 0
    no_python: int = 0
    other_threads: int = 0
    counted: int = 0
    by_owner: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    owner_functions: Counter[tuple[str, str]] = field(default_factory=Counter)
    owner_lines: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    wire_inclusive: Counter[tuple[str, str]] = field(default_factory=Counter)
    http2_entries: Counter[tuple[str, str]] = field(default_factory=Counter)

    def share(self, count: int) -> float:
        return count / self.counted if self.counted else 0.0

    def hottest_line(self, function: str, path: str) -> int:
        lines = [
            (n, line) for (f, p, line), n in self.owner_lines.items() if f == function and p == path
        ]
        return max(lines)[1] if lines else 0


def summarise(text: str, name: str) -> ProfileSummary:
    summary = ProfileSummary(name)
    for frames, count in parse_collapsed(text):
        summary.total += count
        if not frames:
            summary.no_python += count
            continue
        if _is_other_thread(frames):
            summary.other_threads += count
            continue
        if _is_import(frames):
            summary.imports += count
            continue
        if _is_epoll_wait(frames):
            summary.epoll += count
            continue
        summary.counted += count
        owner = _owner(frames)
        category = owner.category if owner is not None else STDLIB
        summary.by_owner[category] += count
        if owner is not None:
            summary.owner_functions[(owner.function, owner.short_path)] += count
            summary.owner_lines[(owner.function, owner.short_path, owner.line)] += count
        for category in {f.category for f in frames}:
            summary.inclusive[category] += count
        for key in {(f.function, f.short_path) for f in frames if f.category == WIRE}:
            summary.wire_inclusive[key] += count
        entries: set[tuple[str, str]] = set()
        for caller, callee in itertools.pairwise(frames):
            if caller.category == WIRE and callee.category == HTTP2:
                entries.add((callee.function, f"{caller.short_path}:{caller.line}"))
        for key in entries:
            summary.http2_entries[key] += count
    return summary


def _pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def render_markdown(summary: ProfileSummary, *, top: int = 15) -> str:
    """The summary as Markdown: shares by owner, inclusive shares, hottest functions."""
    out = [
        f"#### {summary.name}",
        "",
        f"{summary.total} samples: {summary.counted} counted, {summary.epoll} in trio's "
        f"epoll wait (asleep or just woken), {summary.imports} importing, "
        f"{summary.no_python} with no Python frame, {summary.other_threads} in threads "
        "other than the main one.",
        "",
        "| owner (innermost non-stdlib frame) | self share | inclusive share |",
        "|---|---|---|",
    ]
    for category in CATEGORY_ORDER:
        own, incl = summary.by_owner.get(category, 0), summary.inclusive.get(category, 0)
        if own or incl:
            out.append(f"| {category} | {_pct(summary.share(own))} | {_pct(summary.share(incl))} |")
    out += ["", "| self share | function | hottest line |", "|---|---|---|"]
    for (function, path), count in summary.owner_functions.most_common(top):
        line = summary.hottest_line(function, path)
        out.append(f"| {_pct(summary.share(count))} | `{function}` | `{path}:{line}` |")
    if summary.wire_inclusive:
        out += ["", "| inclusive share | cryo function |", "|---|---|"]
        for (function, path), count in summary.wire_inclusive.most_common(top):
            out.append(f"| {_pct(summary.share(count))} | `{function}` ({path}) |")
    if summary.http2_entries:
        out += ["", "| inclusive share | h2 entry point | called from |", "|---|---|---|"]
        for (function, site), count in summary.http2_entries.most_common(top):
            out.append(f"| {_pct(summary.share(count))} | `{function}` | `{site}` |")
    return "\n".join(out) + "\n"
