"""`fedmask predict` on a classifier trained by `fedmask participant train` (MiniLM) and on a causal LM
(the tiny Qwen2): inputs and generated text scrubbed, exported and adapter routes agreeing, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import fedmask.cli.predict as predict_module
from fedmask.adapter.export import EXPORT_MARKER
from fedmask.cli import main

NEW_RECORDS = [
    {"id": "n1", "text": "Chest pain since 6am, patient John Smith (john.smith@example.com) on warfarin", "label": 1},
    {"id": "n2", "text": "Please send my statement for card 4111 1111 1111 1111 by post", "label": 0},
    {"id": "n3", "text": "Routine review booked, no new symptoms", "label": 0},
]
RAW_PII = ("John Smith", "john.smith@example.com", "4111 1111 1111 1111")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`fedmask participant train` through the command line: the output folder and what it printed."""
    root = tmp_path_factory.mktemp("predict")
    runner = CliRunner()
    data = root / "bank.jsonl"
    assert (
        runner.invoke(main, ["data", "generate", "--party", "bank", "--records", "60", "--out", str(data)]).exit_code
        == 0
    )
    out = root / "out"
    args = ["participant", "train", "--data", str(data), "--out", str(out), "--local-steps", "2", "--batch-size", "1"]
    args += ["--accountant", "rdp", "--max-seq-len", "32", "--label-names", "routine,urgent"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def _predict(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["predict", *args])
    return result.exit_code, result.stdout, result.stderr


def test_participant_train_prints_scores_and_writes_the_export(trained) -> None:
    out, printed = trained
    report = json.loads((out / "report.json").read_text())
    scores = report["scores"]
    assert set(scores["ci95"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
    assert scores["accuracy"] == pytest.approx(report["accuracy"], rel=1e-12)
    # The closing line: balanced accuracy and macro-F1 with intervals, next to the majority baseline.
    assert "held-out balanced accuracy" in printed and "macro-F1" in printed
    assert "majority baseline (always 'routine')" in printed or "majority baseline (always 'urgent')" in printed
    assert "beat the majority baseline" in printed
    paths = json.loads(next(line for line in printed.splitlines() if line.startswith('{"adapter"')))
    assert paths["model"] == str(out / "model") and (out / "model" / EXPORT_MARKER).is_file()
    assert predict_module.EXPORT_MARKER == EXPORT_MARKER


def test_predict_scrubs_the_inputs_and_both_routes_agree(trained, tmp_path: Path) -> None:
    out, _ = trained
    records = _jsonl(tmp_path / "new.jsonl", NEW_RECORDS)
    code, stdout, stderr = _predict("--model", str(out), "--data", str(records))  # the output folder: model/
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [row["id"] for row in rows] == ["n1", "n2", "n3"]
    assert "[NAME]" in rows[0]["text"] and "[EMAIL]" in rows[0]["text"] and "[CARD]" in rows[1]["text"]
    assert not any(pii in stdout for pii in RAW_PII)
    assert all(row["label"] in ("routine", "urgent") and 0.5 <= row["probability"] <= 1.0 for row in rows)
    assert "PII replaced in the inputs: email 1, card 1, name 1" in stderr
    assert "labelled records: balanced accuracy" in stderr  # the records carry labels

    # The PEFT adapter on the rebuilt base model (mean pooling) gives the export's predictions.
    written = tmp_path / "adapter-predictions.jsonl"
    code, stdout, stderr = _predict("--model", str(out / "adapter"), "--data", str(records), "--out", str(written))
    assert code == 0, stderr
    assert stdout == "" and f"predictions in {written}" in stderr
    via_adapter = [json.loads(line) for line in written.read_text().splitlines()]
    assert [r["label"] for r in via_adapter] == [r["label"] for r in rows]  # names from the sibling model/
    np.testing.assert_allclose(
        [r["probability"] for r in via_adapter], [r["probability"] for r in rows], rtol=0, atol=1e-4
    )  # float32 merged vs unmerged weights (~1e-5 in logits), printed to 1e-6

    # The run's report.json carries the same settings (resolved): the same predictions.
    code, stdout, stderr = _predict(
        "--model", str(out / "adapter"), "--config", str(out / "report.json"), "--data", str(records)
    )
    assert code == 0, stderr
    assert [json.loads(line)["label"] for line in stdout.splitlines()] == [r["label"] for r in rows]

    # CSV, as `participant train` reads it, without labels: predictions, no scores.
    table = tmp_path / "new.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text"])
        writer.writeheader()
        writer.writerows({"text": r["text"]} for r in NEW_RECORDS)
    code, stdout, stderr = _predict("--model", str(out / "model"), "--data", str(table))
    assert code == 0, stderr
    assert [json.loads(line)["label"] for line in stdout.splitlines()] == [r["label"] for r in rows]
    assert "balanced accuracy" not in stderr


def test_bad_input_gets_a_one_line_error(trained, tmp_path: Path) -> None:
    out, _ = trained
    records = _jsonl(tmp_path / "new.jsonl", NEW_RECORDS)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": "typo"}\n', encoding="utf-8")
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    lone_adapter = tmp_path / "lone"
    lone_adapter.mkdir()
    (lone_adapter / "adapter_config.json").write_text((out / "adapter" / "adapter_config.json").read_text())
    broken_config = _jsonl(tmp_path / "broken.json", [])
    broken_config.write_text("{not json", encoding="utf-8")
    latin1_config = tmp_path / "latin1.json"
    latin1_config.write_bytes('{"mode": "lora", "note": "données"}'.encode("latin-1"))
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = [
        (["--model", str(out), "--data", str(tmp_path / "missing.jsonl")], "data file not found"),
        (["--model", str(out), "--data", str(bad)], "bad.jsonl:2: missing required field 'text'"),
        (["--model", str(not_a_model), "--data", str(records)], "is not a fedmask model"),
        (["--model", str(tmp_path / "nowhere"), "--data", str(records)], "model folder not found"),
        (["--model", str(lone_adapter), "--data", str(records)], "no training settings for the adapter"),
        (["--model", str(lone_adapter), "--data", str(records), "--config", str(broken_config)], "cannot read"),
        (["--model", str(lone_adapter), "--data", str(records), "--config", str(latin1_config)], "UnicodeDecodeError"),
        # Refused before the model is looked at (here: a folder that is none).
        (["--model", str(not_a_model), "--data", str(records), "--out", str(a_file / "p.jsonl")], "cannot write"),
        (["--model", str(out / "model"), "--data", str(records), "--task", "causal_lm"], "cannot generate text"),
        (["--model", str(out / "adapter"), "--data", str(records), "--task", "causal_lm"], "holds a classification"),
    ]
    for args, message in cases:
        code, stdout, stderr = _predict(*args)
        assert code == 1, (args, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, stderr)
        assert stdout == ""


@pytest.fixture(scope="module")
def causal_lm(tiny_qwen2_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedmask.adapter.config import TrainingConfig
    from fedmask.demo.data import generate_records
    from fedmask.participant.data import Record
    from fedmask.participant.training import train_adapter, write_training_outputs

    config = TrainingConfig(
        model_path=tiny_qwen2_path,
        task="causal_lm",
        accountant="rdp",
        local_steps=2,
        batch_size=1,
        max_seq_len=32,
        lora_rank=4,
        noise_seed=0,
    )
    records = [Record(text=str(r["text"])) for r in generate_records("bank", 50, seed=2)]
    result = train_adapter(config, records)
    return write_training_outputs(result, tmp_path_factory.mktemp("causal") / "out")


def test_causal_lm_prompts_get_scrubbed_continuations(causal_lm: Path, tmp_path: Path) -> None:
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"text": r["text"]} for r in NEW_RECORDS[:2]])
    code, stdout, stderr = _predict(
        "--model", str(causal_lm), "--task", "causal_lm", "--data", str(prompts), "--max-new-tokens", "6"
    )
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert len(rows) == 2 and all(isinstance(r["generated"], str) for r in rows)
    assert "[EMAIL]" in rows[0]["text"] and not any(pii in stdout for pii in RAW_PII)


def test_generated_text_is_scrubbed_before_it_is_written(
    causal_lm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the model writes -- here an e-mail and a card it might have memorised -- is scrubbed.
    seen: list[str] = []

    def leaky(model, tokenizer, prompt: str, max_seq_len: int, max_new_tokens: int) -> str:
        seen.append(prompt)
        return " reach me at jane.doe@example.org, card 4111 1111 1111 1111"

    monkeypatch.setattr(predict_module, "_generate", leaky)
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"text": NEW_RECORDS[0]["text"]}])
    out = tmp_path / "generated.jsonl"
    code, stdout, stderr = _predict(
        "--model", str(causal_lm / "adapter"), "--data", str(prompts), "--task", "causal_lm", "--out", str(out)
    )
    assert code == 0, stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["generated"] == " reach me at [EMAIL], card [CARD]"
    assert seen == [row["text"]] and "john.smith@example.com" not in seen[0]  # the model saw scrubbed text
    assert "in the generated text: email 1, card 1" in stderr
