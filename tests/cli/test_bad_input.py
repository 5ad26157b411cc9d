"""Every bad input an operator was seen to hit ends in one ``Error:`` line, a non-zero exit, no
traceback, and nothing written (issue: 14 of 48 bad inputs ended in a traceback).

A read-only directory is played by a path under a regular file: the tests run as root, for whom
permission bits do not stop a write, but nobody can create a directory inside a file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedmask.cli import main
from fedmask.coordinator.config import FederationConfig
from fedmask.testing.cli import assert_one_line_error

PARTIES = ["hospital-a", "hospital-b", "bank"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    from fedmask.testing.loopback import make_federation

    return make_federation(tmp_path_factory.mktemp("pki") / "fed", PARTIES)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "bank.jsonl"
    result = CliRunner().invoke(main, ["data", "generate", "--party", "bank", "--records", "40", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


def _config(tmp_path, **changes) -> Path:
    data = {"participants": PARTIES, "rounds": 1, **changes}
    path = tmp_path / "federation.json"
    path.write_text(json.dumps(data))
    return path


def _coordinator_run(tmp_path, config: Path, federation: Path, *extra: str) -> list[str]:
    return ["coordinator", "run", "--federation", str(federation), "--state", str(tmp_path / "state"),
            "--config", str(config), "--insecure", "--port", "0", *extra]  # fmt: skip


@pytest.mark.parametrize(
    "training, words",
    [
        ({"target_epsilon": 0}, ["training:", "target_epsilon"]),
        ({"target_epsilon": 1000}, ["training:", "target_epsilon must be positive and at most 100, got 1000"]),
        ({"epsilon": 4.0}, ["training.epsilon: unknown training setting"]),
        ({"epochs": "one"}, ["training.epochs: expected a finite number or null, got 'one'"]),
        ({"model_path": "/nonexistent"}, ["training.model_path: no model directory at /nonexistent"]),
    ],
)
def test_federation_config_errors_name_the_key_before_any_state_is_written(tmp_path, federation, training, words):
    result = CliRunner().invoke(main, _coordinator_run(tmp_path, _config(tmp_path, training=training), federation))
    assert_one_line_error(result, *words)
    assert not (tmp_path / "state").exists()


def test_a_changed_config_names_the_flag_that_allows_it(tmp_path, federation):
    from fedmask.coordinator.store import FederationStore

    with FederationStore(tmp_path / "state" / "federation.db") as store:
        store.initialise(FederationConfig(participants=tuple(PARTIES), rounds=2).to_json())
    result = CliRunner().invoke(main, _coordinator_run(tmp_path, _config(tmp_path), federation))
    assert_one_line_error(result, "rounds", "--allow-config-change")


def test_a_state_directory_that_cannot_be_made(tmp_path, federation, blocked):
    args = _coordinator_run(tmp_path, _config(tmp_path), federation)
    args[args.index("--state") + 1] = str(blocked)
    assert_one_line_error(CliRunner().invoke(main, args), "Not a directory", str(blocked))


def test_coordinator_run_on_a_port_in_use(tmp_path, federation, port_in_use):
    args = _coordinator_run(tmp_path, _config(tmp_path), federation)
    args[args.index("--port") + 1] = str(port_in_use)
    assert_one_line_error(CliRunner().invoke(main, args), f"cannot listen on 127.0.0.1:{port_in_use}")
    assert not (tmp_path / "state").exists()


def test_coordinator_evaluation_records_without_a_report(tmp_path, federation, records):
    args = _coordinator_run(tmp_path, _config(tmp_path), federation, "--evaluate", str(records))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--evaluate" in result.output and "--report" in result.output, result.output
    assert not (tmp_path / "state").exists()


def test_coordinator_evaluation_records_that_do_not_parse_fail_before_any_round(tmp_path, federation):
    bad = tmp_path / "public.jsonl"
    bad.write_text('{"text": "fine", "label": 0}\n{"text": "no label"}\n')
    args = _coordinator_run(
        tmp_path, _config(tmp_path), federation, "--report", str(tmp_path / "report"), "--evaluate", str(bad)
    )
    assert_one_line_error(CliRunner().invoke(main, args), f"--evaluate {bad}", "label")
    assert not (tmp_path / "state").exists()


def test_participant_train_refuses_an_output_directory_it_cannot_write_before_training(blocked, records):
    args = ["participant", "train", "--data", str(records), "--out", str(blocked), "--epochs", "1"]
    last = assert_one_line_error(CliRunner().invoke(main, args), "cannot write the output directory", str(blocked))
    assert "Not a directory" in last


def test_coordinator_serve_on_a_port_in_use(federation, port_in_use):
    args = ["coordinator", "serve", "--federation", str(federation), "--insecure", "--dim", "4"]
    args += ["--participants", ",".join(PARTIES)]
    args += ["--port", str(port_in_use)]
    assert_one_line_error(CliRunner().invoke(main, args), f"127.0.0.1:{port_in_use}")


@pytest.mark.parametrize(
    "command",
    [
        ["data", "generate", "--party", "bank", "--records", "10", "--out", "{blocked}/x.jsonl"],
        ["pki", "init", "--dir", "{blocked}"],
        ["demo", "--out", "{blocked}"],
        ["participant", "enrol", "--federation", "{blocked}", "--name", "bank", "--organisation", "bank"],
    ],
    ids=["data-generate", "pki-init", "demo", "participant-enrol"],
)
def test_an_output_directory_that_cannot_be_made(blocked, command):
    args = [part.format(blocked=blocked) for part in command]
    assert_one_line_error(CliRunner().invoke(main, args), str(blocked.parent))


def test_participant_node_with_a_state_directory_that_cannot_be_made(federation, blocked, records):
    args = ["participant", "node", "--federation", str(federation), "--name", "bank", "--data", str(records),
            "--state", str(blocked), "--insecure", "--coordinator", "127.0.0.1:1"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert_one_line_error(result, "cannot write the state directory", str(blocked))
    assert "PII scrubbed" not in result.output  # refused before the records were read


def test_participant_node_with_a_name_outside_the_roster_reads_no_records(tmp_path, federation, records):
    args = ["participant", "node", "--federation", str(federation), "--name", "ghost", "--data", str(records),
            "--state", str(tmp_path / "state"), "--coordinator", "127.0.0.1:1"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert_one_line_error(result, "ghost")
    assert "PII scrubbed" not in result.output


def test_participant_train_with_a_model_that_is_not_there(tmp_path, records):
    out = tmp_path / "out"
    args = ["participant", "train", "--data", str(records), "--model", "/nonexistent", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert_one_line_error(result, "no model directory at /nonexistent")
    assert "PII replaced" not in result.output  # refused before the records were read
    assert not out.exists()


def test_participant_train_with_lora_targets_the_model_does_not_have(tmp_path, records):
    out = tmp_path / "out"
    args = ["participant", "train", "--data", str(records), "--lora-targets", "query,nosuchmodule", "--out", str(out)]
    last = assert_one_line_error(CliRunner().invoke(main, args), "no linear layer named nosuchmodule")
    assert "query" in last.split("its linear layers:")[1]  # says what there is to choose from
    assert not out.exists()  # the directory it made for the outputs is gone again


@pytest.mark.parametrize(
    ("option", "words"),
    [
        (["--lora-layers", "99"], ["lora_layers is 99, but the model has 6 layers"]),
        # MiniLM's query and value layers are 384 x 384: a rank above adds parameters, not capacity.
        (["--lora-rank", "385"], ["lora_rank 385 exceeds", "(384): use at most 384"]),
        (["--lora-rank", "100000"], ["lora_rank 100000 exceeds"]),
        (["--rounds", "100000000"], ["planned_rounds must be from 1 to 20000, got 100000000"]),
    ],
    ids=["lora-layers-beyond-the-model", "lora-rank-385", "lora-rank-100000", "rounds-beyond-any-budget"],
)
def test_participant_train_settings_the_model_or_budget_cannot_take(tmp_path, records, option, words):
    out = tmp_path / "out"
    args = ["participant", "train", "--data", str(records), *option, "--out", str(out)]
    assert_one_line_error(CliRunner().invoke(main, args), *words)
    assert not out.exists()


def test_participant_train_refuses_a_heldout_fraction_its_split_records_would_ignore(tmp_path, records):
    out = tmp_path / "out"
    args = ["participant", "train", "--data", str(records), "--heldout-fraction", "0.3", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert_one_line_error(result, "held-out fraction of 0.3 was asked for", "own 'split' field")
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("command", ["train", "node", "audit"])
def test_records_that_are_not_utf8_are_refused_in_one_line(tmp_path, federation, suffix, command):
    data = tmp_path / f"records{suffix}"
    data.write_bytes('{"text": "fièvre", "label": 1}\n'.encode("latin-1"))
    args = {
        "train": ["participant", "train", "--data", str(data), "--out", str(tmp_path / "out")],
        "node": [
            "participant",
            "node",
            "--federation",
            str(federation),
            "--name",
            "bank",
            "--data",
            str(data),
            "--state",
            str(tmp_path / "state"),
            "--insecure",
            "--coordinator",
            "127.0.0.1:1",
        ],  # fmt: skip
        "audit": ["audit", "--data", str(data), "--out", str(tmp_path / "audit")],
    }[command]
    assert_one_line_error(CliRunner().invoke(main, args), f"{data}: not UTF-8 text", "save the records as UTF-8")


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"\xff\xfe token", "holds no token (tokens are ASCII text)"), (b" \n", "is empty")],
    ids=["binary", "empty"],
)
@pytest.mark.parametrize("command", ["join", "node", "doctor"])
def test_a_token_file_that_holds_no_token_is_refused_before_dialling(
    tmp_path, federation, records, content, words, command
):
    token = tmp_path / "token"
    token.write_bytes(content)
    role = {
        "join": ["participant", "join", "--synthetic-seed", "1"],
        "node": ["participant", "node", "--data", str(records), "--state", str(tmp_path / "s")],
        "doctor": ["doctor", "participant"],
    }[command]
    args = [*role, "--federation", str(federation), "--name", "bank",
            "--coordinator", "127.0.0.1:1", "--token-file", str(token)]  # fmt: skip
    assert_one_line_error(CliRunner().invoke(main, args), "--token-file", f"{token} {words}")


def test_participant_train_with_a_ledger_that_is_not_text(tmp_path, records):
    ledger = tmp_path / "ledger.json"
    ledger.write_bytes(b"\xff\xfe{}")
    args = ["participant", "train", "--data", str(records), "--ledger", str(ledger), "--out", str(tmp_path / "out")]
    assert_one_line_error(CliRunner().invoke(main, args), f"cannot read privacy ledger {ledger}")
    assert ledger.read_bytes() == b"\xff\xfe{}"  # left as it was


def test_data_generate_refuses_more_records_than_a_demo_needs(tmp_path):
    out = tmp_path / "x.jsonl"
    args = ["data", "generate", "--party", "bank", "--records", "100000000", "--out", str(out)]
    assert_one_line_error(CliRunner().invoke(main, args), "100000000 is not in the range 2<=x<=1000000")
    assert not out.exists()


@pytest.mark.parametrize(
    "command",
    [
        ["pki", "show", "--dir", "{federation}"],
        ["simulate", "-n", "3", "-d", "8"],
    ],
)
def test_a_reader_that_stops_early_is_no_error_for_any_command(federation, command):
    """`fedmask pki show | head` printed `Error: Broken pipe` and exited 1: the root handler, not
    each command, ends quietly with the status of a command killed by SIGPIPE."""
    import subprocess
    import sys

    args = [part.format(federation=federation) for part in command]
    child = subprocess.Popen(
        [sys.executable, "-m", "fedmask.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader is gone before the first line: every write fails
    stderr = child.stderr.read().decode()
    assert child.wait(120) == 141, stderr
    assert stderr == ""


def _state_with_two_committed_checkpoints(state: Path) -> list[Path]:
    """A store of `_config`'s federation whose rounds 0 and 1 are committed; their files."""
    import numpy as np

    from fedmask.coordinator.store import FederationStore, LedgerEntry

    layout = [{"name": "lora.weight", "shape": [4], "dtype": "float32"}]
    with FederationStore(state / "federation.db") as store:
        store.initialise(FederationConfig(participants=tuple(PARTIES), rounds=1).to_json())
        store.commit_initial(store.save_checkpoint(0, np.zeros(4, dtype=np.float32), layout))
        store.begin_round(1, b"round-one", PARTIES)
        entry = LedgerEntry(
            survivors=tuple(PARTIES), dropped={}, encoding={"modulus_bits": 32}, epsilon=dict.fromkeys(PARTIES, 1.0)
        )
        store.commit_round(1, store.save_checkpoint(1, np.ones(4, dtype=np.float32), layout), entry)
    return sorted((state / "federation.checkpoints").glob("round-*"))


def _store_contents(state: Path) -> tuple[dict[str, bytes], list[str] | None]:
    """The checkpoint files, and the database's rows as SQL (read through its write-ahead log)."""
    import sqlite3

    checkpoints = state / "federation.checkpoints"
    files = {p.name: p.read_bytes() for p in sorted(checkpoints.iterdir())}
    database = state / "federation.db"
    if not database.is_file() or database.stat().st_size == 0:
        return files, None
    connection = sqlite3.connect(database)
    try:
        return files, list(connection.iterdump())
    finally:
        connection.close()


@pytest.mark.parametrize("damage", ["truncate round 0", "delete round 0", "delete the database"])
def test_coordinator_run_on_a_damaged_store_is_one_line_and_changes_nothing(tmp_path, federation, damage):
    state = tmp_path / "state"
    round_zero, _round_one = _state_with_two_committed_checkpoints(state)
    if damage == "truncate round 0":
        round_zero.write_bytes(round_zero.read_bytes()[:-8])
        words = ["committed checkpoint missing or damaged", f"round 0: {round_zero.name}", "coordinator verify"]
    elif damage == "delete round 0":
        round_zero.unlink()
        words = ["committed checkpoint missing or damaged", f"round 0: {round_zero.name}", "No such file"]
    else:
        for path in state.glob("federation.db*"):
            path.unlink()
        words = ["federation.db is missing or empty", "refusing to start a new federation over them"]
    before = _store_contents(state)
    result = CliRunner().invoke(main, _coordinator_run(tmp_path, _config(tmp_path), federation))
    assert_one_line_error(result, *words)
    assert result.exit_code == 1
    assert _store_contents(state) == before
