"""A whole federation on one machine: a coordinator and participants as separate OS processes
talking mTLS gRPC over 127.0.0.1, with certificates made on the spot. For the integration tests,
``fedmask bench grpc`` and demos; nothing here is needed in a real deployment.

    federation = make_federation(tmp_dir / "federation", names)
    coordinator = start_coordinator(federation, names, dimension=1000)
    participants = [start_participant(federation, name, coordinator.port, seed=i) for ...]
    summary = coordinator.summary()          # the JSON line ``serve --json`` ends with

Honest participants run the real ``fedmask participant join`` (as ``python -m
participant.join_cli``). A participant that should drop out in a given phase runs this module
(``python -m coordinator.loopback drop-out --before PHASE ...``): it takes part normally and,
just before sending its message of PHASE, prints ``paused before PHASE`` and either waits to be
killed (``--how stall``, for tests that SIGKILL it) or exits at once without a goodbye
(``--how exit``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from fedmask import pki
from fedmask.secagg.errors import Phase
from fedmask.secagg.messages import ModularVector
from fedmask.secagg.rand import SeededRandom
from fedmask.secagg.simulation import random_input

COORDINATOR_NAME = "main"
_LISTENING = re.compile(r"listening on [^ ]+:(\d+) ")


def make_federation(
    directory: Path,
    participants: Iterable[str],
    *,
    valid_days: int = 2,
    organisations: Mapping[str, str] | None = None,
) -> Path:
    """A fresh CA, a coordinator certificate for localhost/127.0.0.1, and every participant
    enrolled and issued (``add_participant``), under ``directory`` (which must not exist or be
    empty). ``organisations``: name -> organisation; by default each is its own."""
    pki.init_federation(directory, federation_name="loopback", valid_days=valid_days + 1)
    pki.issue(directory, "coordinator", COORDINATOR_NAME, hosts=("localhost", "127.0.0.1"), valid_days=valid_days)
    for name in participants:
        add_participant(directory, name, organisation=(organisations or {}).get(name), valid_days=valid_days)
    return directory


def add_participant(
    directory: Path, name: str, *, organisation: str | None = None, valid_days: int = 2, force: bool = False
) -> pki.IssuedCertificate:
    """Enrol ``name`` (its keys made as on its own machine) and issue its certificate from the
    request, the default path of a real federation. Everything shares one directory here, so
    the participant's files are in place without a hand-back; ``force`` re-enrols and re-issues."""
    request = pki.enrol(directory, name, organisation=organisation or name, force=force)
    return pki.issue(directory, "participant", name, request=request, valid_days=valid_days, force=force)


def participant_names(count: int) -> list[str]:
    width = len(str(count))
    return [f"participant-{i:0{width}d}" for i in range(1, count + 1)]


def expected_sum(seeds: Iterable[int], dimension: int, modulus_bits: int = 32) -> ModularVector:
    """The plaintext sum of the synthetic inputs of ``seeds`` (``join --synthetic-seed``)."""
    total: ModularVector = np.zeros(dimension, dtype=np.uint64 if modulus_bits > 32 else np.uint32)
    for seed in seeds:
        total += random_input(SeededRandom.from_int(seed), dimension, modulus_bits)
    if modulus_bits not in (32, 64):
        total &= total.dtype.type((1 << modulus_bits) - 1)
    return total


@dataclass
class Process:
    """A child process whose combined stdout/stderr is collected line by line."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _eof: bool = False

    def __post_init__(self) -> None:
        output = self.popen.stdout
        if output is None:
            raise ValueError(f"{self.name}: the process's output is not piped to this one")
        threading.Thread(target=self._pump, args=(output,), name=f"output-{self.name}", daemon=True).start()

    def _pump(self, output: IO[str]) -> None:
        for raw in output:
            with self._changed:
                self.lines.append(raw.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first output line matching ``pattern``; TimeoutError (with the output) otherwise."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    raise TimeoutError(
                        f"{self.name}: no line matching {regex.pattern!r} "
                        f"(exit status {self.popen.poll()}):\n" + "\n".join(self.lines)
                    )
                self._changed.wait(min(remaining, 0.2))

    def wait(self, timeout_s: float) -> int:
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise TimeoutError(f"{self.name} still running after {timeout_s} s:\n{self.output()}") from exc

    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def json_summary(self) -> dict[str, Any]:
        """The JSON object on the last line (``--json``)."""
        for line in reversed(self.lines):
            if line.startswith("{"):
                summary = json.loads(line)
                if not isinstance(summary, dict):
                    raise ValueError(f"{self.name} printed JSON that is not an object: {line[:200]}")
                return summary
        raise ValueError(f"{self.name} printed no JSON summary:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL: no chance to close the stream cleanly."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class CoordinatorProcess(Process):
    port: int = 0

    def summary(self, timeout_s: float = 120.0) -> dict[str, Any]:
        self.wait(timeout_s)
        self.wait_for_line(r"^\{", 5)
        return self.json_summary()


_P = TypeVar("_P", bound=Process)


def _spawn(name: str, args: Sequence[str], env: dict[str, str] | None, cls: type[_P]) -> _P:
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    popen = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    return cls(name, popen)


def start_coordinator(
    federation: Path,
    participants: Sequence[str],
    *,
    dimension: int,
    threshold: int | None = None,
    mode: str = "semi-honest",
    phase_timeout_s: float = 30.0,
    join_timeout_s: float = 60.0,
    rounds: int = 1,
    output: Path | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    start_timeout_s: float = 30.0,
) -> CoordinatorProcess:
    """``fedmask coordinator serve --port 0 --json`` in a child process; returns once it listens."""
    args = [
        "-m", "fedmask.cli.coordinator", "serve",
        "--federation", str(federation),
        "--name", COORDINATOR_NAME,
        "--participants", ",".join(participants),
        "--dim", str(dimension),
        "--mode", mode,
        "--host", "127.0.0.1",
        "--port", "0",
        "--phase-timeout", str(phase_timeout_s),
        "--join-timeout", str(join_timeout_s),
        "--rounds", str(rounds),
        "--json",
    ]  # fmt: skip
    if threshold is not None:
        args += ["--threshold", str(threshold)]
    if output is not None:
        args += ["--output", str(output)]
    process = _spawn("coordinator", [*args, *extra_args], env, CoordinatorProcess)
    try:
        process.port = int(process.wait_for_line(_LISTENING, start_timeout_s).group(1))
    except TimeoutError:
        process.stop()
        raise
    return process


def start_participant(
    federation: Path,
    name: str,
    port: int,
    *,
    seed: int,
    drop_before: Phase | None = None,
    drop_how: str = "stall",
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Process:
    """``fedmask participant join --synthetic-seed SEED --json`` in a child process, or, with
    ``drop_before``, a participant that drops out just before sending that phase's message."""
    common = [
        "--federation", str(federation),
        "--name", name,
        "--coordinator", f"127.0.0.1:{port}",
        "--synthetic-seed", str(seed),
    ]  # fmt: skip
    if drop_before is None:
        args = ["-m", "fedmask.cli.join", *common, "--policy", str(harness_policy(federation, name)), "--json"]
    else:
        args = ["-m", "fedmask.testing.loopback", "drop-out", *common, "--before", drop_before.value, "--how", drop_how]
    return _spawn(name, [*args, *extra_args], env, Process)


def harness_policy(federation: Path, name: str) -> Path:
    """A participant policy for the harness's rounds, which exercise both security modes with as
    few as two participants (written once, beside the participant's keys). Not a policy for
    real participants: ``fedmask participant join`` writes the safe default for those."""
    from fedmask.participant.policy import ParticipantPolicy
    from fedmask.participant.setup import policy_path
    from fedmask.secagg.params import SecurityMode

    path = policy_path(federation, name)
    if not path.exists():
        ParticipantPolicy(security_mode=SecurityMode.SEMI_HONEST, min_participants=2, min_organisations=1).save(path)
    return path


def stop_all(processes: Iterable[Process]) -> None:
    """Stop every process (SIGTERM, then SIGKILL); never raises, so it is safe in ``finally``."""
    for process in processes:
        try:
            process.stop()
        except Exception:  # noqa: BLE001 - keep stopping the others
            process.kill()


def drop_out_main(argv: Sequence[str] | None = None) -> None:
    """``python -m coordinator.loopback drop-out ...``: see the module docstring."""
    import argparse

    from fedmask.participant.grpc_client import take_part
    from fedmask.participant.setup import setup_connection, synthetic_input

    parser = argparse.ArgumentParser(prog="python -m coordinator.loopback drop-out")
    parser.add_argument("--federation", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--synthetic-seed", type=int, required=True)
    parser.add_argument("--before", choices=[p.value for p in Phase], required=True)
    parser.add_argument("--how", choices=["stall", "exit"], default="stall")
    args = parser.parse_args(argv)
    phase = Phase(args.before)
    local = setup_connection(args.federation, args.name, args.coordinator)
    connection, identity = local.connection, local.identity

    def before_send(sending: Phase) -> None:
        if sending is phase:
            print(f"paused before {phase.value}", flush=True)
            if args.how == "exit":
                os._exit(0)  # no Abort, no clean stream end: like a crash
            threading.Event().wait()  # until killed

    outcome = take_part(
        connection,
        identity,
        lambda start: synthetic_input(args.synthetic_seed, start),
        progress=lambda line: print(f"[{args.name}] {line}", flush=True),
        before_send=before_send,
    )
    print(json.dumps({"name": args.name, "rounds": [outcome.summary()]}), flush=True)
    sys.exit(0 if outcome.completed else 3)


if __name__ == "__main__":  # pragma: no cover
    if sys.argv[1:2] != ["drop-out"]:
        sys.exit("usage: python -m coordinator.loopback drop-out --help")
    drop_out_main(sys.argv[2:])
