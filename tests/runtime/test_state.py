"""The crash-safe file operations under every store of the runtime.

Owns: checking that a record is replaced whole or not at all, and that a rename never
replaces what is already there. Must not: need root, CRIU or runc.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.state import StateLayout, read_json, rename_noreplace, write_json_atomic


def test_a_record_is_replaced_whole_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    record = tmp_path / "c1.json"
    write_json_atomic(record, {"status": "running", "pid": 42})
    write_json_atomic(record, {"status": "stopped", "pid": 42})
    assert read_json(record) == {"status": "stopped", "pid": 42}
    assert [path.name for path in tmp_path.iterdir()] == ["c1.json"]
    assert record.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_keeps_the_previous_record(tmp_path: Path) -> None:
    record = tmp_path / "c1.json"
    write_json_atomic(record, {"status": "running"})
    with pytest.raises(TypeError):
        write_json_atomic(record, {"status": object()})  # not JSON: fails before writing
    assert read_json(record) == {"status": "running"}
    assert [path.name for path in tmp_path.iterdir()] == ["c1.json"]


def test_rename_never_replaces_an_existing_target(tmp_path: Path) -> None:
    source = tmp_path / ".partial"
    source.mkdir()
    (source / "core.img").write_bytes(b"images")
    taken = tmp_path / "final"
    taken.mkdir()  # empty: os.rename would silently replace it
    with pytest.raises(FileExistsError):
        rename_noreplace(source, taken)
    assert (source / "core.img").exists()
    free = tmp_path / "other"
    rename_noreplace(source, free)
    assert (free / "core.img").read_bytes() == b"images"


def test_layout_directories_are_private(tmp_path: Path) -> None:
    layout = StateLayout(tmp_path / "state")
    layout.create()
    for path in (layout.root, layout.containers, layout.journal, layout.runc_root):
        assert path.is_dir()
        assert path.stat().st_mode & 0o777 == 0o700
    assert layout.container_record("c1") == layout.containers / "c1.json"
