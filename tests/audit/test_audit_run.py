"""``fedmask audit`` end to end on a tiny pool: the memorising non-private control is detected,
and the command writes its table and audit.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedmask.audit.experiment import MEMORISING_RECIPE, AuditSettings, format_table, make_canaries, run_audit
from fedmask.cli import main


def test_canaries_are_random_secrets_with_random_labels() -> None:
    canaries = make_canaries(200, num_labels=2, rng=random.Random(0))
    assert len({c.text for c in canaries}) == 200
    assert 60 < sum(c.label == 1 for c in canaries) < 140
    assert make_canaries(3, num_labels=2, rng=random.Random(5)) == make_canaries(3, num_labels=2, rng=random.Random(5))


def test_the_memorising_recipe_is_only_for_the_non_private_control(tmp_path: Path) -> None:
    config = AuditSettings(non_private=True, memorise=True).config()
    assert (config.probe_fraction, config.optimizer) == (0.0, "adamw")
    assert (config.learning_rate, config.head_learning_rate) == (3e-3, 3e-2)
    assert AuditSettings(non_private=True).config().probe_fraction > 0  # the DP recipe's schedule
    with pytest.raises(ValueError, match="non-private control only"):
        AuditSettings(memorise=True)
    ran = CliRunner().invoke(main, ["audit", "--data", __file__, "--memorise", "--out", str(tmp_path / "a")])
    assert ran.exit_code == 2 and "add --non-private" in ran.output
    assert not (tmp_path / "a").exists()


def test_a_data_file_that_does_not_parse_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "records.jsonl"
    bad.write_text('{"text": "no label"}\n')
    ran = CliRunner().invoke(main, ["audit", "--data", str(bad), "--out", str(tmp_path / "a")])
    assert ran.exit_code == 1 and "Traceback" not in ran.output, ran.output
    assert ran.output.strip().splitlines()[-1].startswith(f"Error: --data {bad}:")
    assert not (tmp_path / "a").exists()


def test_an_output_directory_it_cannot_write_is_refused_before_any_training(tmp_path: Path) -> None:
    data = tmp_path / "records.jsonl"
    data.write_text('{"text": "fine", "label": 0}\n')
    blocked = tmp_path / "a-file"
    blocked.write_text("a regular file, so no directory can be made under it\n")
    ran = CliRunner().invoke(main, ["audit", "--data", str(data), "--out", str(blocked / "a")])
    assert ran.exit_code == 1 and "Traceback" not in ran.output, ran.output
    assert ran.output.strip().splitlines()[-1].startswith(f"Error: cannot write the output directory {blocked / 'a'}")
    assert "target" not in ran.output  # no model was trained


@pytest.mark.slow
def test_the_memorising_control_is_detected(demo_records) -> None:
    records = demo_records("hospital-a", 80, split=None)[:40]
    settings = AuditSettings(
        non_private=True,
        memorise=True,
        canaries=32,
        canary_repeats=8,
        shadows=0,
        epochs=8,
        max_seq_len=24,
        seed=1,
    )
    lines: list[str] = []
    result = run_audit(records, settings, progress=lines.append)
    assert len(lines) == 1 and lines[0].startswith("target: trained on 148 records")
    canaries = result["canaries"]
    # 16 inserted among 16 held out: chance is about 1.3 bits, the most log2(17) = 4.09
    assert canaries["exposure_mean"] > canaries["exposure_chance"] + 1.0
    assert result["attacks"]["canaries: loss"]["auc"] > 0.85
    table = format_table(result)
    assert "non-private memorising control" in table and "canary exposure" in table
    assert result["config"]["optimizer"] == MEMORISING_RECIPE["optimizer"]


@pytest.mark.slow
def test_the_command_writes_the_table_and_json(tmp_path: Path) -> None:
    data = tmp_path / "records.jsonl"
    runner = CliRunner()
    generated = runner.invoke(main, ["data", "generate", "--party", "bank", "--records", "40", "--out", str(data)])
    assert generated.exit_code == 0, generated.output
    out = tmp_path / "audit"
    ran = runner.invoke(
        main,
        ["audit", "--data", str(data), "--records", "24", "--canaries", "8", "--shadows", "1"]
        + ["--epochs", "1", "--epsilon", "8", "--out", str(out)],
    )
    assert ran.exit_code == 0, ran.output
    assert "LiRA online" in ran.output and "accounted epsilon" in ran.output
    result = json.loads((out / "audit.json").read_text())
    assert result["format"] == "fedmask-audit/1"
    assert 0 < result["accounted_epsilon"] <= 8.0 + 1e-6
    assert len(result["candidates"]["target_confidence"]) == 32
