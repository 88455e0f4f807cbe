"""The checkpoint store: a checkpoint is listed only once it is whole, and names stay put.

Owns: the store's promises, with a stand-in for CRIU that writes image files: the
final name appears only after the dump succeeded and everything is on disk; a failed or
cancelled dump leaves nothing, listed or hidden; a crash's leftovers are removed at
start-up and nothing else is; duplicate names and names or directories that escape are
refused; containerd's own config.json files are understood.
Must not: need root, CRIU or runc (the real dumps are in test_runtime_*.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from runtime.checkpoints import (
    CheckpointOptions,
    CheckpointStore,
    resolve_checkpoint_dir,
    validate_checkpoint_name,
)
from runtime.errors import AlreadyExists, InvalidRequest, NotFound, WrongState
from runtime.state import write_json_atomic


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    journal = tmp_path / "journal"
    journal.mkdir()
    return CheckpointStore(journal)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "bundle" / "checkpoints"


async def write_images(images: Path) -> Mapping[str, Any]:
    (images / "inventory.img").write_bytes(b"\x01" * 64)
    (images / "pages-1.img").write_bytes(b"\x02" * 4096)
    return {"kind": "process", "pid": 1234}


def everything_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.exists() else []


async def test_a_checkpoint_gets_its_name_only_when_the_dump_succeeded(
    store: CheckpointStore, directory: Path
) -> None:
    seen_during_dump: dict[str, Any] = {}

    async def dump(images: Path) -> Mapping[str, Any]:
        seen_during_dump["listed"] = store.list(directory)
        seen_during_dump["final exists"] = (directory / "cp1").exists()
        seen_during_dump["images dir"] = images.name
        return await write_images(images)

    options = CheckpointOptions(
        "cp1", exit=True, tcp=True, unix_sockets=True, empty_ns=("network",)
    )
    record = await store.create(directory, options, dump)
    assert seen_during_dump["listed"] == []
    assert seen_during_dump["final exists"] is False
    assert seen_during_dump["images dir"].startswith(".cp1.partial-")
    assert everything_in(directory) == ["cp1"]
    assert (directory / "cp1" / "pages-1.img").stat().st_size == 4096
    listed = store.list(directory)
    assert [(r.name, r.options, r.created_ns) for r in listed] == [
        ("cp1", options, record.created_ns)
    ]
    assert listed[0].driver == {"kind": "process", "pid": 1234}
    assert everything_in(store._journal) == [], "the journal entry outlived the operation"


async def test_config_json_has_containerds_fields(store: CheckpointStore, directory: Path) -> None:
    await store.create(directory, CheckpointOptions("cp1", exit=True, shell=True), write_images)
    config = json.loads((directory / "cp1" / "config.json").read_text())
    assert {"created", "name", "tcp", "unixSockets", "shell", "exit"} <= set(config)
    assert config["name"] == "cp1" and config["exit"] is True and config["shell"] is True
    assert config["created"].endswith("Z") and "T" in config["created"]


async def test_a_failed_dump_leaves_nothing_behind(store: CheckpointStore, directory: Path) -> None:
    async def failing_dump(images: Path) -> Mapping[str, Any]:
        await write_images(images)
        (images / "config.json").write_text("{}")  # containerd left this behind
        raise RuntimeError("criu said no")

    with pytest.raises(RuntimeError, match="criu said no"):
        await store.create(directory, CheckpointOptions("cp1"), failing_dump)
    assert everything_in(directory) == []
    assert store.list(directory) == []
    assert everything_in(store._journal) == []
    # The name is free again.
    await store.create(directory, CheckpointOptions("cp1"), write_images)
    assert [r.name for r in store.list(directory)] == ["cp1"]


async def test_a_cancelled_dump_leaves_nothing_behind(
    store: CheckpointStore, directory: Path
) -> None:
    started = trio.Event()

    async def endless_dump(images: Path) -> Mapping[str, Any]:
        await write_images(images)
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.create, directory, CheckpointOptions("cp1"), endless_dump)
        await started.wait()
        assert [name for name in everything_in(directory) if name.startswith(".cp1.")]
        nursery.cancel_scope.cancel()
    assert everything_in(directory) == []
    assert everything_in(store._journal) == []


async def test_a_duplicate_name_is_refused_on_disk_and_while_in_progress(
    store: CheckpointStore, directory: Path
) -> None:
    await store.create(directory, CheckpointOptions("cp1"), write_images)
    with pytest.raises(AlreadyExists, match="'cp1' already exists"):
        await store.create(directory, CheckpointOptions("cp1"), write_images)

    release = trio.Event()

    async def slow_dump(images: Path) -> Mapping[str, Any]:
        await release.wait()
        return await write_images(images)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.create, directory, CheckpointOptions("cp2"), slow_dump)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(AlreadyExists, match="being created"):
            await store.create(directory, CheckpointOptions("cp2"), write_images)
        release.set()
    assert [r.name for r in store.list(directory)] == ["cp1", "cp2"]


@pytest.mark.parametrize("name", ["", "x", "../escape", ".hidden", "a/b", "-dash", "a b", "é1"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_checkpoint_name(name)


async def test_a_name_that_escapes_never_reaches_the_disk(
    store: CheckpointStore, directory: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest):
        await store.create(directory, CheckpointOptions("../../outside"), write_images)
    with pytest.raises(InvalidRequest):
        await store.delete(directory, "../../bundle")
    assert not (tmp_path / "outside").exists()
    assert everything_in(directory) == []


def test_checkpoint_directories_stay_inside_their_root(tmp_path: Path) -> None:
    root = tmp_path / "bundle" / "checkpoints"
    root.mkdir(parents=True)
    assert resolve_checkpoint_dir("", root) == root
    assert resolve_checkpoint_dir("nightly", root) == (root / "nightly").resolve()
    for escaping in ("../..", "nightly/../../..", "a/../../b"):
        with pytest.raises(InvalidRequest):
            resolve_checkpoint_dir(escaping, root)
    # A symlink inside the root that points out of it is an escape too.
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(InvalidRequest, match="escapes"):
        resolve_checkpoint_dir("link/elsewhere", root)
    # Absolute directories are the user's choice, unless roots were configured.
    assert resolve_checkpoint_dir(str(tmp_path / "mine"), root) == tmp_path / "mine"
    allowed = tmp_path / "allowed"
    assert resolve_checkpoint_dir(str(allowed / "x"), root, [allowed]) == (allowed / "x")
    with pytest.raises(InvalidRequest, match="outside the checkpoint roots"):
        resolve_checkpoint_dir(str(tmp_path / "mine"), root, [allowed])
    with pytest.raises(InvalidRequest, match=r"'\.\.'"):
        resolve_checkpoint_dir(str(allowed / ".." / "mine"), root, [allowed])


async def test_recovery_removes_only_what_a_crash_left_half_way(
    store: CheckpointStore, directory: Path
) -> None:
    await store.create(directory, CheckpointOptions("good"), write_images)
    # What a runtime killed mid-dump leaves: a journal entry and a hidden partial dir.
    partial = directory / ".cp1.partial-0123456789ab"
    partial.mkdir()
    (partial / "pages-1.img").write_bytes(b"half")
    write_json_atomic(store._journal / "a1.json", {"path": str(partial)})
    # And a damaged entry that names a real checkpoint: it must not be followed.
    write_json_atomic(store._journal / "b2.json", {"path": str(directory / "good")})
    (store._journal / "c3.json").write_text("{not json")
    removed = store.recover()
    assert removed == [partial]
    assert everything_in(directory) == ["good"]
    assert everything_in(store._journal) == []
    assert [r.name for r in store.list(directory)] == ["good"]


async def test_delete_removes_a_checkpoint_and_refuses_what_is_not_one(
    store: CheckpointStore, directory: Path
) -> None:
    await store.create(directory, CheckpointOptions("cp1"), write_images)
    await store.delete(directory, "cp1")
    assert everything_in(directory) == []
    with pytest.raises(NotFound, match="no checkpoint 'cp1'"):
        await store.delete(directory, "cp1")
    (directory / "notes").mkdir()  # a directory without config.json is not a checkpoint
    with pytest.raises(NotFound):
        await store.delete(directory, "notes")
    assert (directory / "notes").is_dir()


async def test_a_checkpoint_in_use_is_not_deleted(store: CheckpointStore, directory: Path) -> None:
    record = await store.create(directory, CheckpointOptions("cp1"), write_images)
    with store.reserve(record, "being restored"), pytest.raises(WrongState, match="restored"):
        await store.delete(directory, "cp1")
    await store.delete(directory, "cp1")


async def test_listing_ignores_what_is_not_a_finished_checkpoint(
    store: CheckpointStore, directory: Path, tmp_path: Path
) -> None:
    await store.create(directory, CheckpointOptions("older"), write_images)
    await store.create(directory, CheckpointOptions("newer"), write_images)
    (directory / ".cp9.partial-abc").mkdir()
    (directory / "no-config").mkdir()
    (directory / "file.txt").write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text('{"name": "elsewhere"}')
    (directory / "linked").symlink_to(elsewhere)
    assert [r.name for r in store.list(directory)] == ["older", "newer"]
    assert store.list(tmp_path / "does-not-exist") == []


def test_a_checkpoint_written_by_containerd_is_understood(
    store: CheckpointStore, directory: Path
) -> None:
    (directory / "old").mkdir(parents=True)
    (directory / "old" / "config.json").write_text(
        '{"created":"2017-03-01T12:00:00.123456789Z","name":"old","tcp":true,'
        '"unixSockets":true,"shell":false,"exit":true,"emptyNS":["network"]}'
    )
    (record,) = store.list(directory)
    assert record.options == CheckpointOptions(
        "old", exit=True, tcp=True, unix_sockets=True, empty_ns=("network",)
    )
    assert record.created_ns == 1488369600_123456789
