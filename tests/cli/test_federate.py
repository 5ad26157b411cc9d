"""`fedmask coordinator run`: with ``--report --evaluate`` the coordinator scores the global adapter
on its own public evaluation records (it never sees a participant's held-out split); a config the
model refuses, or an output it cannot write, is refused before the state directory is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedmask.cli import main
from fedmask.cli.federate import _evaluation_records, _write_report
from fedmask.coordinator.config import FederationConfig, FederationError

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


# --- refused before the state directory is written -------------------------------------------------

RUN_PARTIES = ["hospital-a", "hospital-b", "bank"]


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    from fedmask.testing.loopback import make_federation

    return make_federation(tmp_path_factory.mktemp("pki") / "fed", RUN_PARTIES)


def _write_config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "federation.json"
    path.write_text(json.dumps({"participants": RUN_PARTIES, "rounds": 1, **changes}))
    return path


def _run_args(tmp_path: Path, federation: Path, config: Path, *extra: str) -> list[str]:
    return ["coordinator", "run", "--federation", str(federation), "--state", str(tmp_path / "state"),
            "--config", str(config), "--insecure", "--port", "0", *extra]  # fmt: skip


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), f"not handled: {result.exception!r}"
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[-1]


def test_lora_layers_beyond_the_model_is_refused_before_the_state_is_written(tmp_path, federation):
    config = _write_config(tmp_path, training={"lora_layers": 99})
    last = _one_line_error(CliRunner().invoke(main, _run_args(tmp_path, federation, config)))
    assert last == f"Error: {config}: training: lora_layers is 99, but the model has 6 layers"
    assert not (tmp_path / "state").exists()  # so a rerun with lora_layers fixed is not refused as a change


def test_a_setting_only_the_built_model_refuses_leaves_no_state(tmp_path, federation, monkeypatch):
    import fedmask.adapter.model
    from fedmask.adapter.config import ConfigError

    def refuse(config):
        raise ConfigError("lora_targets: the model has no linear layer named nosuchmodule")

    monkeypatch.setattr(fedmask.adapter.model, "initial_adapter", refuse)
    config = _write_config(tmp_path, training={"lora_targets": ["query", "nosuchmodule"]})
    last = _one_line_error(CliRunner().invoke(main, _run_args(tmp_path, federation, config)))
    assert "nosuchmodule" in last
    assert not (tmp_path / "state").exists()


def test_the_initial_adapter_is_built_from_the_settings_as_participants_read_them(tmp_path, federation, monkeypatch):
    """A JSON list of LoRA targets reaches the model code as the tuple TrainingConfig takes."""
    import fedmask.adapter.model
    import fedmask.cli.federate

    built = []
    monkeypatch.setattr(fedmask.adapter.model, "initial_adapter", lambda config: built.append(config) or (None, []))

    def stop(*args, **kwargs):
        raise FederationError(f"stopped here with initial={kwargs['initial']!r}")

    monkeypatch.setattr(fedmask.cli.federate, "Federation", stop)
    config = _write_config(tmp_path, training={"lora_targets": ["query", "value"]})
    last = _one_line_error(CliRunner().invoke(main, _run_args(tmp_path, federation, config)))
    assert last == "Error: stopped here with initial=(None, [])"
    assert [c.lora_targets for c in built] == [("query", "value")]


@pytest.mark.parametrize("option", ["--report", "--log-file", "--state"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path, federation, blocked, option, monkeypatch
):
    import fedmask.adapter.model

    def must_not_build(config):
        raise AssertionError("the model was built before the output was checked")

    monkeypatch.setattr(fedmask.adapter.model, "initial_adapter", must_not_build)
    args = _run_args(tmp_path, federation, _write_config(tmp_path))
    target = blocked / "coordinator.log" if option == "--log-file" else blocked
    if option == "--state":
        args[args.index("--state") + 1] = str(target)
    else:
        args += [option, str(target)]
    last = _one_line_error(CliRunner().invoke(main, args))
    assert last == f"Error: cannot write {option} {target}: Not a directory"
    assert not (tmp_path / "state").exists()
