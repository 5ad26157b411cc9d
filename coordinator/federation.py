"""Federated rounds around secure aggregation: the coordinator's side.

One ``Federation`` owns the global adapter and runs rounds until the configured number is
committed::

    for round r (resuming after the last committed one):
        publish a TRAIN task: round r, a fresh secure-aggregation round id, the global adapter
        participants download the adapter, train with DP-SGD, report their record-level epsilon,
            and upload (local - global), clipped and encoded, through secure aggregation
        sum -> decode -> average over the survivors -> server optimiser -> new global adapter
        save the checkpoint durably, then commit round + ledger entry in one transaction
    publish FINISHED with the final adapter; wait a little for the participants' last reports

The coordinator never sees an individual update: only the sum the secure-aggregation round
yields. A round that aborts (fewer than t survivors) is recorded as failed and run again with a
new round id; a coordinator killed mid-round finds the interrupted round on restart and runs it
again (``coordinator/store.py``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedmask import ddp
from fedmask.adapter import payload as adapter_payload
from fedmask.adapter.metrics import METRIC_COORDINATES, RoundMetrics, decode_metrics
from fedmask.coordinator.config import FederationConfig, FederationError
from fedmask.coordinator.service import CHUNK_BYTES, FederationService
from fedmask.ddp.accounting import DistributedDPAccountant, NoiseRecord
from fedmask.ddp.rotation import rotation_seed
from fedmask.proto.fl.v1 import fl_pb2 as fl
from fedmask.proto.fl.v1 import fl_pb2_grpc as fl_grpc
from fedmask.secagg.encoding import ImplausibleSum, decode_checked_sum
from fedmask.secagg.params import EncodingParams, ProtocolParams

from .round_server import CoordinatorServer, MessageLimits, RoundConfig, RoundOutcome, ServerSettings, new_round_id
from .transport import ServerSecurity

if TYPE_CHECKING:
    from .aggregation import ServerOptimizer

Progress = Callable[[str], None]
# The adapter's layout (``fedmask.adapter.vector.VectorSpec.to_json()``).
Layout = list[dict[str, object]]


# --- the run -----------------------------------------------------------------------------------


@dataclass
class RoundRecord:
    """What the ledger and the demo's report keep of a committed round."""

    round: int
    round_id: str
    survivors: list[str]
    dropped: dict[str, str]
    attempts: int
    update_l2_norm: float
    upload_bytes: dict[str, int]
    wall_s: float
    epsilon: dict[str, float]  # record-level, reported by each participant (cumulative)
    # The adapter this round started from, on the survivors' held-out splits together: totals
    # from inside the masked vector (fedmask.adapter.metrics); None under aggregate noise.
    heldout_before: dict[str, Any] | None
    participant_epsilon: float | None = None  # against the coordinator, cumulative (aggregate noise)
    noise_record: dict[str, Any] | None = None


def initial_adapter(training: Mapping[str, Any]) -> tuple[np.ndarray, Layout]:
    """The adapter every participant starts from (LoRA-B at zero): built by the shared model code
    that the participants train with, so that the layouts match."""
    from fedmask.adapter.config import TrainingConfig
    from fedmask.adapter.model import initial_adapter as build_initial_adapter

    return build_initial_adapter(TrainingConfig.create(**dict(training)))


def noise_cost_lines(plan: ddp.AggregateNoisePlan, rounds: int) -> list[str]:
    """What the distributed noise costs the model: the decoded mean's expected error against the
    clip norm (a mean update's largest norm), and a warning when the noise swamps the signal
    even after ``rounds`` rounds (noise adds up as sqrt(rounds), a steady signal as rounds)."""
    low, high = plan.config.min_survivors, plan.config.max_participants
    clip = plan.config.clip_norm
    lines = [
        f"aggregate noise: expected error norm of each round's decoded mean {plan.expected_noise_norm(high):.3g} "
        f"with {high} survivors, {plan.expected_noise_norm(low):.3g} with {low} (an update's norm is at most "
        f"{clip:g}); participant-level epsilon {plan.planned_epsilon:.3g} over the planned rounds"
    ]
    accumulated = plan.noise_to_clip(high) / math.sqrt(rounds)
    if accumulated > 1:
        lines.append(
            f"WARNING: even with every participant, after {rounds} rounds the noise is {accumulated:.1f}x the "
            "largest signal: the global model will learn little. Raise aggregate_epsilon, add participants or "
            "rounds, or use no aggregate noise (record-level DP-SGD still protects each record)"
        )
    return lines


class RoundFailed(Exception):
    """Every attempt of a round failed; it is recorded as failed and the federation goes on."""


class Federation:
    """Runs a federation to completion on a started ``CoordinatorServer``; resumable."""

    def __init__(
        self,
        config: FederationConfig,
        state_dir: str | Path,
        security: ServerSecurity,
        *,
        settings: ServerSettings | None = None,
        progress: Progress | None = None,
        identity_keys: Mapping[str, bytes] | None = None,
        initial: tuple[np.ndarray, Layout] | None = None,
        allow_config_change: bool = False,
    ) -> None:
        from .store import FederationStore

        if security.roster is not None:
            outside = sorted(set(config.participants) - set(security.roster.entries))
            if outside:  # refused before anything is written: the round would wait for them in vain
                raise FederationError(
                    f"participants not in the CA-signed roster: {', '.join(outside)} "
                    "(issue their certificates first, or remove them from the config)"
                )
        self.config = config
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.security = security
        self.settings = settings or ServerSettings()
        self.progress = progress or (lambda line: None)
        self.identity_keys = dict(identity_keys or {})
        self.store = FederationStore(self.state_dir / "federation.db")
        self.store.initialise(config.to_json(), allow_config_change=allow_config_change)
        self._initial = initial
        self.service = FederationService(config, security.authenticator, progress=self.progress)
        self.server: CoordinatorServer | None = None
        self.records: list[RoundRecord] = []

    async def run(self) -> list[dict[str, Any]]:
        """Run every remaining round; returns the ledger."""
        config = self.config
        vector, layout, _last_committed, optimizer = self._resume()
        self.noise_plan = config.noise_plan(vector.size)
        self.service.noise_plan = self.noise_plan
        if self.noise_plan is not None:
            for line in noise_cost_lines(self.noise_plan, config.rounds):
                self.progress(line)
        self.accountant = self._replay_accountant()
        # Without aggregate noise the held-out metrics ride along as sums after the update.
        dimension = self.noise_plan.padded_dimension if self.noise_plan else vector.size + METRIC_COORDINATES
        params = config.protocol_params(dimension=dimension)
        limits = MessageLimits.for_round(params, len(config.participants))
        self.service.chunk_bytes = max(1024, min(CHUNK_BYTES, limits.send_bytes - 1024))
        self.server = CoordinatorServer(
            self.security,
            limits,
            settings=self.settings,
            max_participants=len(config.participants),
            progress=self.progress,
            extra_services=[lambda s: fl_grpc.add_FederationServicer_to_server(self.service, s)],
        )
        port = await self.server.start()
        self.progress(f"coordinator listening on {self.settings.host}:{port}")
        try:
            # A failed round is history: the next is the one after the last finished (or the
            # interrupted one), not the one after the last committed.
            for round_number in range(self.store.next_round_number(), config.rounds + 1):
                try:
                    vector = await self._run_round(round_number, vector, layout, params, optimizer)
                except RoundFailed as exc:
                    self.progress(f"round {round_number} failed ({exc}); the global adapter stays as it was")
            final = adapter_payload.pack(vector, layout, config.rounds)
            self.service.publish(fl.Task.FINISHED, config.rounds, b"", final)
            self.progress(f"federation finished after {config.rounds} rounds; waiting for final reports")
            await self._wait_final_reports()
        finally:
            await self.server.stop()
        return self.store.ledger()

    def _resume(self) -> tuple[npt.NDArray[np.float32], Layout, int, ServerOptimizer]:
        """The global adapter to go on from, the last committed round, and the optimizer."""
        from .aggregation import server_optimizer_from_config

        store = self.store
        removed = store.collect_garbage()
        interrupted = store.interrupted_round()
        if interrupted is not None:
            self.progress(
                f"round {interrupted.round_number} was interrupted by a restart; running it again"
                + (f" (removed {len(removed)} uncommitted checkpoint files)" if removed else "")
            )
        last = store.last_committed()
        if last is None:
            vector, layout = self._initial or initial_adapter(self.config.training_config())
            last = store.save_checkpoint(0, np.asarray(vector, dtype=np.float32), layout)
            store.commit_initial(last)
        elif last.round_number:
            self.progress(f"resuming after committed round {last.round_number}")
        vector, layout = store.load_checkpoint(last)
        optimizer = server_optimizer_from_config(self._optimizer_config())
        state = store.load_optimizer_state(last)
        if state:
            optimizer.load_state_dict(state)
        return np.asarray(vector, dtype=np.float32), layout, last.round_number, optimizer

    def _replay_accountant(self) -> DistributedDPAccountant:
        """The coordinator-view accountant, rebuilt from the committed ledger (so a restart
        neither forgets nor double-counts a released sum)."""
        accountant = DistributedDPAccountant(float(self.config.aggregate_delta))
        for entry in self.store.ledger():
            record = entry["metrics"].get("noise_record")
            if record:
                accountant.step(NoiseRecord(**record))
        return accountant

    def _optimizer_config(self) -> dict[str, Any]:
        if self.config.server_optimizer == "fedavg":
            return {"name": "fedavg", "server_lr": self.config.server_learning_rate}
        return {"name": "fedadam", "lr": self.config.server_learning_rate}

    async def _run_round(
        self,
        round_number: int,
        vector: npt.NDArray[np.float32],
        layout: Layout,
        params: ProtocolParams,
        optimizer: ServerOptimizer,
    ) -> npt.NDArray[np.float32]:
        """One federated round, re-run (new round id) after an abort or a refused sum, at most
        ``attempts_per_round`` times. A participant proven to misbehave is excluded for good
        (recorded in the store); one accused that did not answer sits out the re-runs."""
        server = self.server
        if server is None:
            raise RuntimeError("the coordinator server is not started (Federation.run starts it)")
        config = self.config
        encoding = config.encoding()
        adapter = adapter_payload.pack(vector, layout, round_number - 1)
        started = time.monotonic()
        excluded = self.store.exclusions()
        skipped: dict[str, str] = {}
        reason = "no attempt could start"
        decoded = None
        for attempt in range(1, config.attempts_per_round + 1):
            selected = tuple(p for p in config.participants if p not in excluded and p not in skipped)
            round_id = new_round_id()
            try:
                round_config = RoundConfig(
                    round_id,
                    params,
                    selected,
                    join_timeout_s=config.join_timeout_s,
                    phase_timeout_s=config.phase_timeout_s,
                    quorum_grace_s=config.quorum_grace_s,
                    identity_keys=self.identity_keys,
                )
            except ValueError as exc:
                reason = f"only {len(selected)} participants are left to select ({exc})"
                break
            self.store.begin_round(round_number, round_id, list(selected))
            self.service.excluded = dict(excluded)
            self.service.publish(fl.Task.TRAIN, round_number, round_id, adapter)
            self.progress(f"round {round_number}/{config.rounds} (attempt {attempt}): training task published")
            outcome = await server.run_round(round_config)
            for name, why in outcome.culprits.items():
                self.store.exclude(name, round_number, round_id, why)
                excluded[name] = f"round {round_number}: {why}"
                self.progress(f"{name} is excluded from the federation: it {why}")
            for name, why in outcome.suspects.items():
                skipped[name] = why
                self.progress(f"{name} sits out the re-runs of round {round_number}: it {why}")
            if outcome.completed:
                try:
                    decoded = self._decode(outcome, round_id, encoding)
                    break
                except (ImplausibleSum, ddp.WrapAroundDetected) as exc:
                    reason = f"the sum was refused: {exc}"
            else:
                # The round stays open: the next attempt re-runs it with a new round id.
                reason = f"{outcome.abort_phase.value if outcome.abort_phase else 'join'}: {outcome.abort_reason}"
            self.progress(f"round {round_number} attempt {attempt} aborted ({reason})")
        if decoded is None:
            self.store.fail_round(round_number, reason)
            self.service.publish(fl.Task.WAIT, round_number, b"", adapter)
            raise RoundFailed(f"every attempt failed; last: {reason}")
        self.service.publish(fl.Task.WAIT, round_number, b"", adapter)
        mean_update, noise_record, metrics = decoded
        survivors = list(outcome.survivors)
        if noise_record is not None:
            self.accountant.step(noise_record)
        new_vector = optimizer.apply(vector.astype(np.float64), mean_update).astype(np.float32)
        record = self._record(round_number, outcome, attempt, mean_update, time.monotonic() - started, metrics)
        record.noise_record = asdict(noise_record) if noise_record else None
        record.participant_epsilon = self.accountant.get_epsilon() if noise_record else None
        ref = self.store.save_checkpoint(round_number, new_vector, layout, optimizer.state_dict())
        self.store.commit_round(round_number, ref, self._ledger_entry(record, encoding))
        self.records.append(record)
        self.progress(
            f"round {round_number}/{config.rounds} committed: survivors {', '.join(survivors)}"
            + (f"; dropped {', '.join(outcome.dropped)}" if outcome.dropped else "")
            + f"; epsilon {_fmt(record.epsilon)}"
            + (
                f"; participant-level epsilon {record.participant_epsilon:.3f}"
                if record.participant_epsilon is not None
                else ""
            )
        )
        return new_vector

    def _decode(
        self, outcome: RoundOutcome, round_id: bytes, encoding: EncodingParams
    ) -> tuple[np.ndarray, NoiseRecord | None, RoundMetrics | None]:
        """The survivors' mean update (and, without aggregate noise, the totals of their held-out
        metrics) from the unmasked sum, refusing a sum that correctly encoded updates cannot
        produce (``ImplausibleSum``, ``WrapAroundDetected``)."""
        survivors = len(outcome.survivors)
        if outcome.result is None:
            raise RuntimeError("a completed round without a sum")
        if self.noise_plan is None:
            update, totals = outcome.result[:-METRIC_COORDINATES], outcome.result[-METRIC_COORDINATES:]
            metrics = decode_metrics(totals, encoding.modulus_bits, len(outcome.participants), survivors)
            return decode_checked_sum(update, encoding, survivors) / survivors, None, metrics
        mean = ddp.decode_sum(outcome.result, self.noise_plan, rotation_seed(round_id), survivors)
        return mean, self.noise_plan.noise_record(survivors), None

    def _record(
        self,
        round_number: int,
        outcome: RoundOutcome,
        attempts: int,
        mean_update: np.ndarray,
        wall_s: float,
        metrics: RoundMetrics | None,
    ) -> RoundRecord:
        reports = {name: r for (rnd, name), r in self.service.reports.items() if rnd == round_number}
        return RoundRecord(
            round=round_number,
            round_id=outcome.round_id.decode("ascii", "replace"),
            survivors=list(outcome.survivors),
            # Everyone selected is accounted for: a participant that never joined dropped too.
            dropped={
                name: outcome.dropped.get(name, "did not take part")
                for name in outcome.participants
                if name not in outcome.survivors
            },
            attempts=attempts,
            update_l2_norm=float(np.linalg.norm(mean_update)),
            upload_bytes=dict(outcome.bytes_received),
            wall_s=round(wall_s, 3),
            epsilon={name: r.epsilon for name, r in sorted(reports.items())},
            heldout_before=metrics.as_dict() if metrics is not None else None,
        )

    def _ledger_entry(self, record: RoundRecord, encoding: EncodingParams) -> dict[str, Any]:
        reports = [r for (rnd, _), r in self.service.reports.items() if rnd == record.round]
        return {
            "survivors": record.survivors,
            "dropped": record.dropped,
            "encoding": {
                "clip_norm": encoding.clip_norm,
                "scale": encoding.scale,
                "modulus_bits": encoding.modulus_bits,
            },
            "epsilon": record.epsilon,
            "participant_epsilon": record.participant_epsilon,
            "delta": max((r.delta for r in reports), default=None) or None,
            "metrics": {
                "heldout_before": record.heldout_before,
                "upload_bytes": record.upload_bytes,
                "wall_s": record.wall_s,
                "attempts": record.attempts,
                "update_l2_norm": record.update_l2_norm,
                # Of update_l2_norm, how much the distributed noise is expected to be.
                "expected_noise_norm": (
                    self.noise_plan.expected_noise_norm(len(record.survivors)) if self.noise_plan else None
                ),
                "noise_record": record.noise_record,
                "aggregate_delta": self.config.aggregate_delta if record.noise_record else None,
            },
        }

    async def _wait_final_reports(self) -> None:
        deadline = time.monotonic() + self.config.final_report_wait_s
        while len(self.service.final_reports) < len(self.config.participants):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(self.config.participants) - set(self.service.final_reports))
                self.progress(f"no final report from {', '.join(missing)}")
                return
            self.service.report_arrived.clear()
            try:
                await asyncio.wait_for(self.service.report_arrived.wait(), remaining)
            except TimeoutError:
                continue


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in values.items()) or "not reported"
