"""A participant's node: follows the coordinator's federation from task to task.

    loop:
        GetTask                       (retried with backoff while the coordinator is away)
        WAIT      -> ask again later
        TRAIN r   -> check the task against the participant's policy, download the global adapter
                     (SHA-256 checked), evaluate it on the held-out split, train with DP-SGD (the
                     privacy ledger is charged first and persisted, pending until the update is
                     masked; refunded if it never is), report the epsilon spent,
                     then upload local - global, with the held-out figures appended, through
                     secure aggregation
        CALIBRATE -> (after the last round, two-class classifiers) score the final adapter on
                     the training records and upload, in place of an update, the noised
                     calibration statistic (fedmask.adapter.calibration), charged like an update
        FINISHED  -> download the final adapter, evaluate it locally, report the epsilon, stop

The records never leave this process. What leaves it: the record-level (epsilon, delta) spent
(a function of the noise, the sampling rate and the steps, not of the records), and the masked
vector, which carries the update and the held-out figures so that the coordinator learns only
their sums over the survivors. The node's state (privacy ledger, last round uploaded) lives in
``state_dir`` so a restarted node neither forgets its spent budget nor uploads twice for the
same secure-aggregation round.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from fedmask import ddp
from fedmask.adapter import payload as adapter_payload
from fedmask.adapter.metrics import RoundMetrics, encode_metrics
from fedmask.ddp.rotation import rotation_seed
from fedmask.durable import PRIVATE, write_text_atomic
from fedmask.participant.policy import ParticipantPolicy, PolicyViolation
from fedmask.proto.fl.v1 import fl_pb2 as fl
from fedmask.proto.fl.v1 import fl_pb2_grpc as fl_grpc
from fedmask.proto.wire import RoundStart
from fedmask.secagg.encoding import encode
from fedmask.secagg.messages import ModularVector
from fedmask.secagg.params import EncodingParams
from fedmask.secagg.rand import SystemRandom

from .data import LocalData
from .grpc_client import Connection, Identity, _open_channel, explain_unavailable, rehearse_once, take_part

if TYPE_CHECKING:
    from fedmask.adapter.config import TrainingConfig
    from fedmask.adapter.vector import VectorSpec

    from .ledger import PrivacyLedger
    from .trainer import Evaluation, LocalTrainer
    from .training import TrainingResult

Progress = Callable[[str], None]
# ``participant.training.train_adapter`` (passed in: it is imported only when a node runs).
TrainAdapter = Callable[..., "TrainingResult"]
_Result = TypeVar("_Result")
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
UNREACHABLE_REPORT_S = 30.0  # while the coordinator is unreachable, a line this often
# Before the coordinator has ever answered, it may still be starting (loading the model, building
# the initial adapter): a node says nothing of it for this long, unless TLS explains the failure.
STARTING_GRACE_S = 20.0
TRAINING_REPORT_S = 5.0  # while training, a progress line this often
MAX_ADAPTER_WITHDRAWALS = 3  # announced adapters the coordinator did not offer, in a row, before giving up


class NodeError(RuntimeError):
    """The node cannot go on (the reason says why)."""


class AdapterWithdrawn(NodeError):
    """The coordinator does not (or no longer) offer the adapter its task announced: it restarted
    during the download, or moved on. The node asks for the task again."""


@dataclass
class NodeState:
    """What a node remembers across restarts (``state_dir/node.json``)."""

    uploaded_round_ids: list[str]
    last_round: int = 0

    @classmethod
    def load(cls, path: Path) -> NodeState:
        if not path.exists():
            return cls([])
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(data["uploaded_round_ids"]), int(data["last_round"]))

    def save(self, path: Path) -> None:
        state = {"uploaded_round_ids": self.uploaded_round_ids, "last_round": self.last_round}
        write_text_atomic(path, json.dumps(state), mode=PRIVATE)


def parse_encoding(
    text: str, dimension: int, policy: ParticipantPolicy | None = None
) -> tuple[EncodingParams, ddp.AggregateNoisePlan | None]:
    """The round's encoding; with aggregate noise, the plan this node calibrates itself from the
    announced settings (so a coordinator cannot hand out a plan with less noise than stated).
    ``policy`` decides whether the announced aggregate noise (or its absence) is acceptable."""
    try:
        data = json.loads(text)
        if policy is not None:
            policy.check_aggregate_noise(data.get("aggregate_noise"))
        params = EncodingParams(
            clip_norm=float(data["clip_norm"]), scale=float(data["scale"]), modulus_bits=int(data["modulus_bits"])
        )
        params.validate(1)
        noise = data.get("aggregate_noise")
        plan = None
        if noise:
            settings = {**noise, "dimension": dimension}
            plan = ddp.calibrate(ddp.AggregateNoiseConfig.from_dict(settings))
    except PolicyViolation as exc:
        raise NodeError(str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        # OverflowError: JSON's Infinity as modulus_bits, or an integer beyond any float.
        raise NodeError(f"the coordinator sent an unusable encoding: {exc}") from None
    return params, plan


class Node:
    def __init__(
        self,
        connection: Connection,
        identity: Identity,
        data: LocalData,
        state_dir: str | Path,
        *,
        progress: Progress | None = None,
        overrides: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        policy: ParticipantPolicy | None = None,
        task: str = "classification",
    ) -> None:
        """``task`` is what this participant's records are for (``classification`` or
        ``causal_lm``): a coordinator that asks for the other kind of training is refused."""
        self.connection = connection
        self.task = task
        # This participant's own rules: every task and round start is checked against them.
        self.policy = policy
        self.identity = identity
        self.data = data
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress or (lambda line: None)
        self.overrides = dict(overrides or {})  # local settings the coordinator may not change
        self.sleep = sleep
        self.clock = clock
        self.state = NodeState.load(self.state_dir / "node.json")
        self._trainer: LocalTrainer | None = None
        self._ledger: PrivacyLedger | None = None
        self._jitter = random.Random()
        self._rejoin_tried: set[str] = set()  # rounds this process has tried to rejoin
        self._reached = False  # has the coordinator ever answered this process?

    # --- RPC helpers ------------------------------------------------------------------------

    def _call(self, what: str, function: Callable[[fl_grpc.FederationStub], _Result]) -> _Result:
        """Call with backoff while the coordinator is unreachable (restarting, partitioned)."""
        attempt = 0
        first_failure: float | None = None
        tolerance = self.connection.outage_tolerance_s
        hint = ""  # which side refused which TLS certificate, worked out once per outage
        reports = 0  # lines said about this outage
        while True:
            channel = _open_channel(self.connection)
            try:
                result = function(fl_grpc.FederationStub(channel))
                if reports and first_failure is not None:
                    self.progress(f"coordinator reachable again after {self.clock() - first_failure:.0f} s")
                self._reached = True
                return result
            except grpc.RpcError as exc:
                if exc.code() not in _RETRYABLE:
                    raise NodeError(f"{what} refused: {exc.code().name}: {exc.details()}") from None
                attempt += 1
                now = self.clock()
                if first_failure is None:
                    first_failure = now
                    if self.connection.credentials is not None:
                        explained = explain_unavailable(self.connection, exc.details())
                        hint = f" ({explained})" if explained else ""
                if now - first_failure >= tolerance:
                    raise NodeError(
                        f"coordinator unreachable for {what} for {now - first_failure:.0f} s "
                        f"(outage tolerance {tolerance:g} s): {exc.details()}{hint}"
                    ) from None
                delay = self.connection.backoff_s(min(attempt, 6), self._jitter)
                # One line when the outage starts, then one every UNREACHABLE_REPORT_S: a coordinator
                # that is still starting is not worth a line per retry, nor one at all at first.
                quiet_s = 0.0 if self._reached or hint else STARTING_GRACE_S
                if now >= first_failure + max(quiet_s, UNREACHABLE_REPORT_S * reports):
                    waited = f" for {now - first_failure:.0f} s" if now - first_failure >= 1 else ""
                    self.progress(
                        f"coordinator unreachable{waited} ({exc.code().name}){hint}; retrying "
                        f"(giving up after {tolerance:g} s)"
                    )
                    reports += 1
                self.sleep(delay)
            finally:
                channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        return self.connection.metadata or None

    def get_task(self) -> fl.Task:
        request = fl.TaskRequest(last_round=self.state.last_round)

        def get(stub: fl_grpc.FederationStub) -> fl.Task:
            task: fl.Task = stub.GetTask(request, metadata=self._metadata(), timeout=self.connection.rpc_timeout_s)
            return task

        return self._call("GetTask", get)

    def download(self, task: fl.Task, spec: VectorSpec) -> adapter_payload.AdapterPayload:
        """The task's global adapter, checked against ``spec``, this node's own adapter layout:
        its announced size is bounded before anything is downloaded (a coordinator announcing
        more could fill this machine's memory), and what arrives must have that layout and size."""
        limit = adapter_payload.size_bound(spec.to_json(), spec.size, task.adapter_round)
        if task.adapter_bytes > limit:
            raise NodeError(
                f"the coordinator announces a {task.adapter_bytes}-byte global adapter; this node's model and "
                f"adapter settings make at most {limit} bytes"
            )

        def fetch(stub: fl_grpc.FederationStub) -> bytes:
            chunks: list[bytes] = []
            expected = 0
            stream: Iterator[fl.AdapterChunk] = stub.DownloadAdapter(
                fl.AdapterRequest(sha256=task.adapter_sha256),
                metadata=self._metadata(),
                timeout=self.connection.transfer_deadline_s(task.adapter_bytes),
            )
            try:
                for chunk in stream:
                    if chunk.offset != expected:
                        raise NodeError("adapter chunks arrived out of order")
                    chunks.append(chunk.data)
                    expected += len(chunk.data)
                    if expected > task.adapter_bytes:
                        raise NodeError("the adapter is larger than announced")
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise AdapterWithdrawn(
                        f"round {task.round}: the coordinator no longer offers the adapter its task announced "
                        f"({task.adapter_sha256[:16]}...)"
                    ) from None
                raise  # retried (or refused) by ``_call``
            return b"".join(chunks)

        data = self._call("DownloadAdapter", fetch)
        try:
            payload = adapter_payload.unpack(data, task.adapter_sha256)
        except adapter_payload.AdapterPayloadError as exc:
            raise NodeError(str(exc)) from None
        if payload.round != task.adapter_round:
            raise NodeError(f"the adapter is of round {payload.round}, the task announced {task.adapter_round}")
        if payload.layout != spec.to_json():
            raise NodeError("the global adapter's layout differs from this node's model and adapter settings")
        if payload.vector.size != spec.size:
            raise NodeError(
                f"the global adapter has {payload.vector.size} values; its layout, and this node's adapter, "
                f"have {spec.size}"
            )
        return payload

    def report(self, round_number: int, adapter_round: int) -> None:
        """The record-level (epsilon, delta) this participant has spent: it follows from the noise,
        the sampling rate and the steps, not from the records. Nothing else is reported; held-out
        results travel inside the masked vector (``fedmask.adapter.metrics``)."""
        ledger = self._ledger
        request = fl.ParticipantReport(
            round=round_number,
            adapter_round=adapter_round,
            epsilon=float(ledger.epsilon_spent) if ledger is not None else 0.0,
            delta=float(ledger.delta) if ledger is not None else 0.0,
        )
        timeout = self.connection.rpc_timeout_s
        self._call("Report", lambda stub: stub.Report(request, metadata=self._metadata(), timeout=timeout))

    # --- training ---------------------------------------------------------------------------

    def _training(self, task: fl.Task, *, plan_check: bool = True) -> tuple[TrainingConfig, LocalTrainer]:
        from fedmask.adapter.config import ConfigError, TrainingConfig
        from fedmask.adapter.model import check_lora_layers
        from fedmask.participant.trainer import LocalTrainer

        from .ledger import PrivacyLedger

        try:
            settings = json.loads(task.training_json)
            if not isinstance(settings, dict):
                raise ValueError("not a JSON object")
            config = TrainingConfig.create(
                **{
                    **settings,
                    **self.overrides,
                    "lora_targets": tuple(settings["lora_targets"]) if settings.get("lora_targets") else None,
                }
            )
        except (TypeError, ValueError) as exc:
            raise NodeError(f"the coordinator sent unusable training settings: {exc}") from None
        if config.task != self.task:
            raise NodeError(
                f"the coordinator asks for {config.task} training; this participant's records are for "
                f"{self.task} (participant node --task)"
            )
        if self.policy is not None:
            try:
                self.policy.check_training(config, local_models=[str(v) for v in self.overrides.values()])
            except PolicyViolation as exc:
                raise NodeError(str(exc)) from None
        if self._trainer is None or self._ledger is None or self._trainer.config != config:
            try:
                check_lora_layers(config)  # before the ledger file is made
            except ConfigError as exc:
                raise NodeError(f"the coordinator sent unusable training settings: {exc}") from None
            self._ledger = PrivacyLedger.open(
                self.state_dir / "privacy_ledger.json",
                accountant=config.accountant,
                epsilon_budget=config.target_epsilon,
                delta=config.target_delta,
            )
            self._refund_unreleased(self._ledger)
            try:
                self._trainer = LocalTrainer(config, ledger=self._ledger)
            except ConfigError as exc:  # settings the model cannot take (lora_layers beyond its depth)
                raise NodeError(f"the coordinator sent unusable training settings: {exc}") from None
        if self.policy is not None and plan_check:
            plan = self._trainer.plan_for(len(self.data.train))
            after = self._ledger.projected_epsilon(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)
            try:
                self.policy.check_plan(
                    steps_per_round=plan.steps_per_round, epsilon_increment=after - self._ledger.epsilon_spent
                )
            except PolicyViolation as exc:
                raise NodeError(str(exc)) from None
        return config, self._trainer

    def _refund_unreleased(self, ledger: PrivacyLedger, release_tag: str | None = None, why: str = "") -> None:
        tags = [t for t in ledger.unreleased_tags if release_tag is None or t == release_tag]
        steps = ledger.refund_unreleased(release_tag)
        if steps:
            rounds = ", ".join(t[:12] for t in tags)
            self.progress(
                f"privacy ledger: refunded {steps} DP-SGD steps of round {rounds} {why or 'from before a restart'}"
                f" (that update never left this node); epsilon spent now {ledger.epsilon_spent:.2f}"
            )

    def _evaluate(self, trainer: LocalTrainer, vector: np.ndarray) -> Evaluation | None:
        trainer.set_adapter_vector(vector)
        return trainer.evaluate(self.data.heldout) if self.data.heldout else None

    def run(self) -> dict[str, Any]:
        """Follow the federation until it finishes; returns the final evaluation."""
        from fedmask.adapter.model import import_model_code

        from .training import train_adapter

        # Imported and rehearsed now, while no round waits: otherwise round 1 would, on its
        # critical path.
        import_model_code()
        rehearse_once()
        withdrawn = 0  # announced adapters not offered, in a row
        while True:
            task = self.get_task()
            joins_round = task.action in (fl.Task.TRAIN, fl.Task.CALIBRATE)
            pause = max(0.2, min(task.retry_after_s or 2.0, 10.0))
            if task.action == fl.Task.WAIT or (joins_round and self._already_in(task)):
                self.sleep(pause)
                continue
            try:
                if task.action == fl.Task.FINISHED:
                    return self._finish(task)
                if task.action == fl.Task.CALIBRATE:
                    self._calibrate_and_upload(task)
                elif task.action == fl.Task.TRAIN:
                    self._train_and_upload(task, train_adapter)
                else:
                    raise NodeError(f"unknown task action {task.action}")
            except AdapterWithdrawn as exc:
                # A coordinator that restarted while this node downloaded serves the adapter of
                # the task it publishes next; one that keeps announcing what it does not offer
                # would keep this node asking for ever.
                withdrawn += 1
                if withdrawn >= MAX_ADAPTER_WITHDRAWALS:
                    raise NodeError(f"{exc}, {withdrawn} times in a row; giving up") from None
                self.progress(f"{exc}; asking for the task again")
                self.sleep(pause)
                continue
            withdrawn = 0

    def _finish(self, task: fl.Task) -> dict[str, Any]:
        """The federation's final adapter, scored on this node's held-out split."""
        _, trainer = self._training(task)
        payload = self.download(task, trainer.spec)
        evaluation = self._evaluate(trainer, payload.vector)
        self.report(task.round, payload.round)
        accuracy = evaluation.accuracy if evaluation else None
        # Printed here only: the coordinator learns held-out results as sums, inside rounds.
        self.progress(f"federation finished; final adapter accuracy on my held-out split: {accuracy}")
        return {"accuracy": accuracy, "epsilon": self._ledger.epsilon_spent if self._ledger else 0.0}

    def _already_in(self, task: fl.Task) -> bool:
        """Whether this node has taken part in the task's round. A round it joined before a
        restart, whose update never entered the protocol (its charge was never released), may be
        tried once more: if the round has not started, it joins afresh (new keys, new update)."""
        from .ledger import PrivacyLedger

        round_id = task.round_id.hex()
        if round_id not in self.state.uploaded_round_ids:
            return False
        if round_id in self._rejoin_tried or PrivacyLedger.was_released(
            self.state_dir / "privacy_ledger.json", round_id
        ):
            return True
        self._rejoin_tried.add(round_id)
        self.state.uploaded_round_ids.remove(round_id)
        self.progress(f"round {task.round}: joined before a restart, update never sent; trying to rejoin")
        return False

    def _training_progress(self, round_number: int) -> Callable[[int, int, float], None]:
        """A DP-SGD step callback that says how far training is, at most every TRAINING_REPORT_S.
        The loss is not printed: it is a figure of the records, and this line may reach a log
        the coordinator's operator reads."""
        last = [self.clock()]

        def on_step(step: int, total: int, loss: float) -> None:
            now = self.clock()
            if now - last[0] >= TRAINING_REPORT_S and step < total:
                last[0] = now
                self.progress(f"round {round_number}: DP-SGD step {step}/{total}")

        return on_step

    def _train_and_upload(self, task: fl.Task, train_adapter: TrainAdapter) -> None:
        config, trainer = self._training(task)
        payload = self.download(task, trainer.spec)
        ledger = self._ledger
        assert ledger is not None  # ``_training`` opens it with the trainer
        encoding, noise_plan = parse_encoding(task.encoding_json, payload.vector.size, self.policy)
        before = self._evaluate(trainer, payload.vector)
        metrics = RoundMetrics(
            heldout_correct=round(before.accuracy * before.count) if before else 0,
            heldout_count=before.count if before else 0,
            heldout_loss_sum=before.loss * before.count if before else 0.0,
            train_records=len(self.data.train),
        )
        self.progress(f"round {task.round}/{task.total_rounds}: training on {len(self.data.train)} records")
        # Charged now, pending until the masked update is built: if it never is, it is refunded.
        release_tag = task.round_id.hex()
        with ledger.pending_release(release_tag):
            # The held-out split scores the global adapter (above, summed under masking), not the
            # local one: the upload waits for nothing the federation does not use.
            result = train_adapter(
                config,
                self.data,
                global_adapter_state=payload.vector,
                ledger=ledger,
                trainer=trainer,
                on_step=self._training_progress(task.round),
                score_heldout=False,
            )
        update = result.vector.astype(np.float64) - payload.vector.astype(np.float64)
        if noise_plan is None:
            encoded = encode(update, encoding, SystemRandom())
        else:
            encoded = ddp.encode_with_noise(update, noise_plan, rotation_seed(task.round_id), SystemRandom())
        self.report(task.round, payload.round)
        self.progress(f"round {task.round}: epsilon spent {ledger.epsilon_spent:.2f}; uploading")

        def input_for_round(start: RoundStart) -> ModularVector:
            if start.round_id != task.round_id:
                raise ValueError("the coordinator opened another round than the task announced")
            if noise_plan is not None and noise_plan.config.min_survivors > start.params.threshold:
                # The noise was sized for at least min_survivors shares in any sum; a round that
                # can complete with fewer would release a sum with less noise than promised.
                raise ValueError("the round's threshold is below the survivors the noise was calibrated for")
            vector = encoded
            if noise_plan is None:  # metrics ride along as sums (see fedmask.adapter.metrics)
                participants = len(start.participants)
                vector = np.concatenate([encoded, encode_metrics(metrics, encoding.modulus_bits, participants)])
            if start.params.dimension != vector.size or start.params.modulus_bits != encoding.modulus_bits:
                raise ValueError("the round's dimension or modulus does not match the encoded update")
            if release_tag in ledger.unreleased_tags:
                ledger.mark_released(release_tag)  # saved before the update enters the protocol
            return vector

        self._join(task, ledger, release_tag, input_for_round)

    def _still_current(self, task: fl.Task) -> bool:
        """Whether ``task`` is still what the coordinator asks for (it may have restarted and
        re-opened the round under a new id while this node was trying to join)."""
        current = self.get_task()
        return current.action == task.action and current.round_id == task.round_id

    def _join(
        self,
        task: fl.Task,
        ledger: PrivacyLedger,
        release_tag: str,
        input_for_round: Callable[[RoundStart], ModularVector],
    ) -> None:
        """Join the task's secure-aggregation round with what ``input_for_round`` masks; a charge
        under ``release_tag`` whose output never entered the protocol is refunded."""
        if not self._still_current(task):
            # The coordinator restarted or re-ran the round while this node trained: the update
            # belongs to a round that no longer exists. Drop it; the next task says what to do.
            self.progress(f"round {task.round}: the coordinator moved on while training; update discarded")
            self._refund_unreleased(ledger, release_tag, why="the coordinator abandoned")
            self.state.uploaded_round_ids.append(task.round_id.hex())
            self.state.save(self.state_dir / "node.json")
            return
        # Recorded before joining: a node that dies mid-round and restarts must not train again
        # for a round that has already begun without it (a pending charge is refunded instead).
        self.state.uploaded_round_ids.append(task.round_id.hex())
        self.state.last_round = task.round
        self.state.save(self.state_dir / "node.json")
        outcome = take_part(
            self.connection,
            self.identity,
            input_for_round,
            progress=self.progress,
            policy=self.policy,
            still_wanted=lambda: self._still_current(task),
        )
        if outcome.completed:
            self.progress(f"round {task.round}: secure aggregation completed")
        else:
            self.progress(f"round {task.round}: left the round: {outcome.reason}")
        # Left before its update was masked: nothing of it was released.
        self._refund_unreleased(ledger, release_tag, why="that ended before this node's upload")

    def _calibrate_and_upload(self, task: fl.Task) -> None:
        """The calibration round after the last training round: this node releases the noised
        calibration statistic of its training records under the final adapter (charged to its
        ledger, pending until masked) in place of an update (:mod:`fedmask.adapter.calibration`)."""
        from fedmask.adapter import calibration

        from .ledger import PrivacyBudgetExceeded

        config, trainer = self._training(task, plan_check=False)
        payload = self.download(task, trainer.spec)
        ledger = self._ledger
        assert ledger is not None  # ``_training`` opens it with the trainer
        if not trainer.calibrates:
            raise NodeError(
                "the coordinator asks for a calibration this participant's training settings and model do not plan"
            )
        encoding, noise_plan = parse_encoding(task.encoding_json, calibration.CALIBRATION_COORDINATES, self.policy)
        if noise_plan is not None:
            # The release is record-level DP only; under aggregate noise it would fall outside the
            # participant-level guarantee the federation announced.
            raise NodeError("the coordinator asks for a calibration release under aggregate noise; refused")
        trainer.set_adapter_vector(payload.vector)
        release_tag = task.round_id.hex()
        self.progress(f"calibration: scoring the final adapter on {len(self.data.train)} training records")
        try:
            with ledger.pending_release(release_tag):
                release = trainer.calibration_release(self.data.train, SystemRandom())
        except (PrivacyBudgetExceeded, calibration.CalibrationError) as exc:
            # Out of budget, or a ledger whose plan predates calibration (no reserve for it):
            # this node sits the round out; the others' releases still calibrate the model.
            self.progress(f"calibration: not taking part: {exc}")
            self.state.uploaded_round_ids.append(release_tag)
            self.state.save(self.state_dir / "node.json")
            self._rejoin_tried.add(release_tag)  # declined, not interrupted: no retry in this process
            return
        self.report(task.round, payload.round)
        self.progress(f"calibration: epsilon spent {ledger.epsilon_spent:.2f}; uploading")

        def input_for_round(start: RoundStart) -> ModularVector:
            if start.round_id != task.round_id:
                raise ValueError("the coordinator opened another round than the task announced")
            vector = calibration.encode_release(release, encoding.modulus_bits, len(start.participants))
            if start.params.dimension != vector.size or start.params.modulus_bits != encoding.modulus_bits:
                raise ValueError("the round's dimension or modulus does not match the calibration release")
            if release_tag in ledger.unreleased_tags:
                ledger.mark_released(release_tag)  # saved before the release enters the protocol
            return vector

        self._join(task, ledger, release_tag, input_for_round)
