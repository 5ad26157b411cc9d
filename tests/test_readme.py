"""The README's multi-shell recipes run as written.

A recipe is a ``sh`` block: the lines before its first ``# shell ...`` comment are run in order by
bash (set-up), then every command line after it is started as a process of its own, as a reader
would in separate shells, and all of them must exit 0. Only the recipe's fixed port is replaced
with a free one; ``fedmask`` and ``python`` are this environment's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def recipe(heading: str) -> str:
    """The first ``sh`` block under the README section titled ``heading``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}")
    block = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    assert block is not None, f"no sh block under {heading!r}"
    return block.group(1)


def split_recipe(block: str) -> tuple[str, list[str]]:
    """(the set-up script, the commands that each run in a shell of their own)."""
    lines = block.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("# shell"))
    shells = [line for line in lines[first:] if line.strip() and not line.startswith("#")]
    return "\n".join(lines[:first]) + "\n", shells


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_recipe(block: str, fixed_port: int, cwd: Path, timeout_s: float) -> list[str]:
    port = _free_port()
    block = block.replace(str(fixed_port), str(port))
    setup, shells = split_recipe(block)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", setup], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"set-up failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    logs = [cwd / f"shell-{index}.log" for index in range(len(shells))]
    processes = []
    for command, log in zip(shells, logs, strict=True):
        with log.open("wb") as handle:
            processes.append(
                subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=cwd,
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        time.sleep(0.5)  # the coordinator first, as a reader would start it
    try:
        deadline = time.monotonic() + timeout_s
        for command, process, log in zip(shells, processes, logs, strict=True):
            code = process.wait(max(1.0, deadline - time.monotonic()))
            assert code == 0, f"{command}\nexited {code}:\n{log.read_text(errors='replace')[-3000:]}"
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
    return [log.read_text(errors="replace") for log in logs]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_cross_machine_secure_aggregation_recipe(tmp_path: Path) -> None:
    outputs = run_recipe(recipe("Secure aggregation across machines"), 50051, tmp_path, timeout_s=240)
    total = np.load(tmp_path / "sum.npy")
    bank = np.load(tmp_path / "bank-update.npy")
    assert total.shape == bank.shape == (100_000,)
    assert not np.array_equal(total, bank)  # the others' inputs are in it too
    assert all("Traceback" not in output for output in outputs)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_federated_training_recipe(tmp_path: Path) -> None:
    heading = "Federated training: `fedmask coordinator run` and `fedmask participant node`"
    outputs = run_recipe(recipe(heading), 7443, tmp_path, timeout_s=840)
    assert "done: 2 rounds and the calibration round committed" in outputs[0], outputs[0][-3000:]
    assert all("Traceback" not in output for output in outputs)
    # What the README says the report folder is for: the global adapter runs in `fedmask predict`.
    predicted = subprocess.run(
        [str(Path(sys.executable).parent / "fedmask"), "predict", "--model", "report/global_adapter", "--data",
         "bank.jsonl"],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(lines) == 200 and all(0.0 <= line["probability"] <= 1.0 for line in lines)
