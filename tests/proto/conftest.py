"""Fixtures of the proto tests: the fixture protos compiled by protoc-gen-cryo.

This module owns compiling `tests/proto/fixtures/cryofixture/*.proto` once per session
into a scratch folder, through grpcio-tools' protoc and the real plugin (the same path
`python -m proto.generate` takes), and putting that folder on `sys.path` so the tests
import `cryofixture.relay_cryo`. It must not write into the repository.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from proto.generate import compile_protos

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_PROTOS = (
    "cryofixture/common.proto",
    "cryofixture/empty.proto",
    "cryofixture/plain.proto",
    "cryofixture/relay.proto",
)


@pytest.fixture(scope="session")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scratch folder holding the fixture protos' generated modules (importable)."""
    out = tmp_path_factory.mktemp("generated")
    compile_protos(FIXTURES, FIXTURE_PROTOS, out)
    sys.path.insert(0, str(out))
    return out


@pytest.fixture(scope="session")
def relay_cryo(generated_dir: Path) -> ModuleType:
    """The generated `cryofixture.relay_cryo` module."""
    return importlib.import_module("cryofixture.relay_cryo")


@pytest.fixture(scope="session")
def common_pb2(generated_dir: Path) -> ModuleType:
    return importlib.import_module("cryofixture.common_pb2")


@pytest.fixture(scope="session")
def relay_pb2(generated_dir: Path) -> ModuleType:
    return importlib.import_module("cryofixture.relay_pb2")
