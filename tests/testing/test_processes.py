"""The process helpers of the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

from fedmask.testing.processes import log_tails, spawn_cli


def test_a_spawned_command_appends_its_output_to_the_log(tmp_path: Path) -> None:
    log = tmp_path / "cli.log"
    log.write_text("earlier run\n")
    records = tmp_path / "r.jsonl"
    process = spawn_cli(["data", "generate", "--party", "bank", "--records", "4", "--out", str(records)], log)
    assert process.wait(timeout=120) == 0
    text = log.read_text()
    assert text.startswith("earlier run\n") and "4 records for bank" in text
    assert records.read_text().count("\n") == 4


def test_log_tails_shows_the_end_of_each_log_that_exists(tmp_path: Path) -> None:
    long = tmp_path / "long.log"
    long.write_text("x" * 5000 + "the end")
    tails = log_tails([long, tmp_path / "missing.log"], chars=7)
    assert tails == "--- long.log\nthe end"
