"""``fedmask demo``: party naming, thresholds, flag validation, and one small run end to end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedmask.cli.demo import _parse_drops, demo, demo_threshold, federation_settings, party_names, party_profile


def test_party_names_cycle_through_the_three_profiles() -> None:
    assert party_names(2) == ["hospital-a", "hospital-b"]
    assert party_names(3) == ["hospital-a", "hospital-b", "bank"]
    assert party_names(7) == [
        "hospital-a",
        "hospital-b",
        "bank",
        "hospital-a-2",
        "hospital-b-2",
        "bank-2",
        "hospital-a-3",
    ]
    assert [party_profile(n) for n in party_names(7)] == ["hospital-a", "hospital-b", "bank"] * 2 + ["hospital-a"]
    assert len(set(party_names(12))) == 12


@pytest.mark.parametrize(("count", "threshold"), [(2, 2), (3, 2), (4, 3), (6, 4), (10, 7), (12, 8)])
def test_demo_threshold_is_two_thirds_and_at_least_two(count: int, threshold: int) -> None:
    assert demo_threshold(count) == threshold


def test_the_bundled_model_adapts_its_top_two_layers_and_another_model_every_layer() -> None:
    parties = party_names(3)
    assert federation_settings(parties, 3)["training"]["lora_layers"] == 2
    for settings in (
        federation_settings(parties, 3, model_path="/srv/models/bert-12"),  # depth unknown here
        federation_settings(parties, 3, mode="bitfit"),
        federation_settings(parties, 3, task="causal_lm", model_path="/srv/models/qwen2"),
    ):
        assert "lora_layers" not in settings["training"]


def test_drops_name_a_participant_and_a_round() -> None:
    parties = party_names(4)
    assert _parse_drops(("bank@2", "hospital-a-2@1"), 3, parties) == {"bank": 2, "hospital-a-2": 1}
    for bad in ("bank", "bank@0", "bank@4", "bank@x", "clinic@1", "bank-2@1"):
        with pytest.raises(Exception, match="expected NAME@ROUND"):
            _parse_drops((bad,), 3, parties)


def test_bad_flags_fail_before_anything_starts(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(demo, ["--out", str(tmp_path / "d"), "--drop", "bank-2@1"])
    assert result.exit_code == 2 and "expected NAME@ROUND" in result.output
    result = runner.invoke(demo, ["--out", str(tmp_path / "d"), "--participants", "1"])
    assert result.exit_code == 2 and "--participants" in result.output
    result = runner.invoke(demo, ["--out", str(tmp_path / "d"), "--participants", "2", "--drop", "bank@1"])
    assert result.exit_code == 2 and "expected NAME@ROUND" in result.output  # no bank among 2
    result = runner.invoke(demo, ["--out", str(tmp_path / "d"), "--participants", "2", "--drop", "hospital-b@1"])
    assert result.exit_code == 2 and "threshold is 2: no one can drop out" in result.output
    assert not (tmp_path / "d").exists()  # nothing was created


@pytest.mark.slow
def test_a_small_demo_goes_on_without_a_dropped_party_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmask.cli",
            "demo",
            "--out",
            str(out),
            "--participants",
            "3",
            "--rounds",
            "2",
            "--records",
            "60",
            "--drop",
            "bank@1",
            "--skip-baseline",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "demo: killed bank (SIGKILL) while it trained for round 1" in run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    first, second, calibration = report["rounds"]
    assert (first["round"], second["round"], calibration["round"]) == (1, 2, 3)
    # After the two training rounds, the calibration round moved the decision threshold.
    assert first["calibration"] is second["calibration"] is None
    assert calibration["calibration"]["records"] > 0 and "| calibration |" in run.stdout
    # Round 1 went on without the bank; the restarted bank took part in round 2.
    assert first["survivors"] == ["hospital-a", "hospital-b"] and list(first["dropped"]) == ["bank"]
    assert second["survivors"] == ["bank", "hospital-a", "hospital-b"] and second["dropped"] == {}
    assert set(first["epsilon"]) == {"hospital-a", "hospital-b"}
    assert set(second["epsilon"]) == {"bank", "hospital-a", "hospital-b"}
    assert calibration["survivors"] == ["bank", "hospital-a", "hospital-b"]
    # held-out accuracy arrives only as a sum over the survivors: one figure per round
    assert all(r["accuracy"] is None or 0.0 <= r["accuracy"] <= 1.0 for r in report["rounds"])
    assert 0 < first["epsilon"]["hospital-a"] < second["epsilon"]["hospital-a"] <= 8.0
    assert all(r["upload_bytes"] > 0 and r["wall_s"] > 0 for r in report["rounds"])
    assert 0.0 <= report["federated_accuracy"] <= 1.0
    federated, majority = report["results"]["federated"], report["results"]["majority"]
    for metric in ("macro_f1", "balanced_accuracy", "accuracy", "auroc"):
        low, high = federated["ci95"][metric]
        assert 0.0 <= low <= high <= 1.0 and 0.0 <= federated[metric] <= 1.0
    assert majority["balanced_accuracy"] == 0.5
    assert report["best_single_party_accuracy"] is None  # --skip-baseline
    assert report["config"]["threshold"] == 2 and report["config"]["quorum_grace_s"] == 60.0
    assert "| round | survivors |" in run.stdout
    assert (out / "report.png").stat().st_size > 0
    assert (out / "global_adapter" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_a_causal_lm_demo_federates_a_qwen2_adapter_and_reports_perplexity(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["--out", str(out), "--task", "causal_lm", "--participants", "3", "--rounds", "2", "--records", "60"]
    run = subprocess.run(
        [sys.executable, "-m", "fedmask.cli", "demo", *args, "--skip-baseline"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "built a tiny Qwen2 with random weights" in run.stdout
    config = json.loads((out / "work" / "federation.json").read_text())
    assert config["training"]["task"] == "causal_lm"
    report = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert all(r["survivors"] == ["bank", "hospital-a", "hospital-b"] for r in report["rounds"])
    federated = report["results"]["federated"]
    assert federated["task"] == "causal_lm" and federated["perplexity"] > 1.0
    low, high = federated["ci95"]["next_token_accuracy"]
    assert 0.0 <= low <= federated["next_token_accuracy"] <= high <= 1.0
    assert report["results"]["majority"] is None
    assert "| model | perplexity | next-token accuracy |" in run.stdout
    adapter = json.loads((out / "global_adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]  # LoRA on Qwen2's q and v projections
    assert not (out / "global_model").exists()  # the sentence-transformers export is for classifiers


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc; zombies count as gone)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing bracket
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads children from /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_demo_stops_its_coordinator_and_participants(tmp_path: Path, signum: int) -> None:
    """``kill``, ``timeout`` or a closed terminal end the demo as Ctrl-C does: no coordinator or
    participant left running (Python's default for these signals would leave all four)."""
    demo_process = subprocess.Popen(
        [sys.executable, "-m", "fedmask.cli", "demo", "--out", str(tmp_path / "d"), "--records", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdin=subprocess.DEVNULL,
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while len(children) < 4 and time.monotonic() < deadline and demo_process.poll() is None:
            children |= _children(demo_process.pid)
            time.sleep(0.05)
        assert len(children) == 4, "the coordinator and three participants never started"
        demo_process.send_signal(signum)
        _, stderr = demo_process.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in children)
        assert demo_process.returncode == 128 + signum
        name = signal.Signals(signum).name
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: stopped by {name}: the coordinator and the participants were stopped")
    finally:  # whatever failed above, leave nothing running
        demo_process.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
