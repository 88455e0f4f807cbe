"""Regenerate the interop test messages from the official gRPC test protos.

This module owns one job: run protoc (from grpcio-tools) on `grpc/testing/test.proto`,
`messages.proto` and `empty.proto` as Debian's `grpc-proto` package installs them, and
write `test_pb2`, `messages_pb2`, `empty_pb2` (with `.pyi` stubs) and the grpcio stubs
`test_pb2_grpc` into this folder. It must not touch any other folder or edit the
protos themselves.

protoc names Python modules after the proto path, so the generated code says
`from grpc.testing import messages_pb2`. That would look inside grpcio's own `grpc`
package, which has no `testing` module, so every such import is rewritten to
`from proto.interop import ...`. The protos keep their official file names in the
descriptor pool (`grpc/testing/test.proto`), as other gRPC implementations register
them.

Run it as `python -m proto.interop.generate [--proto-root DIR]`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path("/usr/share/grpc-proto")
PROTO_FILES = ("grpc/testing/empty.proto", "grpc/testing/messages.proto",
               "grpc/testing/test.proto")
OUTPUT_DIR = Path(__file__).resolve().parent
GENERATED = ("empty_pb2.py", "empty_pb2.pyi", "messages_pb2.py", "messages_pb2.pyi",
             "test_pb2.py", "test_pb2.pyi", "test_pb2_grpc.py")

# `from grpc.testing import x_pb2 ...` in .py, .pyi and _grpc.py output alike.
_IMPORT_PATTERN = re.compile(r"^from grpc\.testing import ", re.MULTILINE)


def rewrite_imports(source: str) -> str:
    """Point the generated cross-module imports at this package instead of `grpc.testing`."""
    return _IMPORT_PATTERN.sub("from proto.interop import ", source)


def generate(proto_root: Path = PROTO_ROOT, output_dir: Path = OUTPUT_DIR) -> list[Path]:
    """Run protoc into a scratch folder, rewrite imports, and move the results here."""
    from grpc_tools import protoc  # grpcio-tools is a development dependency only

    missing = [name for name in PROTO_FILES if not (proto_root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)} not found under {proto_root} (install Debian's grpc-proto)"
        )
    written: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="cryo-interop-protoc-") as scratch:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *PROTO_FILES,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)}")
        produced = Path(scratch) / "grpc" / "testing"
        for name in GENERATED:
            target = output_dir / name
            target.write_text(rewrite_imports((produced / name).read_text()))
            written.append(target)
        # protoc also writes empty `_grpc.py` files for the protos without services;
        # only test.proto has any, so the others are not kept.
        leftovers = sorted(p.name for p in produced.iterdir() if p.name not in GENERATED)
        unexpected = [n for n in leftovers if n not in ("empty_pb2_grpc.py",
                                                         "messages_pb2_grpc.py")]
        if unexpected:
            raise RuntimeError(f"protoc produced unexpected files: {', '.join(unexpected)}")
    shutil.rmtree(output_dir / "__pycache__", ignore_errors=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--proto-root", type=Path, default=PROTO_ROOT,
                        help="folder that holds grpc/testing/*.proto (default: %(default)s)")
    options = parser.parse_args(argv)
    for path in generate(options.proto_root):
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
