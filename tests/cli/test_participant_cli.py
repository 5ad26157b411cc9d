"""`fedmask data generate` and `fedmask participant train` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from fedmask.cli import main


def test_data_generate_is_deterministic(tmp_path: Path) -> None:
    runner = CliRunner()
    for name in ("a.jsonl", "b.jsonl"):
        result = runner.invoke(
            main,
            [
                "data",
                "generate",
                "--party",
                "hospital-b",
                "--records",
                "50",
                "--out",
                str(tmp_path / name),
                "--seed",
                "4",
            ],
        )
        assert result.exit_code == 0, result.output
        assert "50 records for hospital-b (40 train, 10 held out" in result.output
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    bad = runner.invoke(
        main, ["data", "generate", "--party", "clinic", "--records", "5", "--out", str(tmp_path / "c.jsonl")]
    )
    assert bad.exit_code == 2 and "'clinic' is not one of" in bad.output


def test_train_writes_adapter_report_and_ledger_then_refuses_past_budget(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "bank.jsonl"
    assert (
        runner.invoke(main, ["data", "generate", "--party", "bank", "--records", "60", "--out", str(data)]).exit_code
        == 0
    )
    out = tmp_path / "out"
    args = [
        "participant",
        "train",
        "--data",
        str(data),
        "--mode",
        "lora",
        "--epsilon",
        "8",
        "--delta",
        "1e-5",
        "--out",
        str(out),
        "--local-steps",
        "2",
        "--batch-size",
        "1",
        "--accountant",
        "rdp",
        "--max-seq-len",
        "32",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for key in (
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "accountant",
        "clipping",
        "accuracy",
        "majority_baseline",
        "pii_counts",
    ):
        assert key in report, key
    assert report["steps"] == 2 and report["sample_rate"] == 1 / 48
    assert report["train_records"] == 48 and report["heldout_records"] == 12
    assert report["clipping"] == "ew" and report["randomness"] == "AES-256-CTR keyed from os.urandom"
    assert sum(report["pii_counts"].values()) > 20  # the bank's records carry cards, IBANs...
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    ledger = json.loads((out / "ledger.json").read_text())
    # The run's two steps, then (its last planned round) the calibration release as one Gaussian event.
    calibration_noise = ledger["plan"]["calibration_noise_multiplier"]
    assert ledger["accountant_state"]["history"] == [
        [report["noise_multiplier"], report["sample_rate"], 2],
        [calibration_noise, 1.0, 1],
    ]
    assert report["calibration"] is not None and report["epsilon"] == ledger["epsilon_spent"] <= 8.0

    # The whole budget was planned for one run: the same ledger refuses a second one.
    again = runner.invoke(main, args)
    assert again.exit_code == 1
    assert "privacy budget exhausted" in again.output and "Refusing to train" in again.output

    missing = runner.invoke(
        main, ["participant", "train", "--data", str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "o2")]
    )
    assert missing.exit_code == 1 and "data file not found" in missing.output
