"""`fedmask coordinator verify`, `backup` and `restore`: the store checked and copied from the command line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fedmask.cli import main
from fedmask.coordinator.store import FederationStore, StoreError


def _state(tmp_path):
    state = tmp_path / "state"
    with FederationStore(state / "federation.db") as store:
        store.initialise({"name": "cli"})
        store.commit_initial(store.save_checkpoint(0, np.arange(4, dtype=np.float32), []))
        store.begin_round(1, b"r1", ["a", "b"])
        ref = store.save_checkpoint(1, np.ones(4, dtype=np.float32), [])
        encoding = {"clip_norm": 1.0, "scale": 2.0**16, "modulus_bits": 32}
        entry = {"survivors": ["a", "b"], "dropped": {}, "encoding": encoding, "epsilon": {"a": 1.0, "b": 1.0}}
        store.commit_round(1, ref, entry)
    return state, ref


def test_verify_passes_then_names_a_damaged_checkpoint(tmp_path):
    state, ref = _state(tmp_path)
    ok = CliRunner().invoke(main, ["coordinator", "verify", "--state", str(state)])
    assert ok.exit_code == 0, ok.output
    assert "ok: 1 committed round(s)" in ok.output
    damaged = state / "federation.checkpoints" / ref.adapter.name
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    bad = CliRunner().invoke(main, ["coordinator", "verify", "--state", str(state)])
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    assert "round 1: " in bad.output and "Error: 1 problem(s)" in bad.output


def test_backup_writes_a_copy_and_refuses_to_overwrite(tmp_path):
    state, _ = _state(tmp_path)
    out = tmp_path / "backup.db"
    first = CliRunner().invoke(main, ["coordinator", "backup", "--state", str(state), "--out", str(out)])
    assert first.exit_code == 0 and out.is_file()
    with FederationStore(out, read_only=True) as copy:
        assert copy.last_committed().round_number == 1
    again = CliRunner().invoke(main, ["coordinator", "backup", "--state", str(state), "--out", str(out)])
    assert again.exit_code == 1 and again.output.strip().startswith("Error:") and "exists" in again.output


def test_a_lost_database_is_refused_then_restored_from_a_backup(tmp_path):
    """The issue's worst fault: federation.db emptied or deleted. The coordinator refuses to start
    a new federation over the checkpoints; `restore` puts the backup back, nothing lost."""
    state, ref = _state(tmp_path)
    out = tmp_path / "backup.db"
    assert CliRunner().invoke(main, ["coordinator", "backup", "--state", str(state), "--out", str(out)]).exit_code == 0
    files = sorted(p.name for p in (state / "federation.checkpoints").iterdir())
    for suffix in ("", "-wal", "-shm"):
        (state / f"federation.db{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="missing or empty"):
        FederationStore(state / "federation.db")
    assert not (state / "federation.db").exists()  # refused before a new database was made

    restored = CliRunner().invoke(main, ["coordinator", "restore", "--state", str(state), "--from", str(out)])
    assert restored.exit_code == 0, restored.output
    assert "every indexed checkpoint intact" in restored.output
    with FederationStore(state / "federation.db") as store:
        store.initialise({"name": "cli"})  # resumes: same federation, same config
        assert store.last_committed().version == ref.version
        assert store.collect_garbage() == []
    assert sorted(p.name for p in (state / "federation.checkpoints").iterdir()) == files


def test_restore_refuses_another_federations_backup_and_a_running_coordinator(tmp_path):
    state, _ = _state(tmp_path)
    other, _ = _state(tmp_path / "other")
    foreign = tmp_path / "foreign.db"
    assert (
        CliRunner().invoke(main, ["coordinator", "backup", "--state", str(other), "--out", str(foreign)]).exit_code == 0
    )
    before = (state / "federation.db").read_bytes()
    refused = CliRunner().invoke(main, ["coordinator", "restore", "--state", str(state), "--from", str(foreign)])
    assert refused.exit_code == 1 and "belong to federation" in refused.output
    assert (state / "federation.db").read_bytes() == before  # nothing changed
    own = tmp_path / "own.db"
    assert CliRunner().invoke(main, ["coordinator", "backup", "--state", str(state), "--out", str(own)]).exit_code == 0
    with FederationStore(state / "federation.db"):  # the coordinator is running
        busy = CliRunner().invoke(main, ["coordinator", "restore", "--state", str(state), "--from", str(own)])
    assert busy.exit_code == 1 and "already open for writing" in busy.output


def test_restore_into_a_state_directory_without_its_checkpoints_is_refused_and_writes_nothing(tmp_path):
    """A backup holds the database only: restored where its checkpoints are not, the store could
    not resume. Refused before the database is written, with what to copy."""
    state, _ = _state(tmp_path)
    out = tmp_path / "backup.db"
    assert CliRunner().invoke(main, ["coordinator", "backup", "--state", str(state), "--out", str(out)]).exit_code == 0
    elsewhere = tmp_path / "new-host"
    elsewhere.mkdir()
    refused = CliRunner().invoke(main, ["coordinator", "restore", "--state", str(elsewhere), "--from", str(out)])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "indexes 2 checkpoint(s)" in refused.output and "copy the checkpoints directory" in refused.output
    assert not (elsewhere / "federation.db").exists() and not (elsewhere / "federation.checkpoints").exists()
    # With the checkpoints copied over, the same restore succeeds.
    shutil.copytree(state / "federation.checkpoints", elsewhere / "federation.checkpoints")
    restored = CliRunner().invoke(main, ["coordinator", "restore", "--state", str(elsewhere), "--from", str(out)])
    assert restored.exit_code == 0, restored.output
    assert "every indexed checkpoint intact" in restored.output


def test_verify_and_backup_read_the_state_directory_from_the_environment_and_restore_does_not(tmp_path):
    state, _ = _state(tmp_path)
    runner = CliRunner(env={"FEDMASK_COORDINATOR_STATE": str(state)})
    verified = runner.invoke(main, ["coordinator", "verify"])
    assert verified.exit_code == 0, verified.output
    out = tmp_path / "backup.db"
    backed_up = runner.invoke(main, ["coordinator", "backup", "--out", str(out)])
    assert backed_up.exit_code == 0 and out.is_file(), backed_up.output
    # A restore replaces the database: its target must be named on the command line.
    refused = runner.invoke(main, ["coordinator", "restore", "--from", str(out)])
    assert refused.exit_code == 2 and "Missing option '--state'" in refused.output
