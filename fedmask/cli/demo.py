"""``fedmask demo``: two hospitals and a bank federate a DP-LoRA adapter, end to end.

With no arguments it makes a temporary federation (a CA; each party enrols with keys of its own
and is issued a certificate from its request), generates non-IID local records for
``hospital-a``, ``hospital-b`` and ``bank`` (with PII inside the text, which each participant
scrubs), starts the coordinator and the three participants as separate processes
over mutual-TLS gRPC, runs the rounds, and stops everything. Then it trains each party alone
under the same DP budget for comparison, and writes the report folder::

    OUT/report.md  OUT/report.json  OUT/report.png  OUT/global_adapter/ (PEFT)
    OUT/global_model/ (the federated classifier for sentence-transformers)  OUT/work/ (logs, state)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from fedmask.cli.quiet import quiet_libraries
from fedmask.demo.data import PARTIES
from fedmask.durable import write_text_atomic

# Small enough for 2 CPU cores in a few minutes, large enough that federation matters.
DEFAULT_RECORDS = 500
DEFAULT_ROUNDS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Process:
    """A child process whose stderr lines go to the console (prefixed) and to a log file."""

    def __init__(self, name: str, command: list[str], log_path: Path, echo: Callable[[str], None]) -> None:
        self.name = name
        self.log = log_path.open("a", encoding="utf-8")
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        }
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL
        )
        # Popen with stdout=PIPE and stderr=PIPE always sets both streams.
        assert self.process.stdout is not None and self.process.stderr is not None
        self._stdout_pipe, self._stderr_pipe = self.process.stdout, self.process.stderr
        self.stdout = ""
        self.lines: list[str] = []
        self._echo = echo
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self._out_reader = threading.Thread(target=self._pump_stdout, daemon=True)
        self._out_reader.start()

    def _pump(self) -> None:
        for line in self._stderr_pipe:
            self.log.write(line)
            self.log.flush()
            self.lines.append(line.rstrip())
            self._echo(line.rstrip())

    def _pump_stdout(self) -> None:
        self.stdout = self._stdout_pipe.read()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        self._out_reader.join(5)
        self.log.close()
        return code


class _Terminated(Exception):
    """SIGTERM or SIGHUP reached the demo while its processes ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    """SIGTERM and SIGHUP (``kill``, ``timeout``, a closed terminal) raise ``_Terminated`` here, so
    the demo's ``finally`` stops its coordinator and participants as it does on Ctrl-C: Python's
    default for them ends this process at once and leaves the children running (the coordinator
    would finish its round, then wait for participants who are gone)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def terminate(signum: int, _frame: object) -> None:
        for each in (signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the clean-up short
            signal.signal(each, signal.SIG_IGN)
        raise _Terminated(signum)

    previous = {signum: signal.signal(signum, terminate) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def party_names(count: int) -> list[str]:
    """``count`` participants: hospital-a, hospital-b, bank, then hospital-a-2, hospital-b-2, ...

    Each takes the records profile (vocabulary, label mix) of the base party its name starts with.
    """
    return [
        PARTIES[i % len(PARTIES)] + (f"-{i // len(PARTIES) + 1}" if i >= len(PARTIES) else "") for i in range(count)
    ]


def demo_threshold(count: int) -> int:
    """Two thirds of the participants (at least 2): a third may drop out of any round."""
    return max(2, -(-2 * count // 3))


def federation_settings(
    parties: list[str],
    rounds: int,
    *,
    task: str = "classification",
    mode: str = "lora",
    epsilon: float = 8.0,
    delta: float = 1e-5,
    model_path: str | None = None,
    security_mode: str = "malicious",
    aggregate_noise: str = "none",
    aggregate_epsilon: float | None = None,
) -> dict[str, Any]:
    """The demo's federation config (``coordinator run --config``), also what ``fedmask bench
    round`` times a round of."""
    training: dict[str, Any] = {
        "task": task,
        "mode": mode,
        "target_epsilon": epsilon,
        "target_delta": delta,
        "epochs": 4.0,  # per round; the first 3/4 of the steps are cheap linear-probe steps
        "batch_size": 64,
        "max_seq_len": 64,
    }
    if task == "classification" and mode == "lora" and not model_path:
        # LoRA in the bundled MiniLM's top two of six layers: the four below run once per record
        # and are replayed (docs/dp-training.md, "Frozen layers run once"). A --model of unknown
        # depth adapts every layer.
        training["lora_layers"] = 2
    if model_path:
        training["model_path"] = str(model_path)
    # A participant killed by --drop after it joined is waited for 60 s, not the whole join timeout.
    return {
        "participants": parties,
        "rounds": rounds,
        "training": training,
        "clip_norm": 5.0,
        # Twice the mean update: measured on the demo task (docs/federation.md, the demo's server step).
        "server_learning_rate": 2.0,
        "threshold": demo_threshold(len(parties)),
        "security_mode": security_mode,
        "join_timeout_s": 900.0,
        "phase_timeout_s": 60.0,
        "quorum_grace_s": 60.0,
        "final_report_wait_s": 300.0,
        "aggregate_noise": aggregate_noise,
        "aggregate_epsilon": aggregate_epsilon if aggregate_noise != "none" else None,
    }


def party_profile(name: str) -> str:
    return next(party for party in PARTIES if name == party or name.startswith(party + "-"))


def _tiny_causal_lm(directory: Path, parties: list[str], seed: int) -> Path:
    """A tiny random Qwen2 whose tokenizer learnt from notes generated apart from the parties'
    (other seeds): a stand-in for a public base model, so the demo runs offline."""
    from fedmask.demo.data import generate_notes
    from fedmask.testing.tiny_models import build_tiny_qwen2

    texts = [
        note["text"]
        for index, party in enumerate(parties)
        for note in generate_notes(party_profile(party), 300, seed=10_000 + seed + index)
    ]
    return build_tiny_qwen2(directory, texts, seed=seed)


def _parse_drops(values: tuple[str, ...], rounds: int, parties: list[str]) -> dict[str, int]:
    drops: dict[str, int] = {}
    for value in values:
        name, _, round_text = value.partition("@")
        if name not in parties or not round_text.isdigit() or not 1 <= int(round_text) <= rounds:
            raise click.BadParameter(
                f"{value!r}: expected NAME@ROUND with NAME in {', '.join(parties)} and ROUND in 1..{rounds}",
                param_hint="--drop",
            )
        drops[name] = int(round_text)
    return drops


@click.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Report folder (default: ./fedmask-demo-<time>).",
)
@click.option("--rounds", type=click.IntRange(1, 50), default=DEFAULT_ROUNDS, show_default=True)
@click.option(
    "--participants",
    "participant_count",
    type=click.IntRange(2, 12),
    default=len(PARTIES),
    show_default=True,
    help="How many parties federate (each one more process on this machine).",
)
@click.option(
    "--records",
    type=click.IntRange(50, 100_000),
    default=DEFAULT_RECORDS,
    show_default=True,
    help="Records per party (train and held-out).",
)
@click.option("--mode", type=click.Choice(["lora", "bitfit"]), default="lora", show_default=True)
@click.option(
    "--task",
    type=click.Choice(["classification", "causal_lm"]),
    default="classification",
    show_default=True,
    help="classification: triage labels on the bundled MiniLM; causal_lm: note continuation on a "
    "causal LM (--model, a local Qwen2-architecture directory; without it a tiny random Qwen2 is built).",
)
@click.option(
    "--epsilon",
    type=click.FloatRange(0.1, 100),
    default=8.0,
    show_default=True,
    help="Record-level DP budget of each party over all rounds.",
)
@click.option("--delta", type=click.FloatRange(1e-12, 1e-2), default=1e-5, show_default=True)
@click.option("--model", "model_path", default=None, help="Local model directory (default: the bundled MiniLM).")
@click.option(
    "--drop",
    "drops",
    multiple=True,
    metavar="NAME@ROUND",
    help="Kill participant NAME with SIGKILL in the middle of round ROUND (it rejoins afterwards).",
)
@click.option(
    "--security-mode",
    type=click.Choice(["semi-honest", "malicious"]),
    default="malicious",
    show_default=True,
    help="Malicious: signed keys and envelopes and the consistency check (each party's policy requires it).",
)
@click.option(
    "--aggregate-noise",
    type=click.Choice(["none", "discrete_gaussian", "skellam"]),
    default="none",
    show_default=True,
    help="Distributed DP: each participant adds integer noise before masking "
    "(discrete_gaussian: the same error as skellam at half the encoding time).",
)
@click.option(
    "--aggregate-epsilon",
    type=click.FloatRange(0.01, 1000),
    default=10.0,
    show_default=True,
    help="Participant-level ε of the whole run against the coordinator (with --aggregate-noise).",
)
@click.option(
    "--skip-baseline",
    is_flag=True,
    help="Do not train the baselines (each party alone; all records pooled, with and without DP).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated records.")
def demo(
    out_dir: Path | None,
    rounds: int,
    participant_count: int,
    records: int,
    mode: str,
    task: str,
    epsilon: float,
    delta: float,
    model_path: str | None,
    drops: tuple[str, ...],
    security_mode: str,
    aggregate_noise: str,
    aggregate_epsilon: float,
    skip_baseline: bool,
    seed: int,
) -> None:
    """Run a federation of two hospitals and a bank on this machine and report on it."""
    quiet_libraries("baseline: %(message)s")  # this process trains the baselines
    parties = party_names(participant_count)
    drop_at = _parse_drops(drops, rounds, parties)
    if drop_at and participant_count - 1 < demo_threshold(participant_count):
        raise click.BadParameter(
            f"with {participant_count} participants the threshold is "
            f"{demo_threshold(participant_count)}: no one can drop out",
            param_hint="--drop",
        )
    out_dir = (out_dir or Path(f"fedmask-demo-{dt.datetime.now():%Y%m%d-%H%M%S}")).resolve()
    work = out_dir / "work"
    if work.exists() and any(work.iterdir()):
        raise click.ClickException(f"{work} is not empty: choose another --out")
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    click.echo(f"fedmask demo: report folder {out_dir}")

    from fedmask import pki
    from fedmask.demo.data import generate_notes, generate_records, write_records

    # The operator's directory (CA, coordinator) and one per party, as on separate machines: each
    # party makes its own keys, the operator issues from the requests and hands back public files.
    federation_dir = work / "federation"
    pki.init_federation(federation_dir, federation_name="demo")
    pki.issue(federation_dir, "coordinator", "main", hosts=["localhost", "127.0.0.1"])
    party_dirs = {party: work / f"{party}-federation" for party in parties}
    data_paths: dict[str, Path] = {}
    for index, party in enumerate(parties):
        request = pki.enrol(party_dirs[party], party, organisation=party)
        pki.issue(federation_dir, "participant", party, request=request)
        generated = (
            generate_notes(party_profile(party), records, seed=seed + index)
            if task == "causal_lm"
            else generate_records(party_profile(party), records, seed=seed + index)
        )
        data_paths[party] = write_records(generated, work / f"{party}.jsonl")
    for party, party_dir in party_dirs.items():  # once the roster lists everyone
        pki.export_participant(federation_dir, party, party_dir)
    # Each party's own policy (the demo plays every party's operator): the members pinned, the
    # security mode and the budget the demo runs with; the coordinator cannot ask for more.
    from fedmask.participant.policy import ParticipantPolicy
    from fedmask.participant.setup import policy_path
    from fedmask.secagg.params import SecurityMode

    roster = pki.load_roster(federation_dir, pki.load_ca_certificate(federation_dir))
    for party, party_dir in party_dirs.items():
        ParticipantPolicy.pinned_to(
            parties,
            roster.version,
            security_mode=SecurityMode(security_mode),
            max_epsilon=epsilon,
            max_delta=delta,
        ).save(policy_path(party_dir, party))
    click.echo(
        f"federation CA in {federation_dir}; each party enrolled in its own directory (work/NAME-federation) "
        f"and was issued from its request; {records} records per party generated"
    )

    if task == "causal_lm" and not model_path:
        model_path = str(_tiny_causal_lm(work / "model", parties, seed))
        click.echo(
            f"no --model for the causal LM: built a tiny Qwen2 with random weights in {model_path} (its tokenizer "
            "learnt from separately generated notes); the figures show the pipeline at work, not a useful model"
        )
    config = federation_settings(
        parties,
        rounds,
        task=task,
        mode=mode,
        epsilon=epsilon,
        delta=delta,
        model_path=model_path,
        security_mode=security_mode,
        aggregate_noise=aggregate_noise,
        aggregate_epsilon=aggregate_epsilon,
    )
    config_path = work / "federation.json"
    write_text_atomic(config_path, json.dumps(config, indent=2))

    with _terminate_as_exception():
        try:
            code = _run_federation(
                federation_dir=federation_dir,
                work=work,
                config_path=config_path,
                party_dirs=party_dirs,
                data_paths=data_paths,
                task=task,
                drop_at=drop_at,
                threshold=config["threshold"],
            )
        except _Terminated as stopped:
            click.echo(
                f"Error: stopped by {stopped}: the coordinator and the participants were stopped; logs in {work}",
                err=True,
            )
            sys.exit(128 + stopped.signum)
    if code != 0:
        raise click.ClickException(f"the coordinator exited with status {code}; logs in {work}")
    federation_s = time.monotonic() - started
    final = json.loads((work / "coordinator" / "final.json").read_text(encoding="utf-8"))

    # The participants' own settings, budget plan included: the baselines spend the same budget.
    from fedmask.adapter.scores import majority_scores
    from fedmask.coordinator.config import FederationConfig
    from fedmask.demo.data import LABEL_NAMES
    from fedmask.demo.report import (
        baseline_feature_cache,
        build_report,
        evaluate_global_adapter,
        heldout_union,
        pooled_baselines,
        single_party_baselines,
        write_report,
    )

    participant_training = FederationConfig.from_json(config).training_config()
    heldout = heldout_union(data_paths, task)
    pooled: dict[str, dict[str, Any]] = {}
    baselines: dict[str, dict[str, Any]] = {}
    if not skip_baseline:
        # The pooled baselines first: every party's records are among theirs, so the parties
        # alone find their first round's features in the cache.
        features = baseline_feature_cache(len(parties), rounds)
        pooled = pooled_baselines(participant_training, data_paths, rounds, click.echo, features)
        baselines = single_party_baselines(participant_training, data_paths, rounds, click.echo, features)
    federated = evaluate_global_adapter(participant_training, work / "coordinator", heldout)
    majority = (
        majority_scores([int(r.label) for r in heldout if r.label is not None], len(LABEL_NAMES))
        if task == "classification"
        else None
    )
    report = build_report(
        final,
        baselines,
        federation_s,
        time.monotonic() - started,
        config,
        federated,
        majority=majority,
        label_names=LABEL_NAMES,
        pooled=pooled,
    )
    write_report(
        report,
        out_dir,
        final,
        participant_training,
        work / "coordinator",
        heldout=heldout,
        label_names=LABEL_NAMES,
        data_description=(
            f"synthetic non-IID messages of {', '.join(parties)} generated by fedmask demo ({records} per party, "
            f"20% held out; label 1: needs urgent human follow-up, 0: routine), with PII embedded for the scrubber"
        ),
    )
    click.echo("")
    click.echo((out_dir / "report.md").read_text(encoding="utf-8"))
    click.echo(
        f"report: {out_dir / 'report.md'}, {out_dir / 'report.json'}, {out_dir / 'report.png'}, "
        f"{out_dir / 'global_adapter'} (PEFT)"
        + (
            f", {out_dir / 'global_model'} (sentence-transformers; see its README.md)"
            if task == "classification"
            else ""
        )
    )


def _run_federation(
    *,
    federation_dir: Path,
    work: Path,
    config_path: Path,
    party_dirs: dict[str, Path],
    data_paths: dict[str, Path],
    task: str,
    drop_at: dict[str, int],
    threshold: int,
) -> int:
    """Start the coordinator and a node per party, supervise them to the end; the coordinator's
    exit status. Every process is stopped on the way out, however it is left."""
    port = _free_port()
    python = sys.executable
    started: list[_Process] = []  # every process started, so that a signal at any point stops them all

    def start(name: str, *arguments: str) -> _Process:
        process = _Process(name, [python, "-m", "fedmask.cli", *arguments], work / f"{name}.log", click.echo)
        started.append(process)
        return process

    def start_node(party: str) -> _Process:
        return start(
            party,
            "participant",
            "node",
            "--federation",
            str(party_dirs[party]),
            "--name",
            party,
            "--data",
            str(data_paths[party]),
            "--state",
            str(work / party),
            "--coordinator",
            f"localhost:{port}",
            "--task",
            task,
        )

    try:
        coordinator = start(
            "coordinator",
            "coordinator",
            "run",
            "--federation",
            str(federation_dir),
            "--state",
            str(work / "coordinator"),
            "--config",
            str(config_path),
            "--port",
            str(port),
        )
        nodes: dict[str, _Process] = {}
        for party in party_dirs:
            nodes[party] = start_node(party)
        _supervise(coordinator, nodes, drop_at, start_node, threshold)
        code = coordinator.wait(timeout=60 * 60)
        for node in nodes.values():
            node.wait(timeout=120)
        return code
    finally:
        for process in started:
            process.kill()


def _supervise(
    coordinator: _Process,
    nodes: dict[str, _Process],
    drop_at: dict[str, int],
    start_node: Callable[[str], _Process],
    threshold: int,
) -> None:
    """Wait for the coordinator; carry out --drop NAME@ROUND.

    NAME is killed (SIGKILL) while it trains for ROUND, so the round has to go on without it: the
    coordinator starts it with the others once its quorum grace period has passed. NAME is
    restarted when the coordinator has decided the round, and takes part in the next one.
    """
    to_kill = dict(drop_at)
    to_restart: dict[str, int] = {}
    while coordinator.process.poll() is None:
        for party, round_number in list(to_kill.items()):
            if any(f"round {round_number}/" in line and "training on" in line for line in nodes[party].lines):
                nodes[party].kill()
                nodes[party].wait(30)
                click.echo(
                    f"demo: killed {party} (SIGKILL) while it trained for round {round_number}; "
                    "the round goes on without it"
                )
                to_restart[party] = to_kill.pop(party)
        for party, round_number in list(to_restart.items()):
            if any(
                (f"round {round_number}/" in line and "committed" in line)
                or (f"round {round_number} attempt" in line and "aborted" in line)
                for line in coordinator.lines
            ):
                click.echo(f"demo: restarting {party}")
                nodes[party] = start_node(party)
                del to_restart[party]
        failed = [
            name for name, node in nodes.items() if name not in to_restart and node.process.poll() not in (None, 0)
        ]
        if failed and len(nodes) - len(failed) - len(to_restart) < threshold:
            coordinator.kill()
            raise click.ClickException(f"participants failed: {', '.join(failed)}; see their logs")
        time.sleep(0.2)
