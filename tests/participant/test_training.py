"""DP adapter training end to end: both modes on both tasks, export, report, rounds, ledger."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmask.adapter import calibration
from fedmask.adapter.config import ConfigError, TrainingConfig
from fedmask.adapter.model import load_trained_model
from fedmask.participant.ledger import CALIBRATION_NOTE, PrivacyBudgetExceeded, PrivacyLedger, compute_epsilon
from fedmask.participant.pii import PII_TYPES
from fedmask.participant.trainer import LocalTrainer
from fedmask.participant.training import train_adapter, write_training_outputs

REPORT_KEYS = {
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
}


def _small_config(path: str, task: str, mode: str, **overrides) -> TrainingConfig:
    # 50 records at batch size 1: sample rate 0.02, where the RDP accountant answers quickly
    # (its noise search takes tens of seconds at rates like 0.5); one record per step is cheap.
    settings = dict(
        model_path=path,
        task=task,
        mode=mode,
        accountant="rdp",
        local_steps=3,
        batch_size=1,
        max_seq_len=32,
        lora_rank=4,
        noise_seed=0,
        target_epsilon=8.0,
        target_delta=1e-5,
    )
    settings.update(overrides)
    return TrainingConfig(**settings)


def _tensors_of(vector: np.ndarray, trainer: LocalTrainer) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for spec in trainer.spec.tensors:
        out[spec.name] = vector[offset : offset + spec.numel]
        offset += spec.numel
    return out


@pytest.mark.parametrize(
    ("model", "task", "mode"),
    [
        ("minilm", "classification", "lora"),
        ("minilm", "classification", "bitfit"),
        ("qwen2", "causal_lm", "lora"),
        ("qwen2", "causal_lm", "bitfit"),
    ],
)
def test_train_report_and_export(
    model: str,
    task: str,
    mode: str,
    minilm_path: str,
    tiny_qwen2_path: str,
    demo_records,
    tmp_path: Path,
) -> None:
    path = minilm_path if model == "minilm" else tiny_qwen2_path
    config = _small_config(path, task, mode)
    train = demo_records("hospital-b", 80, seed=1)[:50]
    heldout = demo_records("hospital-b", 80, seed=1, split="heldout")
    ledger = PrivacyLedger.open(tmp_path / "ledger.json", accountant="rdp", epsilon_budget=8.0, delta=1e-5)
    result = train_adapter(config, train, heldout=heldout, ledger=ledger)
    trainer, report = result.trainer, result.report

    # The adapter: what trains, where it started, and that every tensor moved.
    names = trainer.spec.names
    if mode == "lora":
        assert all(".lora_" in n or ".modules_to_save." in n for n in names)
        initial = _tensors_of(trainer.initial_vector, trainer)
        lora_b = [n for n in names if ".lora_B." in n]
        assert lora_b and all(not initial[n].any() for n in lora_b)  # LoRA-B starts at zero
    else:
        assert all(n.endswith(".bias") or ".modules_to_save." in n for n in names)
        assert not any(".lora_" in n for n in names)
    before = _tensors_of(trainer.initial_vector, trainer)
    after = _tensors_of(result.vector, trainer)
    unmoved = [n for n in names if np.array_equal(before[n], after[n])]
    assert unmoved == []
    assert list(result.adapter_state) == list(names)
    for name, tensor in result.adapter_state.items():
        np.testing.assert_array_equal(tensor.numpy().reshape(-1), after[name])

    # The report: the fields, and an epsilon the accountant reproduces.
    assert REPORT_KEYS <= set(report)
    assert report["steps"] == 3 and report["accountant"] == "rdp"
    assert report["clipping"] == ("ew" if mode == "lora" else "hooks")  # hooks: bias-only samplers
    assert report["sample_rate"] == 1 / 50 and report["delta"] == 1e-5
    history = [(report["noise_multiplier"], report["sample_rate"], 3)]
    assert report["accountant_history"] == [list(history[0])]
    assert report["epsilon"] == pytest.approx(compute_epsilon("rdp", history, 1e-5), rel=1e-9)
    assert 7.5 < report["epsilon"] <= 8.0  # the whole budget is planned for this one round
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 < report["majority_baseline"] <= 1.0
    scores = report["scores"]
    assert scores["count"] == len(heldout) and scores["bootstrap"]["resamples"] == 1000
    if task == "classification":
        # The same held-out predictions behind both: the old fields and the scores agree.
        assert scores["accuracy"] == pytest.approx(report["accuracy"], rel=1e-12)
        assert scores["majority_baseline"] == pytest.approx(report["majority_baseline"], rel=1e-12)
        for name in ("balanced_accuracy", "macro_f1", "auroc"):
            low, high = scores["ci95"][name]
            assert 0.0 <= low <= scores[name] <= high <= 1.0, name
    else:
        assert scores["next_token_accuracy"] == pytest.approx(report["accuracy"], rel=1e-12)
        assert scores["perplexity"] == pytest.approx(np.exp(report["heldout_loss"]), rel=1e-6)
        assert scores["tokens"] == report["heldout_count"]
    assert set(report["pii_counts"]) == set(PII_TYPES)
    assert sum(report["pii_counts"].values()) == 0  # demo_records are scrubbed already
    assert report["train_records"] == 50 and report["heldout_records"] == len(heldout)

    # The export loads with plain peft and computes what the trained model computes.
    out = write_training_outputs(result, tmp_path / "out")
    assert json.loads((out / "report.json").read_text())["epsilon"] == report["epsilon"]
    # The adapter folder names the base model without this machine's paths, and says how to rebuild it.
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert not Path(adapter_config["base_model_name_or_path"]).is_absolute()
    if model == "minilm":
        assert adapter_config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    settings = json.loads((out / "adapter" / "training_config.json").read_text())
    assert TrainingConfig.from_dict(settings).portable_dict() == config.portable_dict()
    assert "fedmask predict" in (out / "adapter" / "README.md").read_text()
    reloaded = load_trained_model(config, out / "adapter")  # PeftModel.from_pretrained
    batch = trainer.tokenizer([r.text for r in heldout[:4]], padding=True, return_tensors="pt")
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_rounds_accumulate_epsilon_and_stop_at_the_budget(tiny_qwen2_path: str, demo_records, tmp_path: Path) -> None:
    config = _small_config(tiny_qwen2_path, "causal_lm", "lora", planned_rounds=2, local_steps=2)
    records = demo_records("bank", 80, seed=2)[:50]
    ledger_path = tmp_path / "ledger.json"

    def open_ledger() -> PrivacyLedger:
        return PrivacyLedger.open(ledger_path, accountant="rdp", epsilon_budget=8.0, delta=1e-5)

    ledger = open_ledger()
    first = train_adapter(config, records, ledger=ledger, note="round 1")
    global_vector = first.vector + np.float32(0.01)  # as if the average moved it
    second = train_adapter(
        config, records, ledger=ledger, trainer=first.trainer, global_adapter_state=global_vector, note="round 2"
    )
    assert second.report["epsilon"] > first.report["epsilon"]
    assert second.report["total_steps"] == 4
    assert second.report["noise_multiplier"] == first.report["noise_multiplier"]
    nm, rate = first.report["noise_multiplier"], first.report["sample_rate"]
    assert second.report["epsilon"] == pytest.approx(compute_epsilon("rdp", [(nm, rate, 4)], 1e-5), rel=1e-9)
    assert second.report["epsilon"] <= 8.0
    # Round 2 started from the global adapter, not from where round 1 left the model.
    assert second.report["adapter"]["update_l2_norm"] == pytest.approx(
        float(np.linalg.norm(second.vector - global_vector)), rel=1e-6
    )

    # A restart: a new trainer and the ledger from disk. The plan is over: refuse, train nothing.
    restarted = open_ledger()
    assert restarted.steps == 4 and restarted.epsilon_spent == second.report["epsilon"]
    trainer = LocalTrainer(config, ledger=restarted)
    untouched = trainer.adapter_vector()
    with pytest.raises(PrivacyBudgetExceeded, match="Refusing to train"):
        train_adapter(config, records, ledger=restarted, trainer=trainer)
    np.testing.assert_array_equal(trainer.adapter_vector(), untouched)
    assert open_ledger().steps == 4
    entries = json.loads(ledger_path.read_text())["entries"]
    assert [e["note"] for e in entries] == ["round 1", "round 2"]


def test_the_last_round_calibrates_within_the_planned_budget(
    minilm_path: str, tiny_qwen2_path: str, demo_records, monkeypatch
) -> None:
    # Qwen2's classification head has no bias: nothing to shift, no budget set aside.
    no_bias = LocalTrainer(_small_config(tiny_qwen2_path, "classification", "bitfit", planned_rounds=2))
    assert not no_bias.calibrates and no_bias.plan_for(50).calibration_noise_multiplier is None

    config = _small_config(minilm_path, "classification", "bitfit", planned_rounds=2)
    records = demo_records("bank", 80, seed=2)
    ledger = PrivacyLedger(accountant="rdp", epsilon_budget=8.0, delta=1e-5)
    trainer = LocalTrainer(config, ledger=ledger)
    plan = trainer.plan_for(50)
    calibration_noise = plan.calibration_noise_multiplier
    # The release takes a tenth of the budget's mu^2 (Gaussian DP); the steps' noise leaves room for it.
    assert calibration_noise == pytest.approx(calibration.calibration_noise(8.0, 1e-5), rel=1e-12)
    planned = [(plan.noise_multiplier, plan.sample_rate, plan.planned_steps), (calibration_noise, 1.0, 1)]
    assert 0.99 * 8.0 <= compute_epsilon("rdp", planned, 1e-5) <= 8.0

    first = train_adapter(config, records[:50], trainer=trainer, ledger=ledger, score_heldout=False)
    result = train_adapter(config, records[:50], heldout=records[50:], trainer=trainer, ledger=ledger, calibrate=True)
    assert first.report["calibration"] is None and result.report["calibration"]["shift"] != 0.0
    assert [e["note"] for e in ledger.entries][-1] == CALIBRATION_NOTE
    assert ledger.history[-1] == (calibration_noise, 1.0, 1)
    assert result.report["epsilon"] == ledger.epsilon_spent <= 8.0
    np.testing.assert_array_equal(result.vector, trainer.adapter_vector())  # the shifted adapter is the result

    # A release with nothing to calibrate (say, the noise drove the positives below zero) is said
    # in the report, and the adapter stays as trained: no traceback after minutes of training.
    def nothing_to_calibrate(release):
        raise calibration.CalibrationError("the release shows 0 positives among 50 records: nothing to calibrate")

    monkeypatch.setattr(calibration, "solve_shift", nothing_to_calibrate)
    alone = LocalTrainer(config)
    unsolved = train_adapter(config, records[:50], trainer=alone, score_heldout=False, calibrate=True)
    assert unsolved.report["calibration"] is None
    assert any("not calibrated: the release shows 0 positives" in line for line in unsolved.report["warnings"])
    np.testing.assert_array_equal(unsolved.vector, alone.adapter_vector())
    assert alone.ledger.entries[-1]["note"] == CALIBRATION_NOTE  # the release was charged all the same
    monkeypatch.undo()

    # The shift moves the class-1 bias of the head and nothing else.
    before = trainer.adapter_vector()
    trainer.shift_decision(0.75)
    head_bias = calibration.head_bias_offset(trainer.spec.to_json())
    moved = trainer.adapter_vector()
    assert np.flatnonzero(moved != before).tolist() == [head_bias + 1]
    assert moved[head_bias + 1] == before[head_bias + 1] + np.float32(0.75)


def test_global_adapter_state_is_loaded_before_training(tiny_qwen2_path: str, demo_records) -> None:
    config = _small_config(tiny_qwen2_path, "causal_lm", "bitfit")
    records = demo_records("bank", 80, seed=2)[:50]
    trainer = LocalTrainer(config)
    shifted = trainer.initial_vector + np.float32(0.25)
    state = {
        name: torch.full(spec.shape, 0.25) for name, spec in zip(trainer.spec.names, trainer.spec.tensors, strict=True)
    }
    result = train_adapter(config, records, trainer=trainer, global_adapter_state=shifted)
    # A small update from the given start (noise and clipping keep it small), not from init.
    assert np.abs(result.vector - shifted).max() < 0.1
    assert np.abs(result.vector - trainer.initial_vector).min() > 0.1
    with pytest.raises(ValueError, match="does not match this model's adapter"):
        train_adapter(config, records, trainer=trainer, global_adapter_state={"x": state[trainer.spec.names[0]]})


def test_a_node_can_train_without_scoring_the_local_adapter(tiny_qwen2_path: str, demo_records, monkeypatch) -> None:
    config = _small_config(tiny_qwen2_path, "classification", "bitfit", planned_rounds=2)
    records = demo_records("bank", 80, seed=2)
    trainer = LocalTrainer(config)
    scored: list[int] = []
    evaluate = trainer.evaluate

    def counting_evaluate(heldout, **kwargs):
        scored.append(len(heldout))
        return evaluate(heldout, **kwargs)

    monkeypatch.setattr(trainer, "evaluate", counting_evaluate)
    result = train_adapter(config, records[:50], heldout=records[50:], trainer=trainer, score_heldout=False)
    assert scored == [] and result.report["accuracy"] is None and result.report["scores"] is None
    heldout = len(records[50:])
    assert heldout > 0 and result.report["heldout_records"] == heldout  # still counted, just not scored
    result = train_adapter(config, records[:50], heldout=records[50:], trainer=trainer)
    assert scored == [heldout] and result.report["scores"] is not None


def test_noise_comes_from_os_entropy_unless_a_seed_is_given(tiny_qwen2_path: str, demo_records) -> None:
    records = demo_records("hospital-a", 80, seed=5)[:50]
    config = _small_config(tiny_qwen2_path, "causal_lm", "lora", noise_seed=None)
    first, second = train_adapter(config, records), train_adapter(config, records)
    assert first.report["randomness"] == "AES-256-CTR keyed from os.urandom"
    np.testing.assert_array_equal(first.trainer.initial_vector, second.trainer.initial_vector)
    # Same start, same data, same config: only fresh entropy tells the two runs apart. With
    # torch's default generator (fixed initial seed) they would agree, and anyone could
    # regenerate the noise.
    assert not np.array_equal(first.vector, second.vector)

    # With a noise seed (tests only) the batches and the noise repeat exactly.
    seeded = _small_config(tiny_qwen2_path, "causal_lm", "lora", noise_seed=7)
    trainer = LocalTrainer(seeded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.prepare(records)
    # Opacus' "Secure RNG turned off" would be false here: the noise is not torch's.
    assert not [w for w in caught if "Secure RNG" in str(w.message)]
    trainer._seed_round()
    draws = trainer._private.randomness.uniforms(8)
    trainer._seed_round()
    np.testing.assert_array_equal(trainer._private.randomness.uniforms(8), draws)


@pytest.mark.parametrize(
    ("model", "task", "clipping"),
    [("minilm", "classification", "auto"), ("qwen2", "causal_lm", "ghost"), ("qwen2", "causal_lm", "hooks")],
)
def test_dp_steps_draw_nothing_from_torchs_generators(
    model: str, task: str, clipping: str, minilm_path: str, tiny_qwen2_path: str, demo_records, monkeypatch
) -> None:
    """torch's CPU generator is a Mersenne Twister: its state follows from its outputs, so noise
    and batches drawn from it could be predicted. Every DP step (the head's probe steps, and
    Opacus's sampler and optimizer) must draw from the round's CSPRNG instead."""
    path = minilm_path if model == "minilm" else tiny_qwen2_path
    config = _small_config(path, task, "lora", local_steps=4, clipping=clipping, noise_seed=None)
    records = demo_records("hospital-b", 80, seed=8)[:50]
    trainer = LocalTrainer(config)
    trainer.prepare(records)
    before = trainer.adapter_vector()

    def predictable(*args, **kwargs):
        raise AssertionError("DP randomness drawn from torch's generator")

    for name in ("normal", "rand", "randn", "randint", "randperm", "bernoulli"):
        monkeypatch.setattr(torch, name, predictable)
    result = trainer.train(records)
    assert result.steps == 4 and (result.probe_steps > 0) == (model == "minilm")
    assert np.isfinite(result.vector).all() and not np.array_equal(result.vector, before)


@pytest.mark.parametrize("clipping", ["ew", "ghost"])
def test_empty_poisson_batches_take_noise_only_steps(clipping: str, tiny_qwen2_path: str, demo_records) -> None:
    # 50 records at sample rate 0.02: one record expected per step, none in about 36% of them.
    config = _small_config(tiny_qwen2_path, "causal_lm", "lora", local_steps=12, clipping=clipping, noise_seed=3)
    records = demo_records("bank", 80, seed=6)[:50]
    result = train_adapter(config, records)
    assert result.report["empty_batches"] > 0
    assert result.report["steps"] == 12 and result.report["total_steps"] == 12
    assert result.report["clipping"] == clipping
    assert np.isfinite(result.vector).all()


def test_auto_clipping_falls_back_to_hooks_and_says_why(
    tiny_qwen2_path: str, demo_records, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = LocalTrainer._backward

    def backward_without_ew(self: LocalTrainer, batch):
        if self._private is not None and self._private.clipping == "ew":
            raise NotImplementedError("expanded weights do not support this layer")
        return original(self, batch)

    monkeypatch.setattr(LocalTrainer, "_backward", backward_without_ew)
    config = _small_config(tiny_qwen2_path, "causal_lm", "lora")
    result = train_adapter(config, demo_records("bank", 80, seed=6)[:50])
    assert result.report["clipping"] == "hooks"
    assert "ew failed on this model (NotImplementedError" in result.report["clipping_note"]


def test_training_refuses_bad_settings(tiny_qwen2_path: str, demo_records) -> None:
    with pytest.raises(ConfigError, match="mode must be one of"):
        TrainingConfig(mode="prefix")
    with pytest.raises(ConfigError, match="causal_lm needs model_path"):
        TrainingConfig(task="causal_lm")
    with pytest.raises(ConfigError, match="target_delta must be in"):
        TrainingConfig(target_delta=1.0)
    with pytest.raises(ConfigError, match="clipping must be one of"):
        TrainingConfig(clipping="fast")
    assert TrainingConfig.create(batch_size=None, local_steps=5).batch_size == 64
    # Settings read from JSON (a federation's config, a task) carry a list: the same config.
    from_json = TrainingConfig.create(**json.loads('{"lora_targets": ["query", "value"]}'))
    assert from_json == TrainingConfig.create(lora_targets=("query", "value"))
    config = _small_config(tiny_qwen2_path, "causal_lm", "lora", planned_rounds=2, local_steps=2)
    ledger = PrivacyLedger(accountant="rdp", epsilon_budget=8.0, delta=1e-5)
    trainer = LocalTrainer(config, ledger=ledger)
    train_adapter(config, demo_records("bank", 80, seed=2)[:50], trainer=trainer, ledger=ledger)
    # Accounting is per dataset: the next round must use the same records.
    with pytest.raises(ConfigError, match="privacy plan was made for 50 records"):
        trainer.plan_for(60)
    with pytest.raises(ValueError, match="prepared on a different training set"):
        train_adapter(config, demo_records("bank", 80, seed=3)[:50], trainer=trainer, ledger=ledger)
    with pytest.raises(ConfigError, match="ledger terms"):
        LocalTrainer(_small_config(tiny_qwen2_path, "causal_lm", "lora", target_epsilon=3.0), ledger=ledger)


def test_encoders_classify_from_the_masked_mean_of_token_states(minilm_path: str, tiny_qwen2_path: str) -> None:
    trainer = LocalTrainer(TrainingConfig(model_path=minilm_path))
    assert trainer.pooling == "mean"
    model = trainer.model.eval()
    short, long = "patient stable, routine review", "chest pain since this morning " * 6
    alone = trainer.tokenizer([short], return_tensors="pt")
    padded = trainer.tokenizer([short, long], padding=True, return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        logits_alone = model(**alone).logits[0]
        logits_padded = model(**padded).logits[0]
        # By hand: the encoder's token states, averaged over the real tokens, into the head.
        base = model.get_base_model()
        hidden = base.bert(**alone).last_hidden_state[0]
        by_hand = base.classifier(hidden.mean(dim=0, keepdim=True))[0]
    torch.testing.assert_close(logits_padded, logits_alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(by_hand, logits_alone, rtol=1e-4, atol=1e-5)
    # Decoders keep their own pooling (the last token's state).
    decoder = LocalTrainer(_small_config(tiny_qwen2_path, "causal_lm", "lora"))
    assert decoder.pooling == "model"


def _assert_every_tensor_moved(result) -> None:
    trainer = result.trainer
    before = _tensors_of(trainer.initial_vector, trainer)
    after = _tensors_of(result.vector, trainer)
    assert [n for n in trainer.spec.names if np.array_equal(before[n], after[n])] == []


# Slow (about 40 s per mode on one thread): the default suite keeps the quicker learning check on
# the tiny Qwen2 (test_dp_adapter_lowers_the_causal_lm_loss).
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "bitfit"])
def test_dp_adapter_beats_the_majority_class_on_the_demo_task(mode: str, minilm_path: str, demo_records) -> None:
    # The guard against silently broken DP training (opacus#820): at epsilon 8 the adapter must
    # learn the demo task, clearly. 640 training records with the default recipe (4 epochs: 40
    # steps, 30 of them the head's cheap probe steps), shorter sequences than the CLI's.
    train = demo_records("hospital-a", 800, seed=11)
    heldout = demo_records("hospital-a", 800, seed=11, split="heldout")
    config = TrainingConfig(model_path=minilm_path, mode=mode, max_seq_len=48, noise_seed=1)
    result = train_adapter(config, train, heldout=heldout)
    report = result.report
    assert 7.5 < report["epsilon"] <= 8.0
    assert report["accuracy"] >= report["majority_baseline"] + 0.08, report
    _assert_every_tensor_moved(result)


@pytest.mark.parametrize("mode", ["lora", "bitfit"])
def test_dp_adapter_lowers_the_causal_lm_loss(mode: str, tiny_qwen2_path: str, demo_records) -> None:
    train = demo_records("bank", 400, seed=4)
    heldout = demo_records("bank", 400, seed=4, split="heldout")
    config = TrainingConfig(
        model_path=tiny_qwen2_path,
        task="causal_lm",
        mode=mode,
        batch_size=32,
        epochs=4.0,
        learning_rate=0.5,
        max_seq_len=32,
        accountant="rdp",
        target_epsilon=50.0,
        noise_seed=0,
    )
    trainer = LocalTrainer(config)
    before = trainer.evaluate(heldout).loss
    result = train_adapter(config, train, heldout=heldout, trainer=trainer)
    assert result.report["heldout_loss"] < before - 0.05
    _assert_every_tensor_moved(result)
