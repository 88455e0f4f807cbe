"""`python -m proto.generate` and the plugin as protoc runs them.

The checked-in output must be what generation gives today (this is the test that fails
when someone edits a .proto and forgets to regenerate), `--check` must notice each way
the output can go stale, and a plain run must put it right.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2

from proto.plugin import generate

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proto.generate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checked_in_output_is_up_to_date() -> None:
    result = run_generate("--check")
    assert result.returncode == 0, (
        f"generated files under proto/ are stale; run `python -m proto.generate`\n"
        f"{result.stdout}{result.stderr}"
    )


@pytest.fixture
def copy_root(tmp_path: Path) -> Path:
    """A copy of the repository's proto/ tree (sources and generated files)."""
    shutil.copytree(
        REPO_ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


@pytest.mark.slow
def test_check_reports_each_kind_of_staleness_and_a_run_repairs_it(copy_root: Path) -> None:
    edited = copy_root / "proto/health/health_cryo.py"
    edited.write_text(edited.read_text().replace("UNIMPLEMENTED", "NOT_FOUND"))
    (copy_root / "proto/health/health_pb2.pyi").unlink()
    orphan = copy_root / "proto/health/forgotten_cryo.py"
    orphan.write_text('"""Left over from a .proto that was removed."""\n')
    (copy_root / "proto/reflection/v1/__init__.py").unlink()

    check = run_generate("--check", "--root", str(copy_root))
    assert check.returncode == 1
    # Exactly these, and not the files left alone.
    assert check.stderr.splitlines()[:-1] == [
        "stale: proto/health/health_cryo.py",
        "stale: proto/health/health_pb2.pyi",
        "no longer generated: proto/health/forgotten_cryo.py",
        "missing: proto/reflection/v1/__init__.py",
    ]

    repair = run_generate("--root", str(copy_root))
    assert repair.returncode == 0, repair.stderr
    assert not orphan.exists()
    assert edited.read_bytes() == (REPO_ROOT / "proto/health/health_cryo.py").read_bytes()
    assert run_generate("--check", "--root", str(copy_root)).returncode == 0


def test_new_proto_under_proto_is_picked_up(copy_root: Path) -> None:
    (copy_root / "proto/extra").mkdir()
    (copy_root / "proto/extra/extra.proto").write_text(
        'syntax = "proto3";\npackage cryo.extra;\n'
        'import "proto/echo/echo.proto";\n'
        "service Extra { rpc Again(cryo.bench.Msg) returns (cryo.bench.Msg); }\n"
    )
    check = run_generate("--check", "--root", str(copy_root))
    assert check.returncode == 1
    assert check.stderr.splitlines()[:-1] == [
        *(
            f"stale: proto/extra/{name}"
            for name in ("extra_cryo.py", "extra_pb2.py", "extra_pb2.pyi", "extra_pb2_grpc.py")
        ),
        "missing: proto/extra/__init__.py",
    ]


def test_plugin_through_protoc_writes_stubs_only_for_files_with_services(
    generated_dir: Path,
) -> None:
    names = sorted(path.name for path in (generated_dir / "cryofixture").glob("*_cryo.py"))
    assert names == ["relay_cryo.py"]
    source = (generated_dir / "cryofixture/relay_cryo.py").read_text()
    # Both empty_pb2 modules are imported, under names that tell them apart.
    assert "from cryofixture import empty_pb2 as cryofixture_empty_pb2" in source
    assert "from google.protobuf import empty_pb2 as google_protobuf_empty_pb2" in source
    # The proto comments become docstrings.
    assert '"""Answers with the note\'s text upper-cased."""' in source


def test_plugin_reports_a_bad_option_to_protoc() -> None:
    request = plugin_pb2.CodeGeneratorRequest(parameter="flavour=spicy")
    response = generate(request)
    assert "flavour=spicy" in response.error
    assert not response.file


def test_plugin_renames_moved_packages() -> None:
    file = descriptor_pb2.FileDescriptorProto(name="grpc/testing/x.proto", package="grpc.testing")
    file.message_type.add(name="Ping")
    service = file.service.add(name="Pinger")
    service.method.add(
        name="Ping", input_type=".grpc.testing.Ping", output_type=".grpc.testing.Ping"
    )
    request = plugin_pb2.CodeGeneratorRequest(
        parameter="module=grpc.testing=proto.interop",
        file_to_generate=["grpc/testing/x.proto"],
        proto_file=[file],
    )
    response = generate(request)
    assert not response.error
    [stub] = response.file
    assert stub.name == "grpc/testing/x_cryo.py"
    assert "from proto.interop import x_pb2\n" in stub.content
    assert "grpc.testing import" not in stub.content


def test_generated_modules_are_lint_and_format_clean() -> None:
    stubs = sorted(str(path) for path in (REPO_ROOT / "proto").rglob("*_cryo.py"))
    assert stubs
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, *stubs],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
