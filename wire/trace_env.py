"""`CRYO_TRACE`: tracing turned on from the environment, for any program built on wire.

    CRYO_TRACE=trace.jsonl cryo demo          # JSON lines (schema v1)
    CRYO_TRACE=trace.html  cryo-runtime …     # the HTML sequence diagram
    CRYO_TRACE=trace.txt   …                  # the terminal timeline, in a file
    CRYO_TRACE=-           …                  # the timeline on stderr

Owns: reading the variable, installing a collector as the tracer of every `ClientConn`
and `Server` made from then on, and writing what it collected when the program ends,
in the format the destination's name asks for; and the name a child program gets
(`child_destination`), so that a daemon and the runtime it starts each write their
own file and neither overwrites the other.

Must not: be imported by the sans-I/O core, or write anywhere but the destination
named. A collector keeps every event until the end: this is for runs that end, not
for a daemon left running for days.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wire.trace import TraceCollector, TraceEvent, install_tracer
from wire.tracing import render_html, render_terminal, to_json_lines

TRACE_ENV = "CRYO_TRACE"
FORMATS = ("terminal", "jsonl", "html")


def render(events: Sequence[TraceEvent], fmt: str, *, color: bool = False) -> str:
    """*events* in one of `FORMATS`."""
    if fmt == "jsonl":
        return to_json_lines(events)
    if fmt == "html":
        return render_html(events)
    return render_terminal(events, color=color)


def use_color(stream: Any) -> bool:
    """Colour for a terminal, unless NO_COLOR is set."""
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def format_for(destination: str) -> str:
    """The format a destination's name asks for: .html, .txt, else JSON lines."""
    if destination.endswith((".html", ".htm")):
        return "html"
    if destination.endswith(".txt"):
        return "terminal"
    return "jsonl"


def child_destination(destination: str, child: str) -> str:
    """Where a child program started by this one writes its trace: `trace.jsonl` →
    `trace.<child>.jsonl`; `-` stays `-` (the child's stderr is its own)."""
    if destination == "-":
        return destination
    path = Path(destination)
    return str(path.with_name(f"{path.stem}.{child}{path.suffix}"))


def trace_from_env(
    environ: Mapping[str, str] | None = None, *, program: str = "cryo"
) -> Callable[[], None] | None:
    """Honour `CRYO_TRACE`: install a collector for every connection and server made
    from now on; returns the function that writes what it collected (or None)."""
    destination = (environ if environ is not None else os.environ).get(TRACE_ENV)
    if not destination:
        return None
    collector = TraceCollector()
    install_tracer(collector)

    def write() -> None:
        install_tracer(None)
        if destination == "-":
            sys.stderr.write(render_terminal(collector.events, color=use_color(sys.stderr)))
            return
        try:
            text = render(collector.events, format_for(destination))
            Path(destination).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"{program}: cannot write the trace to {destination}: {exc}", file=sys.stderr)

    return write
