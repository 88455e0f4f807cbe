"""The sans-I/O core of wire/ imports no trio, and nothing in wire/ reaches into other layers.

The architecture keeps every protocol decision in modules that take bytes and
return events, so they can be tested with plain bytes; these tests fail as soon
as one of them starts importing the I/O layer or the packages above wire/.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WIRE = REPO / "wire"

# Modules that make up the sans-I/O core, whether or not they exist yet.
KNOWN_CORE_MODULES = (
    "status",
    "errors",
    "metadata",
    "framing",
    "compression",
    "events",
    "connection",
    "trace",
)
REQUIRED_CORE_MODULES = ("status", "errors", "metadata", "framing", "compression")
CORE_MODULES = [name for name in KNOWN_CORE_MODULES if (WIRE / f"{name}.py").is_file()]

FORBIDDEN_PACKAGES = {"proto", "runtime", "daemon"}
ALLOWED_THIRD_PARTY = {"h2", "hpack", "trio"}


def test_required_core_modules_exist() -> None:
    assert set(REQUIRED_CORE_MODULES) <= set(CORE_MODULES)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_does_not_import_trio(module: str) -> None:
    # A fresh interpreter, so nothing imported by other tests can hide the culprit.
    script = (
        "import importlib, json, sys\n"
        f"importlib.import_module('wire.{module}')\n"
        "print(json.dumps(sorted(name for name in sys.modules"
        " if name.split('.')[0] in ('trio', 'proto', 'runtime', 'daemon'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"wire.{module} pulled in the I/O layer or a higher one"


def _imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


WIRE_FILES = sorted(WIRE.rglob("*.py"))


@pytest.mark.parametrize("path", WIRE_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_wire_does_not_import_proto_runtime_or_daemon(path: Path) -> None:
    # Checked on the source, so imports under TYPE_CHECKING or inside functions count too.
    assert _imported_top_level_names(path) & FORBIDDEN_PACKAGES == set()


@pytest.mark.parametrize("path", WIRE_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_wire_imports_only_the_stdlib_h2_hpack_and_trio(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | ALLOWED_THIRD_PARTY | {"wire", "__future__"}
    assert _imported_top_level_names(path) - allowed == set()


def test_the_import_scan_sees_every_kind_of_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from __future__ import annotations\n"
        "import os.path\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from proto import types_pb2\n"
        "def later():\n"
        "    import runtime.criu\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    assert _imported_top_level_names(sample) == {
        "__future__",
        "os",
        "typing",
        "proto",
        "runtime",
    }
