"""The exported classifier: a sentence-transformers folder that reproduces the trained model without fedmask."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from fedmask.adapter.config import TrainingConfig
from fedmask.adapter.export import EXPORT_MARKER, ExportError, TrainingFacts, export_classifier
from fedmask.participant.training import TrainingResult, train_adapter, write_training_outputs

LABELS = ["routine", "urgent"]


def _small_config(minilm_path: str, mode: str, lora_layers: int | None = None) -> TrainingConfig:
    # As in test_training.py: 50 records at batch size 1, 3 steps; quick, and the adapter moves.
    return TrainingConfig(
        model_path=minilm_path,
        mode=mode,
        accountant="rdp",
        local_steps=3,
        batch_size=1,
        max_seq_len=32,
        lora_rank=4,
        lora_layers=lora_layers,
        noise_seed=0,
    )


def _train(minilm_path: str, mode: str, demo_records, lora_layers: int | None = None) -> TrainingResult:
    train = demo_records("hospital-a", 200, seed=3)[:50]
    heldout = demo_records("hospital-a", 200, seed=3, split="heldout")  # 40 records
    return train_adapter(_small_config(minilm_path, mode, lora_layers), train, heldout=heldout)


@pytest.fixture(scope="module")
def trained_lora(
    minilm_path: str, demo_records, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainingResult, Path]:
    result = _train(minilm_path, "lora", demo_records)
    out = write_training_outputs(result, tmp_path_factory.mktemp("train") / "out", export=True, label_names=LABELS)
    return result, out


def _isolated_python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Python with the virtualenv's libraries but neither the repository nor fedmask's editable install.

    -I: no PYTHONPATH, no user site, no current directory; -S: no site-packages and no .pth files
    (the editable install is one); then site-packages goes back on the path by hand.
    """
    bootstrap = f"import sys; sys.path.append({sysconfig.get_paths()['purelib']!r}); " + args[0]
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", bootstrap, *args[1:]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def test_the_export_folder_describes_the_model_without_local_paths(trained_lora, minilm_path: str) -> None:
    result, out = trained_lora
    model = out / "model"
    for name in ("modules.json", "model.safetensors", "1_Pooling/config.json", "2_Dense/config.json"):
        assert (model / name).is_file(), name
    assert json.loads((model / "labels.json").read_text()) == {"0": "routine", "1": "urgent"}
    dense = json.loads((model / "2_Dense/config.json").read_text())
    assert dense["activation_function"] == "torch.nn.modules.linear.Identity" and dense["out_features"] == 2
    pooling = json.loads((model / "1_Pooling/config.json").read_text())
    assert pooling["pooling_mode"] == "mean"

    # The held-out records the scores come from, scrubbed, in order.
    rows = [json.loads(line) for line in (model / "heldout.jsonl").read_text().splitlines()]
    assert [(r["text"], r["label"]) for r in rows] == [(r.text, r.label) for r in result.heldout]

    card = (model / "README.md").read_text()
    assert card.startswith("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n")
    report = result.report
    assert f"(ε, δ) = ({report['epsilon']:.3g}, 1e-05)" in card
    assert "LoRA (rank 4, alpha 16) on query, value, merged into the weights" in card
    assert "**Parties:** 1" in card and "fedmask 0.1.0" in card
    assert "always 'routine' (majority baseline)" in card or "always 'urgent' (majority baseline)" in card
    manifest = json.loads((model / EXPORT_MARKER).read_text())
    assert manifest["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["training"]["parties"] == 1 and manifest["training"]["epsilon"] == report["epsilon"]
    assert abs(manifest["scores"]["accuracy"] - report["accuracy"]) <= 0.005
    assert json.loads((out / "report.json").read_text())["export"]["path"] == "model"

    # No file names this machine's copy of the model (or any absolute path into it).
    local = str(Path(minilm_path).resolve())
    for folder in (model, out / "adapter"):
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".md", ".jsonl", ".txt", ".py"):
                text = path.read_text(encoding="utf-8")
                assert local not in text and "site-packages" not in text, path
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    training_config = json.loads((out / "adapter" / "training_config.json").read_text())
    assert training_config["model_path"] is None  # the bundled model, wherever it is installed
    rebuilt = TrainingConfig.from_dict(training_config)
    assert rebuilt.mode == "lora" and rebuilt.lora_rank == 4 and rebuilt.max_seq_len == 32


def test_predict_example_reproduces_the_report_without_fedmask(trained_lora, tmp_path: Path) -> None:
    _check_predict_example(*trained_lora, tmp_path)


@pytest.mark.slow  # 15 s: the default suite keeps the all-layer case above
def test_lora_in_the_top_layers_exports_and_reproduces_too(minilm_path: str, demo_records, tmp_path: Path) -> None:
    """The demo's setting: LoRA in the top two layers, the frozen ones replayed while training
    and scoring (fedmask.adapter.prefix); a standard load runs every layer."""
    result = _train(minilm_path, "lora", demo_records, lora_layers=2)
    prefix = result.trainer.prefix
    assert prefix is not None
    out = write_training_outputs(result, tmp_path / "out", export=True, label_names=LABELS)
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["layers_to_transform"] == [4, 5]
    replayed = prefix.replayed_batches
    _check_predict_example(result, out, tmp_path)  # scores the held-out split again: replayed
    assert prefix.replayed_batches > replayed


def _check_predict_example(result: TrainingResult, out: Path, tmp_path: Path) -> None:
    model = out / "model"
    cannot = _isolated_python("import fedmask", cwd=tmp_path)
    assert cannot.returncode != 0 and "No module named 'fedmask'" in cannot.stderr

    script = model / "predict_example.py"
    run = _isolated_python(
        f"import runpy; sys.argv = [{str(script)!r}, {str(model / 'heldout.jsonl')!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    predictions = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(predictions) == len(result.heldout)
    predicted = np.array([LABELS.index(p["label"]) for p in predictions])
    labels = np.array([r.label for r in result.heldout])
    accuracy = float((predicted == labels).mean())
    assert abs(accuracy - result.report["accuracy"]) <= 0.005, (accuracy, result.report["accuracy"])
    assert f"accuracy {accuracy:.4f}" in run.stderr

    # Record by record: the probability of the predicted label, as fedmask's own model gives it.
    # Logits agree to ~1e-5 (float32 merge), the printed value is rounded to 1e-6.
    evaluation = result.trainer.evaluate(result.heldout)
    assert evaluation.probabilities is not None
    expected = evaluation.probabilities[np.arange(labels.size), predicted]
    np.testing.assert_allclose([p["probability"] for p in predictions], expected, rtol=0, atol=1e-4)
    assert [p["text"] for p in predictions] == [r.text for r in result.heldout]


def test_a_bitfit_model_exports_with_its_trained_biases(minilm_path: str, demo_records, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    result = _train(minilm_path, "bitfit", demo_records)
    facts = TrainingFacts(parties=3, rounds=2, epsilon=7.5, delta=1e-5, accountant="prv", data="demo records")
    heldout = [{"text": r.text, "label": r.label} for r in result.heldout]
    manifest = export_classifier(
        result.trainer.config, result.vector, tmp_path / "model", heldout=heldout, label_names=LABELS, facts=facts
    )
    assert "DP-BiTFiT" in manifest["method"]
    card = (tmp_path / "model" / "README.md").read_text()
    assert "federated by 3 parties over 2 rounds under secure aggregation" in card
    logits = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode([r.text for r in result.heldout])
    evaluation = result.trainer.evaluate(result.heldout)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, evaluation.probabilities, rtol=0, atol=1e-5)
    # The trained biases are in the export: the untrained model's outputs are clearly different.
    result.trainer.set_adapter_vector(result.trainer.initial_vector)
    untrained = result.trainer.evaluate(result.heldout).probabilities
    assert np.abs(untrained - probabilities).max() > 1e-3


def test_export_refuses_what_it_cannot_do(trained_lora, tmp_path: Path) -> None:
    result, _ = trained_lora
    config, facts = result.trainer.config, TrainingFacts(1, 1, 8.0, 1e-5, "prv", "records")
    heldout = [{"text": "chest pain", "label": 1}]
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not a fedmask export"):
        export_classifier(config, result.vector, occupied, heldout=heldout, label_names=LABELS, facts=facts)
    assert (occupied / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="3 label names for 2 labels"):
        export_classifier(
            config, result.vector, tmp_path / "m", heldout=heldout, label_names=["a", "b", "c"], facts=facts
        )
    with pytest.raises(ExportError, match="no held-out records"):
        export_classifier(config, result.vector, tmp_path / "m", heldout=[], label_names=LABELS, facts=facts)
    causal = TrainingConfig(model_path="unused", task="causal_lm")
    with pytest.raises(ExportError, match="only classifiers are exported"):
        export_classifier(causal, result.vector, tmp_path / "m", heldout=heldout, label_names=LABELS, facts=facts)
    assert not (tmp_path / "m").exists()
