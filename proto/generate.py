"""The one command that regenerates every generated module under `proto/`.

    python -m proto.generate            # rewrite what changed
    python -m proto.generate --check    # exit 1 if the checked-in output is stale

This module owns the list of what is generated and how: grpcio-tools' protoc, run
from the repository top (`-I .`, so that modules import as `proto.x.y_pb2`), makes
`_pb2.py` and `.pyi` for every `.proto` under `proto/`, cryo's typed stubs
(`_cryo.py`, by `protoc-gen-cryo`) and grpcio's stubs (`_pb2_grpc.py`, for the
benchmarks and interop peers) for every file that declares a service. The official
protos that cryo does not own come from Debian's `grpc-proto` package at generation
time: the interop test protos into `proto/interop/`, the reflection protos into
`proto/reflection/v1alpha/` and `proto/reflection/v1/`. Those keep their official
file names in the descriptor pool (`grpc/testing/test.proto`), as other gRPC
implementations register them; only their generated imports are rewritten
(`from grpc.testing import` → `from proto.interop import`), since `grpc` is grpcio's
package.

It must not edit `.proto` sources or touch anything outside `proto/` under the root.
Output is compared byte for byte; only files that differ are written, generated files
whose source is gone are removed, and a missing package `__init__.py` is created.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GRPC_PROTO_ROOT = Path("/usr/share/grpc-proto")

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_cryo.py")


@dataclass(frozen=True)
class ExternalProtos:
    """Protos taken from another tree at generation time, and where their modules go."""

    files: tuple[str, ...]
    module_map: Mapping[str, str] = field(default_factory=dict)


# The official protos cryo uses but does not own. Keys of `module_map` are the Python
# packages protoc names after the proto paths; values are where cryo keeps them.
GRPC_PROTO = ExternalProtos(
    files=(
        "grpc/testing/empty.proto",
        "grpc/testing/messages.proto",
        "grpc/testing/test.proto",
        "grpc/reflection/v1alpha/reflection.proto",
        "grpc/reflection/v1/reflection.proto",
    ),
    module_map={
        "grpc.testing": "proto.interop",
        "grpc.reflection.v1alpha": "proto.reflection.v1alpha",
        "grpc.reflection.v1": "proto.reflection.v1",
    },
)


class GenerationError(Exception):
    """protoc failed, or an input is missing; the message says which."""


# -- running protoc ----------------------------------------------------------------------


def compile_protos(
    include: Path,
    files: Sequence[str],
    out: Path,
    *,
    module_map: Mapping[str, str] | None = None,
    extra_includes: Sequence[Path] = (),
) -> None:
    """Run protoc on `files` (paths relative to `include`), writing every output to `out`.

    Messages (`_pb2.py`, `.pyi`), grpcio stubs (`_pb2_grpc.py`) and cryo stubs
    (`_cryo.py`) all land at the files' own relative paths under `out`.
    """
    from grpc_tools import protoc  # grpcio-tools is a development dependency only

    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="cryo-plugin-") as plugin_dir:
        plugin = _plugin_executable(Path(plugin_dir))
        options = ",".join(f"module={old}={new}" for old, new in (module_map or {}).items())
        args = [
            "grpc_tools.protoc",
            f"--proto_path={include}",
            *(f"--proto_path={path}" for path in extra_includes),
            f"--proto_path={well_known}",
            f"--plugin=protoc-gen-cryo={plugin}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            f"--cryo_out={out}",
            *([f"--cryo_opt={options}"] if options else []),
            *(str(include / name) for name in files),
        ]
        if protoc.main(args) != 0:
            raise GenerationError(f"protoc failed on {', '.join(files)} (its errors are above)")


def _plugin_executable(directory: Path) -> Path:
    """A `protoc-gen-cryo` that runs this checkout's plugin with this interpreter.

    protoc starts plugins as executables; this one does not depend on the project
    being installed, so the plugin that runs is always the one next to this file.
    """
    script = directory / "protoc-gen-cryo"
    code_root = shlex.quote(str(REPO_ROOT))
    script.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={code_root}${{PYTHONPATH:+:$PYTHONPATH}} exec {shlex.quote(sys.executable)}"
        " -m proto.plugin\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


# -- what the tree should hold -----------------------------------------------------------


def owned_protos(root: Path) -> list[str]:
    """The .proto files cryo owns: every one under `root/proto`, relative to `root`."""
    return sorted(
        path.relative_to(root).as_posix()
        for path in (root / "proto").rglob("*.proto")
        if "__pycache__" not in path.parts
    )


def build(root: Path, grpc_proto_root: Path = GRPC_PROTO_ROOT) -> dict[str, bytes]:
    """Every generated file's content, by path relative to `root`."""
    missing = [name for name in GRPC_PROTO.files if not (grpc_proto_root / name).is_file()]
    if missing:
        raise GenerationError(
            f"{', '.join(missing)} not found under {grpc_proto_root} "
            "(install Debian's grpc-proto package, or pass --grpc-proto DIR)"
        )
    generated: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="cryo-generate-") as scratch:
        own = Path(scratch) / "own"
        own.mkdir()
        sources = owned_protos(root)
        if sources:
            compile_protos(root, sources, own)
            generated.update(_collect(own, {}))
        external = Path(scratch) / "external"
        external.mkdir()
        compile_protos(
            grpc_proto_root, GRPC_PROTO.files, external, module_map=GRPC_PROTO.module_map
        )
        for path, content in _collect(external, GRPC_PROTO.module_map).items():
            if path in generated:
                raise GenerationError(f"{path} would come both from proto/ and from grpc-proto")
            generated[path] = content
    return generated


def _collect(out: Path, module_map: Mapping[str, str]) -> dict[str, bytes]:
    """Read protoc's output, moved and import-rewritten by `module_map`.

    grpcio's generator writes a `_pb2_grpc.py` for every file, services or not; one is
    kept only where protoc-gen-cryo found services too (it writes `_cryo.py` then).
    """
    found: dict[str, bytes] = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(out).as_posix()
        stub = path.parent / path.name.replace("_pb2_grpc.py", "_cryo.py")
        if relative.endswith("_pb2_grpc.py") and not stub.exists():
            continue
        content = path.read_bytes()
        directory, _, name = relative.rpartition("/")
        package = directory.replace("/", ".")
        if package in module_map:
            relative = f"{module_map[package].replace('.', '/')}/{name}"
        found[relative] = _rewrite_imports(content, module_map)
    return found


def _rewrite_imports(content: bytes, module_map: Mapping[str, str]) -> bytes:
    for old, new in module_map.items():
        pattern = re.compile(rb"^from " + re.escape(old.encode()) + rb" import ", re.MULTILINE)
        content = pattern.sub(b"from " + new.encode() + b" import ", content)
    return content


# -- comparing and writing ---------------------------------------------------------------


@dataclass
class Plan:
    """How the tree under `root` differs from what generation gives."""

    changed: list[str] = field(default_factory=list)  # missing or different
    orphaned: list[str] = field(default_factory=list)  # generated, but no longer made
    missing_packages: list[str] = field(default_factory=list)  # __init__.py to create

    @property
    def stale(self) -> bool:
        return bool(self.changed or self.orphaned or self.missing_packages)


def plan(root: Path, generated: Mapping[str, bytes]) -> Plan:
    result = Plan()
    for relative, content in sorted(generated.items()):
        target = root / relative
        if not target.is_file() or target.read_bytes() != content:
            result.changed.append(relative)
    for path in sorted((root / "proto").rglob("*")):
        relative = path.relative_to(root).as_posix()
        if (
            path.is_file()
            and path.name.endswith(GENERATED_SUFFIXES)
            and "__pycache__" not in path.parts
            and relative not in generated
        ):
            result.orphaned.append(relative)
    packages = {
        parent for relative in generated for parent in Path(relative).parents if parent != Path(".")
    }
    for package in sorted(packages):
        if not (root / package / "__init__.py").is_file():
            result.missing_packages.append((package / "__init__.py").as_posix())
    return result


def apply(root: Path, generated: Mapping[str, bytes], result: Plan) -> None:
    for relative in result.missing_packages:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        package = Path(relative).parent.as_posix()
        target.write_text(f'"""Generated modules of {package} (`python -m proto.generate`)."""\n')
    for relative in result.changed:
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write next to the target, then rename: a reader never sees half a module.
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_bytes(generated[relative])
        os.replace(temporary, target)
    for relative in result.orphaned:
        (root / relative).unlink()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proto.generate",
        description="Regenerate every generated module under proto/.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if the checked-in output is stale",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT,
        help="the repository top that holds proto/ (default: this checkout)",
    )
    parser.add_argument(
        "--grpc-proto",
        type=Path,
        default=GRPC_PROTO_ROOT,
        help="where Debian's grpc-proto installed grpc/ (default: %(default)s)",
    )
    options = parser.parse_args(argv)
    root: Path = options.root.resolve()
    try:
        generated = build(root, options.grpc_proto)
    except GenerationError as exc:
        print(f"proto.generate: {exc}", file=sys.stderr)
        return 2
    result = plan(root, generated)
    if options.check:
        if not result.stale:
            print(f"proto.generate: {len(generated)} generated files are up to date")
            return 0
        for relative in result.changed:
            print(f"stale: {relative}", file=sys.stderr)
        for relative in result.orphaned:
            print(f"no longer generated: {relative}", file=sys.stderr)
        for relative in result.missing_packages:
            print(f"missing: {relative}", file=sys.stderr)
        print(
            "proto.generate: generated files are stale; run `python -m proto.generate`",
            file=sys.stderr,
        )
        return 1
    apply(root, generated, result)
    for relative in result.missing_packages + result.changed:
        print(f"wrote {relative}")
    for relative in result.orphaned:
        print(f"removed {relative}")
    if not result.stale:
        print(f"proto.generate: {len(generated)} generated files are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
