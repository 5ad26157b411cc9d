"""``fedmask bench fedavg``: the demo's federation in one process, with the coordinator's arithmetic."""

from __future__ import annotations

import json
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner

from fedmask.bench.fedavg_bench import fedavg, federate, federation_config, parse_settings
from fedmask.cli.demo import party_names


def test_settings_are_json_values_and_training_keys_nest() -> None:
    changes = parse_settings(["server_learning_rate=1.5", "training.batch_size=128", "server_optimizer=fedadam"])
    assert changes == {"server_learning_rate": 1.5, "server_optimizer": "fedadam", "training": {"batch_size": 128}}
    with pytest.raises(click.BadParameter, match="expected KEY=VALUE"):
        parse_settings(["server_learning_rate"])


def test_a_setting_the_coordinator_would_refuse_is_refused() -> None:
    with pytest.raises(click.BadParameter, match="target_epsilon"):
        federation_config(party_names(3), 2, 8.0, parse_settings(["training.target_epsilon=0"]))
    config = federation_config(party_names(3), 2, 8.0, parse_settings(["training.batch_size=128", "clip_norm=9"]))
    assert config.training["batch_size"] == 128 and config.training["lora_layers"] == 2  # the demo's, kept
    assert config.clip_norm == 9


def test_the_server_step_is_the_coordinators_on_the_encoded_updates(monkeypatch, tmp_path) -> None:
    """With training replaced by fixed updates (one above the clip norm), one round gives the
    initial adapter plus server_lr times the mean of the clipped updates, to within the
    fixed-point encoding's rounding."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.adapter.model import initial_adapter
    from fedmask.demo.data import generate_records, write_records
    from fedmask.participant import training
    from fedmask.participant.data import load_local_data
    from fedmask.participant.probe import FeatureCache
    from fedmask.secagg.encoding import clip_l2

    parties = party_names(3)
    federation = federation_config(
        parties, 1, 8.0, parse_settings(["training.calibrate=false", "training.max_seq_len=16", "clip_norm=5"])
    )
    start, _ = initial_adapter(TrainingConfig.create(**federation.training_config()))
    rng = np.random.default_rng(0)
    directions = [rng.standard_normal(start.size) for _ in parties]
    norms = [12.0, 1.0, 3.0]  # the first is clipped to 5
    updates = {party: d / np.linalg.norm(d) * n for party, d, n in zip(parties, directions, norms, strict=True)}

    def fixed_update(config, local, *, global_adapter_state, trainer, score_heldout):
        party = next(p for p, records in data.items() if records is local)
        return SimpleNamespace(vector=global_adapter_state.astype(np.float64) + updates[party])

    monkeypatch.setattr(training, "train_adapter", fixed_update)
    paths = {p: write_records(generate_records(p, 50, seed=i), tmp_path / f"{p}.jsonl") for i, p in enumerate(parties)}
    data = {party: load_local_data(path) for party, path in paths.items()}
    heldout = [record for local in data.values() for record in local.heldout]
    result = federate(federation, data, heldout, FeatureCache())

    assert result["update_norms"] == [pytest.approx(norms)]
    mean = np.mean([clip_l2(updates[p], federation.clip_norm)[0] for p in parties], axis=0)
    expected = start.astype(np.float64) + federation.server_learning_rate * mean
    # Randomised rounding moves each encoded value by less than one step 1/scale; the mean by
    # less than that, the server step by server_lr times it; then the float32 global rounds.
    bound = federation.server_learning_rate / federation.encoding().scale + np.abs(expected) * 2.0**-23
    assert np.all(np.abs(result["adapter"].astype(np.float64) - expected) <= bound)
    assert 0.0 <= result["scores"]["macro_f1"] <= 1.0


@pytest.mark.slow
def test_fedavg_bench_reports_the_federated_adapter_and_its_margin_over_each_party_alone() -> None:
    args = ["--records", "60", "--rounds", "1", "--repeats", "1", "--json"]
    result = CliRunner().invoke(fedavg, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (row,) = report["rows"]
    assert set(row["party_alone"]) == set(report["participants"]) == set(party_names(3))
    best = max(row["party_alone"], key=lambda party: row["party_alone"][party]["macro_f1"])
    assert row["best_party"] == best
    assert row["margin_over_best_party"] == row["federated"]["macro_f1"] - row["party_alone"][best]["macro_f1"]
    assert len(row["update_norms"]) == 1 and len(row["update_norms"][0]) == 3
    assert report["summary"]["margin_mean"] == row["margin_over_best_party"]


@pytest.mark.slow
def test_fedavg_bench_without_dp_says_so() -> None:
    args = ["--records", "60", "--rounds", "1", "--repeats", "1", "--no-baselines", "--non-private", "--json"]
    result = CliRunner().invoke(fedavg, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["federated_with_dp"] is False
    (row,) = report["rows"]
    assert "party_alone" not in row and 0.0 <= row["federated"]["macro_f1"] <= 1.0
    assert "WITHOUT DP" in CliRunner().invoke(fedavg, args[:-1]).output
