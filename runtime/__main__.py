"""``python -m runtime`` (also ``cryo-runtime``): run the container runtime server.

    python -m runtime --listen unix:///run/cryo/runtime.sock --state-dir /run/cryo/runtime

Owns: the command line (containerd 0.2's flag names ``--listen`` and ``--state-dir``,
plus ``--criu``, ``--runc`` and ``--checkpoint-root``), the start-up order (state
directory, recovery of interrupted checkpoints, CRIU probe, event log, container table,
then listeners), ``CRYO_TRACE`` as every cryo program honours it, and shutdown on
SIGTERM or SIGINT (health turns NOT_SERVING, event streams end, in-flight calls get a
grace period, then containers are stopped).

Must not: do any request handling itself, or exit while a container it started runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from proto.health_service import SERVING
from runtime.capabilities import CriuSupport, find_runc
from runtime.checkpoints import CheckpointStore
from runtime.containers import open_container_table
from runtime.events import EventLog
from runtime.runc import Runc
from runtime.server import build_server
from runtime.state import StateLayout
from wire.trace_env import trace_from_env

log = logging.getLogger("runtime")

DEFAULT_LISTEN = "unix:///run/cryo/runtime.sock"
DEFAULT_STATE_DIR = "/run/cryo/runtime"
SHUTDOWN_GRACE = 5.0


def parse_listen(address: str) -> tuple[str, str, int]:
    """``unix:///path`` → ("unix", path, 0); ``tcp://host:port`` → ("tcp", host, port)."""
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/"):
            raise argparse.ArgumentTypeError(f"{address}: a unix socket needs an absolute path")
        return ("unix", path, 0)
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://") :].rpartition(":")
        if not host or not port.isdigit():
            raise argparse.ArgumentTypeError(f"{address}: expected tcp://host:port")
        return ("tcp", host.strip("[]"), int(port))
    raise argparse.ArgumentTypeError(f"{address}: expected unix:///path or tcp://host:port")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryo-runtime",
        description="containerd-0.2-style container runtime that checkpoints with CRIU",
    )
    parser.add_argument(
        "-l",
        "--listen",
        action="append",
        type=parse_listen,
        help=f"address to serve on, repeatable (default: {DEFAULT_LISTEN}); "
        "unix sockets are created with mode 0600",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(DEFAULT_STATE_DIR),
        help="where container records, the event log and runc state live (default: %(default)s)",
    )
    parser.add_argument(
        "--criu", help="CRIU binary (default: $CRYO_CRIU, the cryo build cache, then PATH)"
    )
    parser.add_argument("--runc", help="runc binary (default: runc on PATH)")
    parser.add_argument(
        "--checkpoint-root",
        action="append",
        type=Path,
        default=[],
        help="only allow absolute checkpoint directories inside this one (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    return parser


async def serve(options: argparse.Namespace) -> None:
    listen = options.listen or [parse_listen(DEFAULT_LISTEN)]
    layout = StateLayout(options.state_dir.absolute())
    layout.create()
    store = CheckpointStore(layout.journal)
    for path in store.recover():
        log.info("removed %s, left by an interrupted checkpoint operation", path)
    criu = await CriuSupport.probe(options.criu)
    if criu.binary is None:
        log.warning("checkpoints are unavailable: %s", criu.problem)
    else:
        log.info("using %s at %s", criu.describe(), criu.binary.path)
    runc_path = find_runc(options.runc)
    runc = None
    if runc_path is not None:
        runc = Runc(runc_path, layout.runc_root, criu.binary.path if criu.binary else None)
    else:
        log.warning("runc containers are unavailable: no runc found")
    events = EventLog(layout.events)
    events.open()
    try:
        async with open_container_table(
            layout, events, store, criu, runc, checkpoint_roots=options.checkpoint_root
        ) as table:
            server, health = build_server(table, events)
            async with trio.open_nursery() as nursery:
                for kind, where, port in listen:
                    if kind == "unix":
                        Path(where).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                        await nursery.start(server.serve_unix, where)
                        log.info("serving types.API on unix://%s", where)
                    else:
                        bound = await nursery.start(server.serve_tcp, port, where)
                        log.info("serving types.API on tcp://%s:%d", where, bound)
                health.set("", SERVING)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        break
                health.enter_graceful_shutdown()
                events.end_subscriptions()  # open Events streams would hold the grace up
                await server.shutdown(SHUTDOWN_GRACE)
                nursery.cancel_scope.cancel()
    finally:
        events.close()


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if options.debug:
        # The runtime's own debug messages, not those of every library (hpack's are many).
        logging.getLogger("runtime").setLevel(logging.DEBUG)
    write_trace = trace_from_env(program="cryo-runtime")  # CRYO_TRACE, as for `cryo`
    try:
        trio.run(serve, options)
    finally:
        if write_trace is not None:
            write_trace()
    return 0


if __name__ == "__main__":
    sys.exit(main())
