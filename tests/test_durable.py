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
