"""fedmask.durable: the one atomic, durable write every writer uses."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fedmask import durable


def test_write_replaces_the_file_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "ledger.json"
    durable.write_atomic(target, b"first", mode=durable.PRIVATE)
    durable.write_text_atomic(target, "second", mode=durable.PRIVATE)
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    durable.write_atomic(tmp_path / "public.pem", b"x")
    assert stat.S_IMODE((tmp_path / "public.pem").stat().st_mode) == 0o644
    assert sorted(p.name for p in target.parent.iterdir()) == ["ledger.json"]  # no temporary left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        durable.write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_file_and_its_directory_are_synced(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    durable.write_atomic(tmp_path / "a.bin", b"payload", temp_prefix="tmp-", temp_suffix=".part")
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith("tmp-") and synced[0].endswith(".part")  # the data, before the rename
    assert synced[1] == str(tmp_path)  # then the rename, through the directory
    synced.clear()
    durable.write_atomic(tmp_path / "b.bin", b"payload", sync_directory=False)
    assert len(synced) == 1  # the caller syncs the directory once for several files


def test_probing_a_directory_leaves_nothing_behind(tmp_path):
    existing = tmp_path / "out"
    existing.mkdir()
    assert durable.probe_writable_directory(existing) == existing and list(existing.iterdir()) == []
    to_be_made = tmp_path / "a" / "b"
    assert durable.probe_writable_directory(to_be_made) == tmp_path  # probed where it will be made
    assert not (tmp_path / "a").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    blocker = tmp_path / "a-file"
    blocker.write_text("a regular file\n")
    with pytest.raises(NotADirectoryError):
        durable.probe_writable_directory(blocker / "out")


def test_sync_tree_syncs_every_file_and_folder(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "model" / "sub").mkdir(parents=True)
    for name in ("model/a.json", "model/sub/b.bin"):
        (tmp_path / name).write_bytes(b"x")
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", recording_fsync)
    durable.sync_tree(tmp_path / "model")
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in synced) == [
        "model",
        "model/a.json",
        "model/sub",
        "model/sub/b.bin",
    ]


# Writes that bypass fedmask.durable, each with why it may. Anything else that writes a file in
# the package goes through write_atomic / write_text_atomic (or sync_tree for a staged folder).
DIRECT_WRITES_ALLOWED = {
    # SQLite writes these databases (a backup, a restore, a new store's schema); the store fsyncs
    # each file and its directory itself.
    ("coordinator/store.py", "os.replace("): 3,
    # A staged export folder, every file synced (sync_tree) before the rename, the parent after.
    ("fedmask/adapter/export.py", ".rename("): 1,
    # Not a file: asks the kernel to reset the process's page-reference bits.
    ("bench/dp_bench.py", ".write_text("): 1,
    # Logs appended to as they come (a child's output), not documents.
    ("fedmask/cli/demo.py", '.open("a'): 1,
    ("fedmask/testing/processes.py", '.open("a'): 1,
    # Into an in-memory buffer, which write_atomic then writes.
    ("fedmask/cli/coordinator.py", "np.save("): 1,
}
DIRECT_WRITE_CALLS = (".write_text(", ".write_bytes(", "np.save(", "os.replace(", ".rename(", '.open("w', '.open("a')


def test_every_writer_goes_through_the_durable_helper() -> None:
    """The habit, checked: a new ``path.write_text(...)`` in the package would leave a half
    written file after a crash. Tests and the vendored model builders are not the package."""
    root = Path(__file__).resolve().parents[1]
    found: dict[tuple[str, str], int] = {}
    for folder in ("secagg", "participant", "coordinator", "proto", "bench", "fedmask"):
        for source in sorted((root / folder).rglob("*.py")):
            relative = source.relative_to(root).as_posix()
            if relative == "fedmask/durable.py" or "_pb2" in relative:
                continue
            text = source.read_text(encoding="utf-8")
            for call in DIRECT_WRITE_CALLS:
                count = text.count(call)
                if count:
                    found[(relative, call)] = count
    assert found == DIRECT_WRITES_ALLOWED
