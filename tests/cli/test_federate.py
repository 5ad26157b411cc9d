"""`fedmask coordinator run --report --evaluate`: the coordinator scores the global adapter on its
own public evaluation records (it never sees a participant's held-out split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmask.cli.federate import _evaluation_records, _write_report
from fedmask.coordinator.config import FederationConfig

PARTIES = ["hospital-a", "bank"]


def _final(rounds: int) -> dict:
    entry = {
        "survivors": PARTIES,
        "dropped": {},
        "participant_epsilon": None,
        "metrics": {"upload_bytes": dict.fromkeys(PARTIES, 1000), "wall_s": 1.5},
        "attempt": 1,
    }
    ledger = [{**entry, "round": r, "epsilon": dict.fromkeys(PARTIES, 2.0 * r)} for r in range(1, rounds + 1)]
    return {"ledger": ledger, "final_epsilon": dict.fromkeys(PARTIES, 2.0 * rounds)}


def test_the_coordinator_report_scores_the_global_adapter_on_public_records(minilm_path: str, tmp_path: Path) -> None:
    from fedmask.adapter.config import TrainingConfig
    from fedmask.coordinator.store import FederationStore
    from fedmask.demo.data import generate_records, write_records
    from fedmask.participant.trainer import LocalTrainer

    training = {"model_path": minilm_path, "mode": "lora", "max_seq_len": 32, "lora_rank": 4, "accountant": "rdp"}
    config = FederationConfig.from_json({"participants": PARTIES, "rounds": 1, "training": training})
    public = write_records(generate_records("bank", 30, seed=7), tmp_path / "public.jsonl")
    assert "@" in public.read_text()
    evaluation = _evaluation_records(public, tmp_path / "report", config)

    # A committed global adapter whose head predicts both labels.
    trainer = LocalTrainer(TrainingConfig.create(**config.training_config()))
    rng = np.random.default_rng(0)
    vector = trainer.initial_vector + rng.normal(0, 0.05, trainer.initial_vector.size).astype(np.float32)
    state = tmp_path / "state"
    with FederationStore(state / "federation.db") as store:
        store.initialise(config.to_json())
        store.commit_initial(store.save_checkpoint(0, vector, trainer.spec.to_json()))
    (state / "final.json").write_text(json.dumps(_final(1)))

    _write_report(tmp_path / "report", state, config, 1.0, evaluation)

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert (tmp_path / "report" / "global_adapter" / "adapter_config.json").is_file()
    assert len(evaluation.records) == 30  # every record, not a held-out fifth
    assert not any("@" in r.text for r in evaluation.records)  # scrubbed as participants scrub theirs
    trainer.set_adapter_vector(vector)
    expected = trainer.evaluate(evaluation.records)
    assert report["federated_accuracy"] == expected.accuracy
    assert report["results"]["federated"]["count"] == 30
    labels = [r.label for r in evaluation.records]
    majority = max(labels.count(0), labels.count(1)) / 30
    assert report["results"]["majority"]["accuracy"] == pytest.approx(majority, abs=1e-12)
    card = (tmp_path / "report" / "global_model" / "README.md").read_text()
    assert "30 public evaluation records held by the coordinator (public.jsonl)" in card
