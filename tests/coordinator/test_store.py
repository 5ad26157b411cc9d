"""The coordinator's durable store: validation, schema migrations, and crash safety.

The crash tests run the federation loop's store calls (begin, FedAdam step, save checkpoint,
commit) in a child process -- this file run as a script -- and SIGKILL it, either after a random
delay or while it waits at a named point of a round, then reopen the store and check that
(a) every round the child saw committed, and its ledger entry, is there; (b) every committed
checkpoint, the last one included, verifies and holds exactly what an uninterrupted run computes
for that round (FedAdam moments included, so a resumed run continues bit for bit); (c) the
interrupted round is reported and, re-run, commits.
"""

from __future__ import annotations

import os
import queue
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedmask.coordinator import store as store_module
from fedmask.coordinator.aggregation import FedAdam
from fedmask.coordinator.checkpoint import CheckpointCorrupt, CheckpointRef
from fedmask.coordinator.store import (
    ConfigMismatch,
    FederationStore,
    InvalidRecord,
    LedgerEntry,
    RoundState,
    RoundStateError,
    SchemaError,
    StoreError,
    StoreLocked,
)

# ---------------------------------------------------------------------------------------------
# A deterministic federation: what round r commits depends only on r.

DIM = 20_000
LAYOUT = {"tensors": [{"name": "lora.weight", "shape": [DIM], "dtype": "float32"}]}
SELECTED = ("alpha", "bravo", "charlie")
CONFIG = {"federation": "crash-test", "optimizer": {"name": "fedadam", "lr": 0.01}, "participants": list(SELECTED)}
LR = 0.01


def initial_vector() -> np.ndarray:
    return np.linspace(-1.0, 1.0, DIM, dtype=np.float32)


def update_for(round_number: int) -> np.ndarray:
    return np.sin(np.arange(DIM) * (0.001 * round_number)) * 0.01 + 0.001 * round_number


def entry_for(round_number: int) -> LedgerEntry:
    dropped = {"charlie": f"missed the masked-input deadline of round {round_number}"} if round_number % 2 else {}
    survivors = [name for name in SELECTED if name not in dropped]
    return LedgerEntry(
        survivors=survivors,
        dropped=dropped,
        encoding={"clip_norm": 1.0, "scale": 2.0**16, "modulus_bits": 32},
        epsilon={name: 0.25 * round_number for name in survivors},
        participant_epsilon=0.1 * round_number,
        delta=1e-5,
        metrics={"accuracy": {name: 0.5 for name in survivors}, "upload_bytes": 4 * DIM * len(survivors)},
    )


class ExpectedChain:
    """The global vector and FedAdam state after each round, computed without interruptions."""

    def __init__(self) -> None:
        self._optimizer = FedAdam(LR)
        self._vectors = [initial_vector()]
        self._states = [self._optimizer.state_dict()]

    def after(self, round_number: int) -> tuple[np.ndarray, dict]:
        while len(self._vectors) <= round_number:
            r = len(self._vectors)
            self._vectors.append(self._optimizer.apply(self._vectors[-1], update_for(r)))
            self._states.append(self._optimizer.state_dict())
        return self._vectors[round_number], self._states[round_number]


def run_rounds(db_path: Path, until_round: int, pause_at: tuple[str, int] | None = None, report=print) -> None:
    """What the federation loop does with the store, from start-up; ``pause_at`` = (point,
    round) stops there (for a SIGKILL) -- points: after-begin, mid-save (the adapter file's
    rename), after-save, commit:ledger (inside the commit transaction), commit:COMMIT (just
    before it commits), after-commit."""
    current = {"round": 0, "committing": False}

    def pause(point: str) -> None:
        if pause_at == (point, current["round"]):
            report(f"paused {point} {current['round']}")
            time.sleep(120)

    with FederationStore(db_path) as store:
        if pause_at is not None:
            real_replace = os.replace

            def replace(source, target):
                if str(target).endswith(".adapter.safetensors"):
                    pause("mid-save")
                return real_replace(source, target)

            os.replace = replace

            def trace(statement: str) -> None:
                if current["committing"] and statement.startswith("INSERT INTO ledger"):
                    pause("commit:ledger")
                if current["committing"] and statement == "COMMIT":
                    pause("commit:COMMIT")

            store._db.set_trace_callback(trace)

        store.initialise(CONFIG)
        store.collect_garbage()
        last = store.last_committed()
        if last is None:
            last = store.save_checkpoint(0, initial_vector(), LAYOUT, FedAdam(LR).state_dict())
            store.commit_initial(last)
        vector, layout = store.load_checkpoint(last)
        assert layout == LAYOUT
        optimizer = FedAdam(LR)
        optimizer.load_state_dict(store.load_optimizer_state(last))
        while (r := store.next_round_number()) <= until_round:
            current["round"] = r
            store.begin_round(r, secrets.token_bytes(16), SELECTED)
            pause("after-begin")
            vector = optimizer.apply(vector, update_for(r))
            ref = store.save_checkpoint(r, vector, LAYOUT, optimizer.state_dict())
            pause("after-save")
            current["committing"] = True
            store.commit_round(r, ref, entry_for(r))
            current["committing"] = False
            report(f"committed {r} {ref.version}")
            pause("after-commit")


def _child_main(argv: list[str]) -> None:
    db_path, until_round, pause = Path(argv[0]), int(argv[1]), argv[2]
    pause_at = None
    if pause != "-":
        point, round_number = pause.rsplit("@", 1)
        pause_at = (point, int(round_number))
    report = lambda line: print(line, flush=True)  # noqa: E731
    report("ready")
    run_rounds(db_path, until_round, pause_at, report)
    report("done")


class Child:
    """``run_rounds`` in a child process, whose report lines the test reads."""

    def __init__(self, db_path: Path, until_round: int, pause_at: str = "-") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(db_path), str(until_round), pause_at],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.strip())
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"the child did not report {prefix!r} within {timeout_s} s") from None
            if line is None:
                raise AssertionError(f"the child ended before {prefix!r}: {self.proc.stderr.read()}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join()
        while (line := self._queue.get()) is not None:
            self.lines.append(line)
        errors = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert self.proc.returncode == -signal.SIGKILL, f"the child ended by itself: {errors}"

    def committed(self) -> dict[int, str]:
        """round -> version hash of every commit the child saw return."""
        reports = (line.split() for line in self.lines if line.startswith("committed"))
        return {int(round_number): version for _, round_number, version in reports}


def check_store(db_path: Path, chain: ExpectedChain, acknowledged: dict[int, str]) -> list[int]:
    """(a) and (b) of the module docstring, and that an open round is the one after the last
    commit; returns the committed round numbers."""
    with FederationStore(db_path, read_only=True) as store:
        rounds = store.rounds()
        assert [r.round_number for r in rounds] == list(range(1, len(rounds) + 1))
        committed = [r for r in rounds if r.state is RoundState.COMMITTED]
        assert committed == rounds[: len(committed)]
        assert len(rounds) - len(committed) <= 1
        interrupted = store.interrupted_round()
        if len(rounds) > len(committed):
            assert interrupted == rounds[-1] and interrupted.state is RoundState.OPEN
        else:
            assert interrupted is None

        ledger = store.ledger()
        assert [entry["round"] for entry in ledger] == [r.round_number for r in committed]
        for record, entry in zip(committed, ledger, strict=True):
            expected = entry_for(record.round_number)
            assert entry["round_id"] == record.round_id.hex()
            assert entry["survivors"] == list(expected.survivors)
            assert entry["dropped"] == dict(expected.dropped)
            assert entry["epsilon"] == dict(expected.epsilon)
            assert entry["selected"] == list(SELECTED)
            assert entry["checkpoint"]["version"] == record.checkpoint.version
        for round_number, version in acknowledged.items():  # (a)
            assert round_number <= len(committed), f"acknowledged round {round_number} was lost"
            assert ledger[round_number - 1]["checkpoint"]["version"] == version

        refs = [r.checkpoint for r in committed]
        last = store.last_committed()
        if last is not None and last.round_number == 0:
            assert not committed
            refs.insert(0, last)
        if refs:
            assert last == refs[-1]
        for ref in refs:  # (b), for every committed round including the last
            vector, layout = store.load_checkpoint(ref)
            expected_vector, expected_state = chain.after(ref.round_number)
            np.testing.assert_array_equal(vector, expected_vector)
            assert layout == LAYOUT
            state = store.load_optimizer_state(ref)
            assert state["step"] == expected_state["step"] == ref.round_number
            for key in ("m", "v"):
                if key in expected_state:
                    np.testing.assert_array_equal(state[key], expected_state[key])
        assert store.verify() == []
        return [r.round_number for r in committed]


# ---------------------------------------------------------------------------------------------
# Crash safety


@pytest.mark.slow  # 12 s; test_sigkill_at_each_point_of_a_round covers each point in the default suite
def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path):
    db_path = tmp_path / "federation.db"
    chain = ExpectedChain()
    seed = 20250611
    rng = random.Random(seed)
    acknowledged: dict[int, str] = {}
    interrupted_seen = 0
    for _ in range(8):
        child = Child(db_path, until_round=10_000)
        child.wait_for("ready")
        time.sleep(rng.uniform(0.05, 0.5))
        child.kill()
        acknowledged.update(child.committed())
        committed = check_store(db_path, chain, acknowledged)
        with FederationStore(db_path, read_only=True) as store:
            interrupted_seen += store.interrupted_round() is not None
    assert len(acknowledged) >= 3, f"too little progress to test anything (seed {seed})"

    # (c): a restart re-runs the interrupted round (if the last kill left one) and goes on.
    target = (committed[-1] if committed else 0) + 2
    run_rounds(db_path, until_round=target, report=lambda line: None)
    assert check_store(db_path, chain, acknowledged) == list(range(1, target + 1))
    with FederationStore(db_path, read_only=True) as store:
        assert store.interrupted_round() is None
        attempts = [r.attempt for r in store.rounds()]
    # Every kill that left a round open led to one re-run, unless the next child was killed
    # again before it got that far (then the same open round is seen twice).
    reruns = sum(attempt - 1 for attempt in attempts)
    assert (reruns >= 1) == (interrupted_seen >= 1) and reruns <= interrupted_seen


# (point, files the restart must collect as orphans, whether round 2 is committed)
PAUSE_POINTS = [
    ("after-begin", [], False),
    ("mid-save", ["temporary", "optimizer"], False),
    ("after-save", ["adapter", "optimizer"], False),
    ("commit:ledger", ["adapter", "optimizer"], False),
    ("commit:COMMIT", ["adapter", "optimizer"], False),
    ("after-commit", [], True),
]


@pytest.mark.parametrize("point, orphans, committed", PAUSE_POINTS, ids=[p[0] for p in PAUSE_POINTS])
def test_sigkill_at_each_point_of_a_round(tmp_path, point, orphans, committed):
    db_path = tmp_path / "federation.db"
    chain = ExpectedChain()
    child = Child(db_path, until_round=3, pause_at=f"{point}@2")
    child.wait_for(f"paused {point} 2")
    child.kill()
    acknowledged = child.committed()
    assert sorted(acknowledged) == ([1, 2] if committed else [1])
    assert check_store(db_path, chain, acknowledged) == ([1, 2] if committed else [1])

    with FederationStore(db_path) as store:
        interrupted = store.interrupted_round()
        if committed:
            assert interrupted is None
        else:
            assert interrupted.round_number == 2 and interrupted.attempt == 1
            assert interrupted.selected == SELECTED and interrupted.checkpoint is None
        assert store.last_committed().round_number == (2 if committed else 1)
        removed = store.collect_garbage()
        kinds = sorted("temporary" if name.endswith(".tmp") else name.split(".")[-2] for name in removed)
        assert kinds == sorted(orphans)
        assert all(name.startswith("round-000002-") for name in removed if not name.endswith(".tmp"))
        first_round_id = None if interrupted is None else interrupted.round_id

    # (c): the restarted loop re-runs round 2 and carries on to round 3.
    run_rounds(db_path, until_round=3, report=lambda line: None)
    assert check_store(db_path, chain, acknowledged) == [1, 2, 3]
    with FederationStore(db_path, read_only=True) as store:
        round_two = store.rounds()[1]
        assert round_two.attempt == (1 if committed else 2)
        if first_round_id is not None:
            assert round_two.round_id != first_round_id
        files = sorted(os.listdir(store.checkpoint_dir))
    # adapter + optimizer for rounds 0..3, and the store's identity; nothing else
    assert files == ["IDENTITY.json", *sorted(f for f in files if f.startswith("round-"))]
    assert len(files) == 2 * 4 + 1


# ---------------------------------------------------------------------------------------------
# The round life cycle and its validation


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def store(tmp_path):
    with FederationStore(tmp_path / "fed.db", clock=FakeClock()) as opened:
        opened.initialise({"name": "unit", "rounds": 3})
        yield opened


def small_vector(seed: float) -> np.ndarray:
    return np.arange(8, dtype=np.float32) + np.float32(seed)


def commit(store: FederationStore, round_number: int, entry=None, selected=SELECTED) -> dict:
    store.begin_round(round_number, f"round-{round_number}".encode(), selected)
    ref = store.save_checkpoint(round_number, small_vector(round_number), LAYOUT)
    return store.commit_round(round_number, ref, entry or entry_for(round_number))


def test_a_round_commits_with_its_ledger_entry_and_clock_times(store):
    ref0 = store.save_checkpoint(0, small_vector(0), LAYOUT)
    store.commit_initial(ref0)
    assert store.last_committed() == ref0
    record = store.begin_round(1, b"round-one", ["charlie", "alpha", "bravo"])
    assert record.state is RoundState.OPEN and record.selected == SELECTED and record.attempt == 1
    ref = store.save_checkpoint(1, small_vector(1), LAYOUT)
    entry = store.commit_round(1, ref, entry_for(1))
    assert entry == store.ledger()[0]
    assert entry["round"] == 1 and entry["round_id"] == b"round-one".hex() and entry["attempt"] == 1
    assert entry["survivors"] == ["alpha", "bravo"]
    assert entry["dropped"] == {"charlie": "missed the masked-input deadline of round 1"}
    assert entry["encoding"] == {"clip_norm": 1.0, "scale": 65536.0, "modulus_bits": 32}
    assert entry["epsilon"] == {"alpha": 0.25, "bravo": 0.25}
    assert (entry["participant_epsilon"], entry["delta"]) == (0.1, 1e-5)
    assert entry["checkpoint"] == {"file": ref.adapter.name, "version": ref.version, "bytes": ref.adapter.size_bytes}
    (record,) = store.rounds()
    assert record.state is RoundState.COMMITTED and record.checkpoint == ref
    assert record.started_at < record.finished_at == entry["finished_at"]
    assert entry["started_at"] == record.started_at and float(entry["started_at"]).is_integer()
    assert store.last_committed() == ref
    assert store.next_round_number() == 2
    np.testing.assert_array_equal(store.load_checkpoint(ref)[0], small_vector(1))


def test_ledger_entries_accept_a_plain_mapping(store):
    entry = entry_for(2)
    mapping = {
        "survivors": list(entry.survivors),
        "dropped": {},
        "encoding": dict(entry.encoding),
        "epsilon": dict(entry.epsilon),
        "metrics": {"wall_s": 1.5},
    }
    commit(store, 1)
    assert commit(store, 2, mapping)["metrics"] == {"wall_s": 1.5}
    with pytest.raises(InvalidRecord, match="unknown ledger entry fields: accuracy"):
        LedgerEntry.from_mapping({**mapping, "accuracy": 1})


def test_round_numbers_follow_each_other(store):
    with pytest.raises(RoundStateError, match="the next round is 1, not 2"):
        store.begin_round(2, b"x", SELECTED)
    commit(store, 1)
    with pytest.raises(RoundStateError, match="round 1 is already committed; the next round is 2"):
        store.begin_round(1, b"again", SELECTED)
    store.begin_round(2, b"two", SELECTED)
    with pytest.raises(RoundStateError, match="round 2 is still open"):
        store.begin_round(3, b"three", SELECTED)
    store.fail_round(2, "below threshold")
    with pytest.raises(InvalidRecord, match="already used by another round"):
        store.begin_round(3, b"round-1", SELECTED)


def test_an_open_round_is_rerun_with_a_new_id_and_roster(store):
    commit(store, 1)
    store.begin_round(2, b"first-try", SELECTED)
    with pytest.raises(InvalidRecord, match="needs a new round id"):
        store.begin_round(2, b"first-try", SELECTED)
    with pytest.raises(InvalidRecord, match="already used by another round"):
        store.begin_round(2, b"round-1", SELECTED)
    record = store.begin_round(2, b"second-try", ["alpha", "bravo"])
    assert (record.attempt, record.round_id, record.selected) == (2, b"second-try", ("alpha", "bravo"))
    with pytest.raises(InvalidRecord, match=r"unaccounted: none; not selected: \['charlie'\]"):
        store.commit_round(2, store.save_checkpoint(2, small_vector(2), LAYOUT), entry_for(1))
    survivors_only = LedgerEntry(survivors=["alpha", "bravo"], dropped={}, encoding={"clip_norm": 1.0}, epsilon={})
    entry = store.commit_round(2, store.save_checkpoint(2, small_vector(2), LAYOUT), survivors_only)
    assert (entry["attempt"], entry["round_id"]) == (2, b"second-try".hex())


def test_a_failed_round_keeps_the_global_adapter(store):
    first = commit(store, 1)
    store.begin_round(2, b"two", SELECTED)
    with pytest.raises(InvalidRecord, match="failure reason"):
        store.fail_round(2, "  ")
    record = store.fail_round(2, "only 1 of 3 participants left after ShareKeys; threshold is 2")
    assert record.state is RoundState.FAILED and record.failure_reason.startswith("only 1 of 3")
    assert store.last_committed().round_number == 1
    assert store.last_committed().version == first["checkpoint"]["version"]
    assert store.interrupted_round() is None and store.next_round_number() == 3
    assert [e["round"] for e in store.ledger()] == [1]
    with pytest.raises(RoundStateError, match="round 2 is failed, only an open round can be committed"):
        store.commit_round(2, _fake_ref_for(store, 2), entry_for(2))
    with pytest.raises(RoundStateError, match="round 2 is failed, only an open round can fail"):
        store.fail_round(2, "again")


def _fake_ref_for(store: FederationStore, round_number: int) -> CheckpointRef:
    from fedmask.coordinator import checkpoint

    return checkpoint.save_checkpoint(store.checkpoint_dir, round_number, small_vector(round_number), LAYOUT)


def test_checkpoints_are_saved_only_for_the_open_round(store):
    with pytest.raises(RoundStateError, match="round 1 is not open"):
        store.save_checkpoint(1, small_vector(1), LAYOUT)
    commit(store, 1)
    with pytest.raises(RoundStateError, match="initial adapter"):
        store.save_checkpoint(0, small_vector(0), LAYOUT)
    with pytest.raises(RoundStateError, match="before the first round"):
        store.commit_initial(_fake_ref_for(store, 0))


def test_a_commit_checks_the_checkpoint_files_first(store):
    store.begin_round(1, b"one", SELECTED)
    ref = store.save_checkpoint(1, small_vector(1), LAYOUT)
    (store.checkpoint_dir / ref.adapter.name).write_bytes(b"\0" * ref.adapter.size_bytes)
    with pytest.raises(CheckpointCorrupt, match="does not match its SHA-256"):
        store.commit_round(1, ref, entry_for(1))
    (store.checkpoint_dir / ref.adapter.name).unlink()
    with pytest.raises(CheckpointCorrupt, match="missing"):
        store.commit_round(1, ref, entry_for(1))
    with pytest.raises(InvalidRecord, match="CheckpointRef of round 1"):
        store.commit_round(1, _fake_ref_for(store, 2), entry_for(1))
    assert store.interrupted_round().round_number == 1 and store.ledger() == []


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"survivors": []}, "at least one survivor"),
        ({"survivors": ["Alpha"]}, "malformed participant name 'Alpha'"),
        ({"survivors": "alpha"}, "list of participant names"),
        ({"survivors": ["alpha", "alpha"]}, "repeat"),
        ({"dropped": {"alpha": "late"}}, "alpha both survived and dropped"),
        ({"dropped": {"charlie": ""}}, "drop reason of charlie"),
        ({"encoding": {}}, "encoding parameters"),
        ({"epsilon": {"alpha": -1.0}}, "epsilon of alpha must be a finite number >= 0"),
        ({"epsilon": {"alpha": float("inf")}}, "epsilon of alpha"),
        ({"epsilon": {"alpha": True}}, "epsilon of alpha"),
        ({"participant_epsilon": float("nan")}, "participant_epsilon"),
        ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
        ({"metrics": {"wall_s": float("nan")}}, "metrics: not plain JSON"),
        ({"metrics": [1, 2]}, "metrics is a JSON object"),
    ],
)
def test_ledger_entries_are_validated(fields, message):
    base = {
        "survivors": ["alpha", "bravo"],
        "dropped": {"charlie": "timeout"},
        "encoding": {"clip_norm": 1.0},
        "epsilon": {"alpha": 1.0},
    }
    with pytest.raises(InvalidRecord, match=message):
        LedgerEntry(**{**base, **fields})


def test_ledger_entries_are_checked_against_the_round(store):
    store.begin_round(1, b"one", ["alpha", "bravo"])
    ref = store.save_checkpoint(1, small_vector(1), LAYOUT)
    with pytest.raises(InvalidRecord, match=r"unaccounted: \['bravo'\]"):
        store.commit_round(1, ref, LedgerEntry(["alpha"], {}, {"clip_norm": 1.0}, {}))
    with pytest.raises(InvalidRecord, match=r"not in the round: \['zulu'\]"):
        store.commit_round(1, ref, LedgerEntry(["alpha", "bravo"], {}, {"clip_norm": 1.0}, {"zulu": 1.0}))
    store.commit_round(1, ref, LedgerEntry(["bravo"], {"alpha": "disconnected"}, {"clip_norm": 1.0}, {}))


@pytest.mark.parametrize(
    "round_number, round_id, selected, message",
    [
        (0, b"x", SELECTED, "integers >= 1"),
        (True, b"x", SELECTED, "integers >= 1"),
        (1, b"", SELECTED, "1 to 256 bytes"),
        (1, b"x" * 257, SELECTED, "1 to 256 bytes"),
        (1, "text", SELECTED, "1 to 256 bytes"),
        (1, b"x", [], "at least one selected"),
        (1, b"x", "alpha", "list of participant names"),
        (1, b"x", ["alpha", "../etc"], "malformed participant name"),
        (1, b"x", ["alpha", "alpha"], "repeat"),
    ],
)
def test_begin_round_validates_its_inputs(store, round_number, round_id, selected, message):
    with pytest.raises(InvalidRecord, match=message):
        store.begin_round(round_number, round_id, selected)
    assert store.rounds() == []


def test_rounds_need_a_config(tmp_path):
    with FederationStore(tmp_path / "fed.db") as fresh:
        with pytest.raises(
            StoreError, match=r"no federation config yet \(a new store: a coordinator records its config when it starts"
        ):
            fresh.begin_round(1, b"x", SELECTED)
        with pytest.raises(StoreError, match="no federation config"):
            fresh.config()


# ---------------------------------------------------------------------------------------------
# Config, locking, schema


def test_the_same_config_resumes_and_a_different_one_is_refused(tmp_path):
    path = tmp_path / "fed.db"
    config = {"rounds": 3, "encoding": {"clip_norm": 1.0, "scale": 1024}, "participants": ["a", "b"]}
    with FederationStore(path) as store:
        assert store.initialise(config) == 1
    with FederationStore(path) as store:
        # Key order does not matter: configs compare as canonical JSON.
        assert store.initialise(dict(reversed(list(config.items())))) == 1
        changed = {**config, "encoding": {"clip_norm": 2.0, "scale": 1024}, "rounds": 5, "seed": 1}
        with pytest.raises(ConfigMismatch, match=r"changed: encoding\.clip_norm, rounds; added: seed"):
            store.initialise(changed)
        assert store.config() == config
        assert store.initialise(changed, allow_config_change=True) == 2
        assert store.config() == changed
        store.begin_round(1, b"one", SELECTED)
        assert store.rounds()[0].config_version == 2
    with FederationStore(tmp_path / "other.db") as other, pytest.raises(InvalidRecord, match="not plain JSON"):
        other.initialise({"clip": float("nan")})


def test_one_writer_at_a_time_and_readers_alongside(tmp_path):
    path = tmp_path / "fed.db"
    writer = FederationStore(path)
    writer.initialise({"x": 1})
    with pytest.raises(StoreLocked, match="already open for writing"):
        FederationStore(path)
    with FederationStore(path, read_only=True) as reader:
        assert reader.config() == {"x": 1}
        with pytest.raises(StoreError, match="read-only"):
            reader.begin_round(1, b"x", SELECTED)
        with pytest.raises(StoreError, match="read-only"):
            reader.collect_garbage()
    writer.close()
    FederationStore(path).close()  # the lock went with the writer
    with pytest.raises(StoreError, match="no federation store"):
        FederationStore(tmp_path / "absent.db", read_only=True)


def test_the_pragmas_are_set(store):
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store._db.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_the_schema_enforces_the_invariants_itself(store):
    commit(store, 1)
    store.begin_round(2, b"two", SELECTED)
    db = store._db
    for statement, message in [
        ("UPDATE ledger SET entry_json = '{}'", "append-only"),
        ("DELETE FROM ledger", "append-only"),
        ("DELETE FROM checkpoints", "append-only"),
        (
            "UPDATE rounds SET state = 'failed', failure_reason = 'x', finished_at = 1 WHERE round_number = 1",
            "a finished round is final",
        ),
        ("DELETE FROM rounds WHERE round_number = 1", "a finished round is final"),
        (
            "UPDATE rounds SET state = 'committed', finished_at = 1 WHERE round_number = 2",
            "only with its ledger entry and checkpoint",
        ),
        (
            "INSERT INTO ledger (round_number, entry_json, recorded_at) VALUES (3, '{}', 1)",
            "only while committing an open round",
        ),
        ("INSERT INTO roster (round_number, participant) VALUES (9, 'alpha')", "FOREIGN KEY"),
    ]:
        with pytest.raises(sqlite3.IntegrityError, match=message):
            db.execute(statement)
    assert len(store.ledger()) == 1


def test_schema_version_is_recorded(store):
    assert store.schema_version() == store_module.schema_version() == 3


def test_exclusions_are_recorded_once_and_kept(store):
    store.exclude("beta", 1, b"r1", "revealed a share it was never dealt")
    store.exclude("beta", 1, b"r1", "a later proof")  # the first stays
    assert store.exclusions() == {"beta": "round 1: revealed a share it was never dealt"}
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store._db.execute("DELETE FROM exclusions")


def test_a_new_migration_upgrades_an_old_store_and_keeps_its_data(tmp_path, monkeypatch):
    path = tmp_path / "fed.db"
    with FederationStore(path) as store:
        store.initialise({"x": 1})
        commit(store, 1)
    monkeypatch.setattr(
        store_module, "MIGRATIONS", [*store_module.MIGRATIONS, ("ALTER TABLE rounds ADD COLUMN note TEXT",)]
    )
    with pytest.raises(SchemaError, match="open it for writing once to migrate it"):
        FederationStore(path, read_only=True)
    latest = store_module.schema_version()
    with FederationStore(path) as store:
        assert store.schema_version() == latest
        assert store.ledger()[0]["round"] == 1
        assert store._db.execute("SELECT note FROM rounds").fetchall() == [(None,)]
    monkeypatch.undo()
    with pytest.raises(SchemaError, match=f"schema version {latest}, newer than this build's {latest - 1}"):
        FederationStore(path)


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "fed.db"
    FederationStore(path).close()
    monkeypatch.setattr(
        store_module,
        "MIGRATIONS",
        [*store_module.MIGRATIONS, ("CREATE TABLE extra (x INTEGER)", "ALTER TABLE no_such_table ADD COLUMN y")],
    )
    with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
        FederationStore(path)
    monkeypatch.undo()
    with FederationStore(path) as store:
        assert store.schema_version() == store_module.schema_version()
        assert store._db.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "fed.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SchemaError, match="not a usable SQLite database"):
        FederationStore(path)


def test_a_reader_creates_no_file_and_sees_what_a_writer_committed(tmp_path):
    """A read-only open used to create federation.db-wal and -shm beside a closed store."""
    path = tmp_path / "fed.db"
    with FederationStore(path) as writer:
        writer.initialise({"x": 1})
    before = sorted(os.listdir(tmp_path))
    with FederationStore(path, read_only=True) as reader:
        assert reader.config() == {"x": 1}
    assert sorted(os.listdir(tmp_path)) == before
    with FederationStore(path) as writer:  # its commits sit in the write-ahead log until it closes
        writer.begin_round(1, b"one", SELECTED)
        during = sorted(os.listdir(tmp_path))
        with FederationStore(path, read_only=True) as reader:
            assert [r.round_number for r in reader.rounds()] == [1]
        assert sorted(os.listdir(tmp_path)) == during


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "fed.db is empty: not a fedmask coordinator store"),
        (b"this is not sqlite" * 100, "fed.db is not a fedmask coordinator store (not an SQLite database)"),
        (None, "fed.db is not a fedmask coordinator store (an SQLite database without its tables)"),
    ],
)
def test_a_reader_names_an_empty_or_foreign_file(tmp_path, content, message):
    """An empty file used to be refused as 'could not switch to WAL journaling (got 'delete')'."""
    path = tmp_path / "fed.db"
    if content is None:
        with sqlite3.connect(path) as foreign:
            foreign.execute("CREATE TABLE notes (text TEXT)")
        foreign.close()
    else:
        path.write_bytes(content)
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FederationStore(path, read_only=True)
    assert os.listdir(tmp_path) == ["fed.db"]


def test_a_reader_never_sees_a_new_store_half_made(tmp_path, monkeypatch):
    """``coordinator status`` during a new federation's first instant said 'federation.db is
    empty': SQLite had made the file and not yet its tables. The schema is now made under a
    temporary name and renamed into place; so is a store whose creation crashed."""
    path = tmp_path / "fed.db"
    seen: list[str] = []
    migrate = FederationStore._migrate

    def look_then_migrate(self: FederationStore) -> None:
        try:
            FederationStore(path, read_only=True).close()
            seen.append("a store")
        except SchemaError as exc:
            seen.append(f"damaged: {exc}")
        except StoreError as exc:
            seen.append(f"absent: {exc}")
        migrate(self)

    monkeypatch.setattr(FederationStore, "_migrate", look_then_migrate)
    (tmp_path / ".fed.db.creating").write_bytes(b"left by a crash")
    with FederationStore(path) as store:
        store.initialise({"x": 1})
    assert seen[0] == f"absent: no federation store at {path}"
    assert all(not s.startswith("damaged") for s in seen), seen
    assert sorted(os.listdir(tmp_path)) == ["fed.checkpoints", "fed.db", "fed.db.lock"]
    with FederationStore(path, read_only=True) as reader:
        assert reader.config() == {"x": 1}


# ---------------------------------------------------------------------------------------------
# Garbage collection and verification


def test_garbage_collection_removes_only_unreferenced_checkpoint_files(store):
    commit(store, 1)
    store.begin_round(2, b"two", SELECTED)
    orphan = store.save_checkpoint(2, small_vector(2), LAYOUT, FedAdam(LR).state_dict())
    (store.checkpoint_dir / ".fedmask-abc.tmp").write_bytes(b"partial")
    (store.checkpoint_dir / "notes.txt").write_text("operator's file")
    removed = store.collect_garbage()
    assert removed == sorted([".fedmask-abc.tmp", orphan.adapter.name, orphan.optimizer.name])
    remaining = sorted(os.listdir(store.checkpoint_dir))
    assert remaining == sorted(["IDENTITY.json", "notes.txt", store.last_committed().adapter.name])
    assert store.collect_garbage() == []


def test_a_lost_database_never_deletes_committed_checkpoints(tmp_path):
    """The issue's fault: federation.db emptied or deleted. The coordinator started a new
    federation at round 1 and its garbage collection deleted 12 of 13 committed checkpoints."""
    path = tmp_path / "fed.db"
    with FederationStore(path) as store:
        store.initialise({"name": "unit"})
        store.commit_initial(store.save_checkpoint(0, small_vector(0), LAYOUT))
        commit(store, 1)
        commit(store, 2)
        kept = sorted(os.listdir(store.checkpoint_dir))
    for lost in ("deleted", "emptied"):
        path.unlink(missing_ok=True)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        if lost == "emptied":
            path.write_bytes(b"")
        with pytest.raises(StoreError, match="refusing to start a new federation over them"):
            FederationStore(path)  # refused on opening: no store to collect garbage with
        # Refused before SQLite wrote a schema there: the database is as the fault left it.
        if lost == "deleted":
            assert not path.exists()
        else:
            assert path.read_bytes() == b""
        assert sorted(os.listdir(path.parent / "fed.checkpoints")) == kept


def test_a_backup_restores_the_store(tmp_path):
    path = tmp_path / "fed.db"
    with FederationStore(path) as store:
        store.initialise({"name": "unit"})
        store.commit_initial(store.save_checkpoint(0, small_vector(0), LAYOUT))
        commit(store, 1)
        backup = store.backup(tmp_path / "backup.db")
        identity = store.federation_id()
    path.unlink()
    backup.rename(path)  # the documented recovery: put the backup in place
    with FederationStore(path) as restored:
        assert restored.initialise({"name": "unit"}) == 1
        assert restored.federation_id() == identity
        assert restored.last_committed().round_number == 1 and restored.verify() == []
        assert restored.check_files() == []


def test_another_federation_s_database_beside_these_checkpoints_is_refused(tmp_path):
    """A backup of another federation restored into this state directory: its rounds are not
    the ones these checkpoints hold."""
    stores = {}
    for name in ("ours", "theirs"):
        path = tmp_path / name / "fed.db"
        path.parent.mkdir()
        with FederationStore(path) as store:
            store.initialise({"name": "unit"})
            store.commit_initial(store.save_checkpoint(0, small_vector(0), LAYOUT))
            stores[name] = (path, store.backup(tmp_path / f"{name}-backup.db"), store.federation_id())
    ours, _, our_id = stores["ours"]
    _, their_backup, their_id = stores["theirs"]
    assert our_id != their_id
    ours.unlink()
    their_backup.rename(ours)
    with FederationStore(ours) as store:
        with pytest.raises(StoreError, match=f"belongs to federation {their_id}, .* to {our_id}: .* mixes two"):
            store.initialise({"name": "unit"})


def test_a_backup_that_cannot_be_written_says_why_and_leaves_nothing(store, tmp_path, monkeypatch):
    """It used to end in sqlite3.OperationalError: unable to open database file."""
    with pytest.raises(StoreError, match=r"cannot write the backup .*missing/backup.db: No such file or directory"):
        store.backup(tmp_path / "missing" / "backup.db")

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", disk_full)
    out = tmp_path / "backups"
    out.mkdir()
    with pytest.raises(StoreError, match="cannot write the backup .*backup.db: No space left on device"):
        store.backup(out / "backup.db")
    assert os.listdir(out) == []  # no partial copy, under its name or the temporary one


def test_the_cheap_start_up_check_notices_a_truncated_old_checkpoint(store):
    ref0 = store.save_checkpoint(0, small_vector(0), LAYOUT)
    store.commit_initial(ref0)
    commit(store, 1)
    round_zero = store.checkpoint_dir / ref0.adapter.name
    round_zero.write_bytes(round_zero.read_bytes()[:-8])
    assert store.check_files() == [
        f"round 0: {ref0.adapter.name} has {ref0.adapter.size_bytes - 8} bytes, {ref0.adapter.size_bytes} recorded"
    ]


def test_verify_reports_a_damaged_checkpoint(store):
    commit(store, 1)
    assert store.verify() == []
    ref = store.last_committed()
    path = store.checkpoint_dir / ref.adapter.name
    path.write_bytes(path.read_bytes()[:-1] + b"\x7f")
    (problem,) = store.verify()
    assert problem.startswith("round 1: ") and "SHA-256" in problem
    with pytest.raises(CheckpointCorrupt):
        store.load_checkpoint(ref)
    with pytest.raises(CheckpointCorrupt):
        store.iter_adapter_chunks(ref, 1024)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
