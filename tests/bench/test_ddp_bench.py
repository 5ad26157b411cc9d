"""``fedmask bench ddp``: the encoding's cost next to the masking's, and its error next to central DP."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedmask.bench.ddp_bench import render


def test_ddp_bench_reports_both_mechanisms_and_errors_near_their_prediction() -> None:
    # In a subprocess: the bench pins its process to one core.
    command = [sys.executable, "-m", "fedmask.cli", "bench", "ddp", "--dimension", "4096", "--mse-dimension", "1024"]
    command += ["--bits", "32", "--repeats", "1", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout)
    mechanisms = {cost["mechanism"] for cost in report["encoding"]}
    assert mechanisms == {"skellam", "discrete_gaussian"}
    for cost in report["encoding"]:
        assert cost["padded_dimension"] == 4096
        assert min(cost[f"{stage}_s"] for stage in ("rotate", "round", "noise", "total", "masking")) > 0
        assert cost["encoding_over_masking"] == pytest.approx(cost["total_s"] / cost["masking_s"])
    assert len(report["mse"]) == 2 * 3 * 3
    for row in report["mse"]:
        # One draw of d = 1024 coordinates: the measured MSE has a relative standard error of
        # about sqrt(2 / 1024) = 4.4%; 25% is more than five of them.
        assert row["mse"] == pytest.approx(row["mse_predicted"], rel=0.25)
    table = render(report)
    assert "| discrete_gaussian | 4,096 | 4,096 |" in table and "encode / mask" in table
