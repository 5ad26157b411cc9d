"""The demo's report: the final models' scores with intervals next to the majority baseline, and the exported model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedmask.adapter.scores import classification_scores, majority_scores
from fedmask.demo.report import build_report, render_markdown

METRICS = ("macro_f1", "balanced_accuracy", "accuracy", "auroc")


def _final(parties: list[str], rounds: int) -> dict:
    ledger = []
    for number in range(1, rounds + 1):
        ledger.append(
            {
                "round": number,
                "survivors": parties,
                "dropped": {},
                "epsilon": {p: 2.0 * number for p in parties},
                "participant_epsilon": None,
                "metrics": {
                    "upload_bytes": {p: 1000 for p in parties},
                    "wall_s": 1.5,
                    "heldout_before": {"heldout_accuracy": 0.6},
                },
                "attempt": 1,
            }
        )
    return {"ledger": ledger, "final_epsilon": {p: 2.0 * rounds for p in parties}}


def _scores(labels: np.ndarray, skill: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    p1 = np.clip(0.4 + skill * (labels - 0.4) + rng.normal(0, 0.2, labels.size), 0.01, 0.99)
    return classification_scores(labels, p1)


def test_the_report_puts_every_model_next_to_the_majority_baseline() -> None:
    labels = (np.random.default_rng(0).random(300) < 0.357).astype(int)  # about 64% routine
    federated = _scores(labels, 0.6, seed=1)
    alone = {"bank": _scores(labels, 0.2, seed=2), "hospital-a": _scores(labels, 0.4, seed=3)}
    majority = majority_scores(labels, 2)
    pooled = {"pooled_dp": _scores(labels, 0.65, seed=5), "pooled_non_private": _scores(labels, 0.9, seed=6)}
    report = build_report(
        _final(["bank", "hospital-a"], 2),
        alone,
        10.0,
        20.0,
        {"rounds": 2},
        federated,
        majority,
        ["routine", "urgent"],
        pooled=pooled,
    )
    results = report["results"]
    models = (results["federated"], results["pooled_dp"], results["pooled_non_private"], results["majority"])
    for figures in (*models, *results["party_alone"].values()):
        assert set(METRICS) <= set(figures) and set(figures["ci95"]) == set(METRICS)
        for name in METRICS:
            low, high = figures["ci95"][name]
            assert low <= figures[name] <= high
    assert results["federated"]["macro_f1"] == federated["macro_f1"]
    assert results["party_alone"]["bank"]["auroc"] == alone["bank"]["auroc"]
    assert results["pooled_non_private"]["macro_f1"] == pooled["pooled_non_private"]["macro_f1"]
    assert results["pooled_dp"]["ci95"]["auroc"] == pooled["pooled_dp"]["ci95"]["auroc"]
    assert results["majority"]["balanced_accuracy"] == 0.5 and results["majority"]["auroc"] == 0.5
    assert (
        results["majority"]["accuracy"] == majority["majority_baseline"] and results["majority"]["label"] == "routine"
    )
    assert results["bootstrap"]["resamples"] == 1000
    # The accuracy-only keys stay for the programs that read them.
    assert report["federated_accuracy"] == federated["accuracy"]
    assert report["single_party_accuracy"] == {p: s["accuracy"] for p, s in alone.items()}
    assert report["rounds"][-1]["accuracy"] == federated["accuracy"]
    json.dumps(report)  # JSON-ready

    markdown = render_markdown(report)
    assert "| model | accuracy | balanced accuracy | macro-F1 | AUROC |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| **federated adapter**"))
    low, high = federated["ci95"]["macro_f1"]
    assert f"{federated['macro_f1']:.3f} [{low:.3f}, {high:.3f}]" in row
    assert "| always 'routine' (majority baseline) |" in markdown
    assert "| bank alone, same DP budget |" in markdown and "| hospital-a alone, same DP budget |" in markdown
    assert "The federated adapter beats the majority baseline" in markdown
    assert "Best party alone by macro-F1: hospital-a" in markdown
    assert "| pooled records, same DP budget |" in markdown and "| pooled records, no DP (ceiling) |" in markdown
    share = federated["macro_f1"] / pooled["pooled_non_private"]["macro_f1"]
    assert f"The federated adapter reaches {share:.3f} of the pooled non-private ceiling's macro-F1" in markdown


def test_the_report_says_plainly_when_the_federated_adapter_does_not_beat_the_majority() -> None:
    labels = (np.random.default_rng(4).random(300) < 0.357).astype(int)
    constant = majority_scores(labels, 2)  # a federated adapter that always says "routine"
    report = build_report(
        _final(["bank"], 1), {}, 1.0, 2.0, {}, constant, majority_scores(labels, 2), ["routine", "urgent"]
    )
    assert "does NOT beat the majority baseline" in render_markdown(report)
    # A coordinator alone (fedmask coordinator run --report) has nothing to evaluate on.
    alone = build_report(_final(["bank"], 1), {}, 1.0, 2.0, {})
    assert alone["results"] == {
        "federated": None,
        "party_alone": {},
        "majority": None,
        "pooled_dp": None,
        "pooled_non_private": None,
    }
    assert "not evaluated" in render_markdown(alone)


def test_a_causal_lm_report_shows_perplexity_and_next_token_accuracy(tmp_path: Path) -> None:
    from fedmask.adapter.scores import causal_lm_scores
    from fedmask.demo.report import plot

    rng = np.random.default_rng(7)
    tokens = rng.integers(5, 40, size=60)

    def scores(loss_per_token: float) -> dict:
        correct = rng.binomial(tokens, 0.3)
        return causal_lm_scores(tokens * loss_per_token + rng.normal(0, 1, tokens.size), tokens, correct)

    federated, alone = scores(3.0), {"bank": scores(3.5)}
    pooled = {"pooled_dp": scores(2.9), "pooled_non_private": scores(2.5)}
    report = build_report(_final(["bank", "hospital-a"], 2), alone, 1.0, 2.0, {}, federated, None, pooled=pooled)
    results = report["results"]
    assert results["federated"]["task"] == "causal_lm" and results["majority"] is None
    assert results["federated"]["perplexity"] == federated["perplexity"]
    assert set(results["pooled_non_private"]["ci95"]) == {"perplexity", "next_token_accuracy"}
    assert report["federated_accuracy"] == federated["next_token_accuracy"]
    markdown = render_markdown(report)
    assert "| model | perplexity | next-token accuracy |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| **federated adapter**"))
    assert f"{federated['perplexity']:.3f}" in row
    assert "| pooled records, no DP (ceiling) |" in markdown and "majority" not in markdown
    plot(report, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 0


def test_the_demo_report_scores_and_exports_the_federated_model(minilm_path: str, tmp_path: Path, demo_records) -> None:
    from fedmask.coordinator.store import FederationStore
    from fedmask.demo.data import LABEL_NAMES, generate_records, write_records
    from fedmask.demo.report import evaluate_global_adapter, heldout_union, write_report
    from fedmask.participant.trainer import LocalTrainer

    training = {
        "model_path": minilm_path,
        "mode": "lora",
        "max_seq_len": 32,
        "lora_rank": 4,
        "batch_size": 1,
        "local_steps": 1,
        "accountant": "rdp",
        "noise_seed": 0,
    }
    data_paths = {
        party: write_records(generate_records(party, 50, seed=i), tmp_path / f"{party}.jsonl")
        for i, party in enumerate(("hospital-a", "bank"))
    }
    heldout = heldout_union(data_paths)
    # Both parties' held-out splits, in party order, scrubbed as the parties scrub them.
    assert [r.meta["party"] for r in heldout] == ["hospital-a"] * 10 + ["bank"] * 10
    raw = [json.loads(line) for path in data_paths.values() for line in path.read_text().splitlines()]
    assert any("@" in row["text"] for row in raw if row["split"] == "heldout")
    assert not any("@" in r.text for r in heldout)
    # A committed global adapter: round 0's, with the head moved so that it predicts both labels.
    from fedmask.adapter.config import TrainingConfig

    trainer = LocalTrainer(TrainingConfig.create(**training))
    vector = trainer.initial_vector + np.random.default_rng(0).normal(0, 0.05, trainer.initial_vector.size).astype(
        np.float32
    )
    state = tmp_path / "coordinator"
    with FederationStore(state / "federation.db") as store:
        store.initialise({"participants": ["hospital-a", "bank"]})
        store.commit_initial(store.save_checkpoint(0, vector, trainer.spec.to_json()))

    federated = evaluate_global_adapter(training, state, heldout)
    assert federated is not None and federated["count"] == 20
    assert {party: own["count"] for party, own in federated["by_party"].items()} == {"hospital-a": 10, "bank": 10}
    trainer.set_adapter_vector(vector)
    assert federated["accuracy"] == trainer.evaluate(heldout).accuracy
    labels = [r.label for r in heldout]
    majority = majority_scores(labels, 2)
    report = build_report(_final(["bank", "hospital-a"], 1), {}, 1.0, 2.0, {}, federated, majority, LABEL_NAMES)
    out = tmp_path / "report"
    write_report(
        report, out, _final(["bank", "hospital-a"], 1), training, state, heldout=heldout, label_names=LABEL_NAMES
    )
    assert json.loads((out / "report.json").read_text())["results"]["federated"]["count"] == 20
    assert (out / "global_adapter" / "adapter_config.json").is_file()
    manifest = json.loads((out / "global_model" / "fedmask_export.json").read_text())
    assert manifest["scores"]["accuracy"] == pytest.approx(federated["accuracy"], abs=0.005)
    assert manifest["training"]["parties"] == 2 and manifest["training"]["secure_aggregation"]
    card = (out / "global_model" / "README.md").read_text()
    assert "federated by 2 parties over 1 rounds under secure aggregation" in card
    rows = [json.loads(line) for line in (out / "global_model" / "heldout.jsonl").read_text().splitlines()]
    assert {row["party"] for row in rows} == {"hospital-a", "bank"} and len(rows) == 20


# Slow (four small trainings): the default suite keeps the report and export tests above.
@pytest.mark.slow
def test_the_baselines_train_on_the_pooled_records_and_on_each_party_alone(minilm_path: str, tmp_path: Path) -> None:
    from fedmask.demo.data import generate_records, write_records
    from fedmask.demo.report import baseline_feature_cache, pooled_baselines, single_party_baselines

    training = {"model_path": minilm_path, "max_seq_len": 32, "lora_rank": 4, "batch_size": 8, "local_steps": 4}
    training |= {"accountant": "rdp", "noise_seed": 0}
    data_paths = {
        party: write_records(generate_records(party, 50, seed=i), tmp_path / f"{party}.jsonl")
        for i, party in enumerate(("hospital-a", "bank"))
    }
    messages: list[str] = []
    features = baseline_feature_cache(parties=2, rounds=1)
    pooled = pooled_baselines(training, data_paths, 1, messages.append, features)
    assert set(pooled) == {"pooled_dp", "pooled_non_private"}
    assert all(scores["count"] == 20 for scores in pooled.values())  # the union of the held-out splits
    assert any("pooled records (80)" in m for m in messages)  # both parties' training splits
    assert any("pooled_non_private on the union of held-out splits: macro-F1" in m for m in messages)

    # Every party's records are pooled ones, and every baseline starts from the same encoder:
    # the parties alone (one round) find all their features in the cache.
    looked_up, computed = [], []
    get, put = features.get, features.put
    features.get = lambda state, text: looked_up.append(get(state, text)) or looked_up[-1]  # type: ignore[method-assign]
    features.put = lambda *args: computed.append(put(*args))  # type: ignore[method-assign]
    alone = single_party_baselines(training, data_paths, 1, messages.append, features)
    assert len(looked_up) == 80 and all(f is not None for f in looked_up) and computed == []
    assert set(alone) == {"hospital-a", "bank"} and all(s["count"] == 20 for s in alone.values())
    assert alone["bank"]["ci95"]["macro_f1"] is not None
    assert all(set(s["by_party"]) == {"hospital-a", "bank"} for s in (*alone.values(), *pooled.values()))
    bank_line = r"baseline: bank alone on the union of held-out splits: macro-F1 .* \(\d+ s\)"  # with its duration
    assert any(re.fullmatch(bank_line, m) for m in messages)


def _evaluation(labels: np.ndarray, p1: np.ndarray):
    from fedmask.participant.trainer import Evaluation

    return Evaluation(
        accuracy=float(((p1 > 0.5) == labels).mean()),
        majority_baseline=max(labels.mean(), 1 - labels.mean()),
        loss=0.0,
        count=labels.size,
        labels=labels,
        probabilities=np.stack([1 - p1, p1], axis=1),
    )


def test_each_party_s_own_records_are_scored_and_a_party_served_worse_than_alone_is_named() -> None:
    from fedmask.demo.report import scores_by_party

    rng = np.random.default_rng(11)
    labels = (rng.random(400) < 0.35).astype(int)
    parties = ["hospital-a"] * 200 + ["bank"] * 200

    def p1(skill_a: float, skill_b: float) -> np.ndarray:
        skill = np.where(np.arange(400) < 200, skill_a, skill_b)
        return np.clip(0.4 + skill * (labels - 0.4) + rng.normal(0, 0.15, 400), 0.01, 0.99)

    def scored(skill_a: float, skill_b: float) -> dict:
        evaluation = _evaluation(labels, p1(skill_a, skill_b))
        scores = evaluation.scores()
        scores["by_party"] = scores_by_party(evaluation, parties)
        return scores

    # Federated: strong on hospital-a's records, weak on the bank's; the bank alone is strong on its own.
    federated = scored(0.9, 0.1)
    alone = {"hospital-a": scored(0.2, 0.0), "bank": scored(0.0, 0.9)}
    own = federated["by_party"]["bank"]
    assert set(federated["by_party"]) == {"hospital-a", "bank"} and own["count"] == 200

    report = build_report(_final(["bank", "hospital-a"], 1), alone, 1.0, 2.0, {}, federated)
    results = report["results"]
    assert results["federated"]["by_party"]["bank"]["macro_f1"] == own["macro_f1"]
    bank_alone = alone["bank"]["by_party"]["bank"]
    assert results["party_alone"]["bank"]["by_party"]["bank"]["ci95"]["macro_f1"] == bank_alone["ci95"]["macro_f1"]
    json.dumps(report)
    markdown = render_markdown(report)
    assert "## Each party's own held-out records (macro-F1)" in markdown
    assert "| model | hospital-a (200) | bank (200) |" in markdown
    assert "| bank alone, same DP budget |" in markdown.split("## Each party's own")[1]
    worse = r"- on bank's records: federated adapter 0\.\d{3}, bank's own model [01]\.\d{3} \(the federated "
    worse += r"adapter is WORSE there\)"
    assert re.search(worse, markdown)
    assert re.search(r"- on hospital-a's records: .* \(the federated adapter is better there\)", markdown)


def test_scores_by_party_are_the_scores_of_each_party_s_records() -> None:
    from fedmask.demo.report import scores_by_party

    rng = np.random.default_rng(3)
    labels = (rng.random(90) < 0.4).astype(int)
    p1 = rng.random(90)
    parties = [("a", "b", None)[i % 3] for i in range(90)]  # interleaved; None: in the union only
    by_party = scores_by_party(_evaluation(labels, p1), parties)
    assert set(by_party) == {"a", "b"}
    rows_a = np.arange(0, 90, 3)
    expected = classification_scores(labels[rows_a], p1[rows_a])
    assert by_party["a"]["macro_f1"] == expected["macro_f1"] and by_party["a"]["ci95"] == expected["ci95"]
    with pytest.raises(ValueError, match="89 party names for 90 evaluated records"):
        scores_by_party(_evaluation(labels, p1), parties[:-1])
