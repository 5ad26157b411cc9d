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

For the operator (docs/operations.md): every progress line is a record of the
``fedmask.coordinator`` logger (``coordinator/observability.py``); ``STATE/status.json`` says what
is happening now (``coordinator/status.py``); the rounds, drops, aborts, durations and reported
epsilons are counted in Prometheus series (``coordinator/metrics.py``). With a ``roster_loader``
the CA-signed roster is reloaded before every attempt, so ``fedmask pki revoke`` and ``issue``
take effect at the next round: a revoked participant is never selected again, and its calls are
refused. ``request_stop`` (SIGTERM/SIGINT, ``fedmask coordinator stop``) finishes the attempt in
progress and then stops, or aborts it at once; either way a stopped coordinator leaves the
current round open, to be run again when it restarts on the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
import numpy as np
import numpy.typing as npt

from fedmask import ddp, pki
from fedmask.adapter import calibration
from fedmask.adapter import payload as adapter_payload
from fedmask.adapter.metrics import METRIC_COORDINATES, RoundMetrics, decode_metrics
from fedmask.coordinator.config import FederationConfig, FederationError
from fedmask.coordinator.service import CHUNK_BYTES, FederationService
from fedmask.ddp.accounting import DistributedDPAccountant, NoiseRecord
from fedmask.ddp.rotation import rotation_seed
from fedmask.proto.fl.v1 import fl_pb2 as fl
from fedmask.proto.fl.v1 import fl_pb2_grpc as fl_grpc
from fedmask.secagg.encoding import ImplausibleSum, decode_checked_sum
from fedmask.secagg.errors import DropKind
from fedmask.secagg.params import EncodingParams, ProtocolParams

from .abort_kinds import AttemptAbort
from .metrics import FederationMetrics, MetricsEndpoint
from .observability import PROGRESS_LOGGER, progress_to_log
from .round_server import CoordinatorServer, MessageLimits, RoundConfig, RoundOutcome, ServerSettings, new_round_id
from .service import ParticipantReport
from .status import (
    DEFAULT_HEARTBEAT_S,
    LIVE_STANDINGS,
    CoordinatorState,
    CoordinatorStatus,
    ParticipantStatus,
    RoundStatus,
    StatusWriter,
    StopRequest,
    process_started_at,
    status_path,
    stop_request_path,
    take_stop_request,
)
from .store import StoreError
from .transport import Authenticator, MtlsAuthenticator, ServerSecurity

if TYPE_CHECKING:
    from .aggregation import ServerOptimizer

Progress = Callable[[str], None]
# The adapter's layout (``fedmask.adapter.vector.VectorSpec.to_json()``).
Layout = list[dict[str, object]]
# Loads the CA-signed roster afresh (``pki.load_roster`` on the federation directory).
RosterLoader = Callable[[], pki.Roster]

# ``coordinator run`` exit statuses.
EXIT_FINISHED = 0
EXIT_ERROR = 1  # an error outside the federation's own rules (a disk, a bug): the one-line error says which
EXIT_FAILED = 3  # the federation could not go on (FederationError)
EXIT_STOPPED = 4  # stopped by the operator before the last round; restart on the same state to resume
# While revocations leave too few participants for a round, how often to look at the roster again.
ROSTER_POLL_S = 5.0


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
    calibration: dict[str, Any] | None = None  # the calibration round's solution (fedmask.adapter.calibration)


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


class StoppedByOperator(Exception):
    """The operator stopped the coordinator before the round could finish; it stays open."""


class LiveAuthenticator:
    """The transport's authenticator with a roster that can be replaced between rounds (mutual
    TLS checks each peer certificate against the roster; tokens are looked up on disk at every
    call, so ``pki revoke`` already removes them; insecure mode trusts names, and the service
    and round selection refuse revoked ones)."""

    def __init__(self, inner: Authenticator) -> None:
        self._inner = inner

    @property
    def description(self) -> str:
        return self._inner.description

    def identify(self, context: grpc.ServicerContext) -> str:
        return self._inner.identify(context)

    def use_roster(self, roster: pki.Roster) -> None:
        if isinstance(self._inner, MtlsAuthenticator):
            self._inner = dataclasses.replace(self._inner, roster=roster)


def roster_changes(old: pki.Roster | None, new: pki.Roster, participants: tuple[str, ...]) -> list[str]:
    """What a reloaded roster changes for this federation, one line per participant."""
    before = dict(old.entries) if old is not None else {}
    after = dict(new.entries)
    header = f"roster reloaded: version {old.version if old is not None else '?'} -> {new.version}"
    lines = []
    for name in sorted(set(before) - set(after)):
        what = "not selected from the next round on" if name in participants else "not a participant here"
        lines.append(f"{name} was revoked (removed from the roster): {what}")
    for name in sorted(set(after) - set(before)):
        what = "selected again from the next round on" if name in participants else "not a participant here"
        lines.append(f"{name} was added to the roster: {what}")
    for name in sorted(set(before) & set(after)):
        if before[name].tls_cert_sha256 != after[name].tls_cert_sha256:
            lines.append(f"{name} was re-issued (a new certificate; the old one is refused)")
        elif before[name].identity_public_key != after[name].identity_public_key:
            lines.append(f"{name} has a new identity key")
    return [header + (f": {len(lines)} change(s)" if lines else ": no change for this federation"), *lines]


def _previously_selected(state_dir: Path) -> set[str]:
    """Everyone selected for a round of the federation already in ``state_dir`` (none if there
    is none): a config participant missing from the roster but in here was revoked."""
    from .store import FederationStore, StoreError

    database = state_dir / "federation.db"
    if not database.is_file():
        return set()
    try:
        with FederationStore(database, read_only=True) as store:
            return {name for record in store.rounds() for name in record.selected}
    except StoreError:
        return set()  # the writable open below says what is wrong with it


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
        roster_loader: RosterLoader | None = None,
        metrics: FederationMetrics | None = None,
        metrics_endpoint: tuple[str, int] | None = None,
        dashboard_url: str | None = None,
        log_file: Path | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        handle_signals: bool = False,
    ) -> None:
        """``progress`` receives every progress line (as well as the ``fedmask.coordinator``
        logger). ``roster_loader`` reloads the CA-signed roster before each attempt (without it
        the roster in ``security`` stays as it was). ``metrics_endpoint`` (host, port) serves
        ``/metrics`` while the federation runs; ``dashboard_url``, where the caller serves the
        dashboard (``fedmask.coordinator.dashboard``), goes into the status. ``handle_signals``:
        SIGTERM and SIGINT stop the coordinator cleanly (``request_stop``); only for the main
        thread of a process."""
        from .store import FederationStore

        state_dir = Path(state_dir)
        if security.roster is not None:
            outside = set(config.participants) - set(security.roster.entries)
            # One selected before and missing now was revoked: it is simply not selected again.
            revoked = outside & _previously_selected(state_dir)
            if outside - revoked:  # refused before anything is written: a round would wait in vain
                raise FederationError(
                    f"participants not in the CA-signed roster: {', '.join(sorted(outside - revoked))} "
                    "(issue their certificates first, or remove them from the config)"
                )
            self._revoked_at_start = sorted(revoked)
        else:
            self._revoked_at_start = []
        self.config = config
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._authenticator = LiveAuthenticator(security.authenticator)
        self.security = dataclasses.replace(security, authenticator=self._authenticator)
        self.roster = security.roster
        self._roster_loader = roster_loader
        # Every organisation a roster has named, kept after a revocation for the operator's view.
        self._organisations = dict(self.roster.organisations()) if self.roster is not None else {}
        self.settings = settings or ServerSettings()
        self._round_status: RoundStatus | None = None
        self._status_writer: StatusWriter | None = None
        # Each progress line is logged, handed to ``progress``, and refreshes the status file.
        self._log_progress = progress_to_log(logging.getLogger(PROGRESS_LOGGER), also=progress, fields=self._log_fields)
        self.identity_keys = dict(identity_keys or {})
        self.store = FederationStore(self.state_dir / "federation.db")
        self.store.initialise(config.to_json(), allow_config_change=allow_config_change)
        self.federation_id = self.store.federation_id()
        self._initial = initial
        self.service = FederationService(
            config, self._authenticator, progress=self.progress, on_report=self._report_arrived
        )
        if self.roster is not None:
            self.service.roster_names = frozenset(self.roster.entries)
        self.server: CoordinatorServer | None = None
        self.metrics = metrics or FederationMetrics()
        self.metrics.rounds_total.set(config.rounds)
        self._metrics_endpoint_address = metrics_endpoint
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.dashboard_url = dashboard_url
        # Absolute: `coordinator logs` reads it from the status file, maybe from another directory.
        self._log_file = log_file.absolute() if log_file is not None else None
        self._heartbeat_s = heartbeat_s
        self._handle_signals = handle_signals
        # The operator's view: what is happening now (status.json) and how the run ended.
        self._state: CoordinatorState = "starting"
        self._last_event: str | None = None
        self._last_committed = self._committed_facts()
        self._excluded = self.store.exclusions()
        self._started_at = time.time()
        self._process_started_at = process_started_at(os.getpid()) or 0.0
        self._listening: str | None = None
        # Stopping: what was asked, and an event the waits watch ("now" also cancels the round).
        self.stop_request: StopRequest | None = None
        self._stop_asked = asyncio.Event()
        self._abort_now = asyncio.Event()
        self.exit_code: int | None = None
        self.exit_message: str | None = None

    def progress(self, line: str) -> None:
        """Report a step of the federation: to the log, the caller's ``progress``, the status."""
        self._log_progress(line)
        self._publish_status(line)

    async def run(self) -> list[dict[str, Any]]:
        """Run every remaining round; returns the ledger. Stopped by the operator, it returns
        early (``stop_request`` says how) with the current round left open."""
        self._status_writer = StatusWriter(status_path(self.state_dir))
        self._discard_stale_stop_request()
        self._publish_status("starting")
        heartbeat = asyncio.create_task(self._heartbeat())
        self._install_signal_handlers()
        error: BaseException | None = None
        try:
            return await self._run()
        except BaseException as exc:
            error = exc
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._remove_signal_handlers()
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.close()
            self._finish_status(error)

    async def _run(self) -> list[dict[str, Any]]:
        config = self.config
        vector, layout, _last_committed, optimizer = self._resume()
        self.noise_plan = config.noise_plan(vector.size)
        self._has_head_bias = calibration.has_head_bias(layout)  # a head without bias: nothing to calibrate
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
        if self._metrics_endpoint_address is not None:
            self.metrics_endpoint = self.metrics.serve(*self._metrics_endpoint_address)
            self.progress(f"metrics on {self.metrics_endpoint.url}")
        if self.dashboard_url is not None:
            self.progress(f"dashboard on {self.dashboard_url}")
        port = await self.server.start()
        self._listening = f"{self.settings.host}:{port}"
        self._state = "running"
        self.progress(f"listening on {self.settings.host}:{port}")  # each line already says "coordinator:"
        if self._revoked_at_start:
            self.progress(f"not in the roster (revoked), so not selected: {', '.join(self._revoked_at_start)}")
        try:
            # A failed round is history: the next is the one after the last finished (or the
            # interrupted one), not the one after the last committed.
            for round_number in range(self.store.next_round_number(), config.rounds + 1):
                if self.stop_request is not None:
                    break
                try:
                    vector = await self._run_round(round_number, vector, layout, params, optimizer)
                except RoundFailed as exc:
                    self.progress(f"round {round_number} failed ({exc}); the global adapter stays as it was")
                except StoppedByOperator as exc:
                    self.progress(str(exc))
                    break
                finally:
                    self._round_status = None
            if self._calibration_due() and self.stop_request is None:
                vector = await self._calibrate(config.rounds + 1, vector, layout, optimizer)
            if self.store.next_round_number() <= config.rounds or self._calibration_due():  # stopped before the end
                last = self.store.last_committed()
                adapter = adapter_payload.pack(vector, layout, last.round_number if last else 0)
                self.service.publish(fl.Task.WAIT, self.store.next_round_number(), b"", adapter)
                return self.store.ledger()
            last = self.store.last_committed()
            final = adapter_payload.pack(vector, layout, last.round_number if last else 0)
            self.service.publish(fl.Task.FINISHED, final.round, b"", final)
            self.progress(f"federation finished after {config.rounds} rounds; waiting for final reports")
            self._state = "finishing"
            await self._wait_final_reports()
        finally:
            await self.server.stop()
        return self.store.ledger()

    def _calibration_due(self) -> bool:
        """Whether the calibration round is next: it follows the training rounds once, if one of
        them committed (a failed calibration round is history, like a failed training round)."""
        trained = self.store.last_committed()
        return (
            self.config.calibration_round is not None
            and self._has_head_bias
            and self.store.next_round_number() == self.config.calibration_round
            and trained is not None
            and trained.round_number > 0
        )

    async def _calibrate(
        self, round_number: int, vector: npt.NDArray[np.float32], layout: Layout, optimizer: ServerOptimizer
    ) -> npt.NDArray[np.float32]:
        """The calibration round: the participants' noised calibration statistics of the final
        adapter, summed under secure aggregation, move the head's decision threshold
        (``fedmask.adapter.calibration``). A failed calibration leaves the adapter as it is."""
        params = self.config.protocol_params(dimension=calibration.CALIBRATION_COORDINATES)
        try:
            return await self._run_round(round_number, vector, layout, params, optimizer, calibrating=True)
        except RoundFailed as exc:
            self.progress(f"calibration failed ({exc}); the final adapter keeps its decision threshold")
        except StoppedByOperator as exc:
            self.progress(str(exc))
        finally:
            self._round_status = None
        return vector

    def _resume(self) -> tuple[npt.NDArray[np.float32], Layout, int, ServerOptimizer]:
        """The global adapter to go on from, the last committed round, and the optimizer."""
        from .aggregation import server_optimizer_from_config

        store = self.store
        # Every committed checkpoint, not only the one resumed from: an older one is what a
        # restore or an audit of the federation's history needs, and finding it gone months later
        # is too late. Sizes only (cheap); `coordinator verify` re-hashes them.
        problems = store.check_files()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StoreError(
                f"committed checkpoint missing or damaged: {problems[0]}{more}; the store is left as it is. "
                f"Run `fedmask coordinator verify --state {self.state_dir}`, then put the files back from your "
                "copy of federation.checkpoints/ (docs/durability.md, Recovery)"
            )
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
        optimizer = server_optimizer_from_config(self.config.server_optimizer_config())
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

    async def _run_round(
        self,
        round_number: int,
        vector: npt.NDArray[np.float32],
        layout: Layout,
        params: ProtocolParams,
        optimizer: ServerOptimizer,
        *,
        calibrating: bool = False,
    ) -> npt.NDArray[np.float32]:
        """One federated round (or, ``calibrating``, the calibration round), re-run (new round id)
        after an abort or a refused sum, at most ``attempts_per_round`` times. A participant proven
        to misbehave is excluded for good (recorded in the store); one accused that did not answer
        sits out the re-runs."""
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
        retry, begun = True, False
        self.metrics.current_round.set(round_number)
        for attempt in range(1, config.attempts_per_round + 1):
            if self.stop_request is not None:
                # A stop lets the attempt in progress finish but starts no other.
                self._abandon_round(round_number, adapter, "no further attempt is started")
            self._reload_roster()
            selected = await self._selectable(round_number, attempt, excluded, skipped, params.threshold, adapter)
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
                self.metrics.record_attempt(
                    join_s=0.0, phase_s={}, drop_kinds={}, bytes_received={}, abort_kind=AttemptAbort.TOO_FEW_SELECTABLE
                )
                break
            self.store.begin_round(round_number, round_id, list(selected))
            begun = True
            self.service.excluded = dict(excluded)
            action = fl.Task.CALIBRATE if calibrating else fl.Task.TRAIN
            self.service.publish(action, round_number, round_id, adapter)
            now = time.time()
            self._round_status = RoundStatus(round_number, attempt, "join", now, now, list(selected))
            self.progress(
                f"{_round_name(round_number, config.rounds)} (attempt {attempt}): "
                f"{'calibration' if calibrating else 'training'} task published"
            )
            outcome = await self._attempt(server, round_config, round_number, attempt, adapter)
            for name, why in outcome.culprits.items():
                self.store.exclude(name, round_number, round_id, why)
                excluded[name] = f"round {round_number}: {why}"
                self.progress(f"{name} is excluded from the federation: it {why}")
            self._excluded = dict(excluded)
            for name, why in outcome.suspects.items():
                skipped[name] = why
                self.progress(f"{name} sits out the re-runs of round {round_number}: it {why}")
            if outcome.completed:
                self._set_phase("decode")
                try:
                    decoded = (
                        self._decode_calibration(outcome, encoding)
                        if calibrating
                        else self._decode(outcome, round_id, encoding)
                    )
                    self.metrics.record_attempt(
                        join_s=outcome.join_s,
                        phase_s=outcome.phase_s,
                        drop_kinds=self._all_drop_kinds(outcome),
                        bytes_received=outcome.bytes_received,
                        abort_kind=None,
                    )
                    break
                except (ImplausibleSum, ddp.WrapAroundDetected) as exc:
                    reason, kind = f"the sum was refused: {exc}", AttemptAbort.IMPLAUSIBLE_SUM
                except calibration.CalibrationError as exc:
                    # An honest sum with nothing to calibrate: running again would only spend more.
                    reason, kind, retry = f"calibration: {exc}", AttemptAbort.CALIBRATION, False
            else:
                # The round stays open: the next attempt re-runs it with a new round id.
                reason = f"{outcome.abort_phase.value if outcome.abort_phase else 'join'}: {outcome.abort_reason}"
                kind = outcome.abort_kind or AttemptAbort.OTHER
            self.metrics.record_attempt(
                join_s=outcome.join_s,
                phase_s=outcome.phase_s,
                drop_kinds=self._all_drop_kinds(outcome),
                bytes_received=outcome.bytes_received,
                abort_kind=kind,
            )
            self.progress(f"round {round_number} attempt {attempt} aborted ({reason})")
            if not retry:
                break
        if decoded is None:
            if not begun:  # no attempt could start: the round is still recorded, as failed
                self.store.begin_round(round_number, new_round_id(), list(selected or config.participants))
            self.store.fail_round(round_number, reason)
            self.service.publish(fl.Task.WAIT, round_number, b"", adapter)
            self.metrics.record_failed(wall_s=time.monotonic() - started)
            raise RoundFailed(f"every attempt failed; last: {reason}")
        self._set_phase("commit")
        self.service.publish(fl.Task.WAIT, round_number, b"", adapter)
        survivors = list(outcome.survivors)
        solved: calibration.Calibration | None = None
        if isinstance(decoded, calibration.Calibration):
            solved = decoded
            new_vector = calibration.shifted(vector, layout, solved.shift).astype(np.float32)
            mean_update, noise_record, metrics = new_vector.astype(np.float64) - vector, None, None
        else:
            mean_update, noise_record, metrics = decoded
            if noise_record is not None:
                self.accountant.step(noise_record)
            new_vector = optimizer.apply(vector.astype(np.float64), mean_update).astype(np.float32)
        record = self._record(round_number, outcome, attempt, mean_update, time.monotonic() - started, metrics)
        record.calibration = solved.as_dict() if solved is not None else None
        record.noise_record = asdict(noise_record) if noise_record else None
        record.participant_epsilon = self.accountant.get_epsilon() if noise_record else None
        ref = self.store.save_checkpoint(round_number, new_vector, layout, optimizer.state_dict())
        ledger_record = self.store.commit_round(round_number, ref, self._ledger_entry(record, encoding))
        self.service.forget_reports_through(round_number)
        self._last_committed = {"round": round_number, "at": ledger_record["finished_at"]}
        self.metrics.record_committed(
            wall_s=time.monotonic() - started, survivors=len(survivors), selected=len(outcome.participants)
        )
        if solved is not None:
            self.progress(
                f"calibration: the decision margin moves by {solved.shift:+.3f}"
                + (" (clamped: the release is mostly noise)" if solved.clamped else "")
                + f" (noised: {solved.positives:.0f} positives among {solved.records:.0f} training records)"
            )
        self.progress(
            f"{_round_name(round_number, config.rounds)} committed: survivors {', '.join(survivors)}"
            + (f"; dropped {', '.join(outcome.dropped)}" if outcome.dropped else "")
            + f"; epsilon {_fmt(record.epsilon)}"
            + (
                f"; participant-level epsilon {record.participant_epsilon:.3f}"
                if record.participant_epsilon is not None
                else ""
            )
        )
        return new_vector

    async def _attempt(
        self,
        server: CoordinatorServer,
        round_config: RoundConfig,
        round_number: int,
        attempt: int,
        adapter: adapter_payload.AdapterPayload,
    ) -> RoundOutcome:
        """One secure-aggregation round, cancelled when the operator asks to abort now."""
        round_task = asyncio.ensure_future(server.run_round(round_config))
        abort_wait = asyncio.ensure_future(self._abort_now.wait())
        try:
            await asyncio.wait({round_task, abort_wait}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            round_task.cancel()  # the federation itself is being cancelled: take the round down too
            raise
        finally:
            abort_wait.cancel()
        if round_task.done():
            return round_task.result()
        # Cancelled, the round tells every participant it is over (RoundRunner.run).
        round_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await round_task
        self.metrics.record_attempt(
            join_s=0.0, phase_s={}, drop_kinds={}, bytes_received={}, abort_kind=AttemptAbort.OPERATOR
        )
        self._abandon_round(round_number, adapter, f"attempt {attempt} was aborted")

    def _abandon_round(self, round_number: int, adapter: adapter_payload.AdapterPayload, what: str) -> NoReturn:
        """Stop in the middle of a round: participants are told to wait, the round stays open."""
        self.service.publish(fl.Task.WAIT, round_number, b"", adapter)
        request = self.stop_request
        why = f" ({request.reason})" if request is not None and request.reason else ""
        raise StoppedByOperator(
            f"round {round_number}: {what} on the operator's request{why}; the round stays open and "
            "runs again when the coordinator restarts on the same state"
        )

    async def _selectable(
        self,
        round_number: int,
        attempt: int,
        excluded: Mapping[str, str],
        skipped: Mapping[str, str],
        threshold: int,
        adapter: adapter_payload.AdapterPayload,
    ) -> tuple[str, ...]:
        """Who may be selected: the config's participants, less those excluded, sitting out, or
        not in the roster. While revocations alone leave fewer than ``threshold``, wait for the
        roster to change (or a stop) rather than fail every remaining round at once."""
        announced = False
        while True:
            eligible = [p for p in self.config.participants if p not in excluded and p not in skipped]
            selected = tuple(p for p in eligible if self.roster is None or p in self.roster.entries)
            if len(selected) >= threshold or len(eligible) < threshold:
                return selected
            if not announced:
                self._round_status = RoundStatus(
                    round_number, attempt, "waiting for roster", time.time(), time.time(), list(selected)
                )
                self.progress(
                    f"WARNING: round {round_number} cannot start: only {len(selected)} of the participants are in "
                    f"the roster (threshold {threshold}); waiting for certificates to be issued (fedmask pki issue) "
                    "or a stop"
                )
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_asked.wait(), ROSTER_POLL_S)
            if self.stop_request is not None:
                self._abandon_round(round_number, adapter, "it had not started")
            self._reload_roster()

    def _reload_roster(self) -> None:
        """Take up the roster as it is on disk now: revocations, re-issues and additions count
        from this attempt on. An unreadable roster, or one older than the one in use (a replay
        that would re-admit someone revoked), is refused and the current one kept."""
        if self._roster_loader is None:
            return
        current = self.roster
        try:
            loaded = self._roster_loader()
        except (pki.PkiError, OSError) as exc:
            self.progress(f"WARNING: the roster could not be reloaded ({exc}); keeping the one in use")
            return
        if current is not None and loaded.fingerprint() == current.fingerprint():
            return
        if current is not None and loaded.version < current.version:
            self.progress(
                f"WARNING: the roster on disk is version {loaded.version}, older than version {current.version} "
                "in use; keeping the one in use"
            )
            return
        for line in roster_changes(current, loaded, self.config.participants):
            self.progress(line)
        self.roster = loaded
        self._organisations.update(loaded.organisations())
        self._authenticator.use_roster(loaded)
        self.service.roster_names = frozenset(loaded.entries)
        self.identity_keys = dict(loaded.identity_keys)

    @staticmethod
    def _all_dropped(outcome: RoundOutcome) -> dict[str, str]:
        """Everyone selected and not a survivor, with why (one that never joined dropped too)."""
        if outcome.completed:
            return {
                name: outcome.dropped.get(name, "did not take part")
                for name in outcome.participants
                if name not in outcome.survivors
            }
        return dict(outcome.dropped)

    @staticmethod
    def _all_drop_kinds(outcome: RoundOutcome) -> dict[str, DropKind]:
        """The participants of ``_all_dropped``, with why as data."""
        if outcome.completed:
            return {
                name: outcome.drop_kinds.get(name, DropKind.NOT_JOINED)
                for name in outcome.participants
                if name not in outcome.survivors
            }
        return dict(outcome.drop_kinds)

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

    def _decode_calibration(self, outcome: RoundOutcome, encoding: EncodingParams) -> calibration.Calibration:
        """The shift solved from the survivors' summed calibration releases; refuses a sum no
        honest releases produce (``ImplausibleSum``) or one with nothing to calibrate."""
        if outcome.result is None:
            raise RuntimeError("a completed round without a sum")
        total = calibration.decode_release(
            outcome.result, encoding.modulus_bits, len(outcome.participants), len(outcome.survivors)
        )
        return calibration.solve_shift(total)

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
            dropped=self._all_dropped(outcome),
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
                "calibration": record.calibration,
                "aggregate_delta": self.config.aggregate_delta if record.noise_record else None,
            },
        }

    async def _wait_final_reports(self) -> None:
        """Until every participant still in the federation (in the roster, not excluded) has sent
        its final report, ``final_report_wait_s`` passed, or the operator asked to stop."""
        expected = {
            name
            for name in self.config.participants
            if name not in self._excluded and (self.roster is None or name in self.roster.entries)
        }
        deadline = time.monotonic() + self.config.final_report_wait_s
        while not expected <= set(self.service.final_reports):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stop_request is not None:
                missing = sorted(expected - set(self.service.final_reports))
                self.progress(f"no final report from {', '.join(missing)}")
                return
            self.service.report_arrived.clear()
            waits = [
                asyncio.ensure_future(self.service.report_arrived.wait()),
                asyncio.ensure_future(self._stop_asked.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

    # --- the operator's view and controls ------------------------------------------------------

    def request_stop(self, request: StopRequest) -> None:
        """Stop the federation (call on the event loop's thread): ``after-round`` lets the attempt
        in progress finish (a committed round stays committed) and starts no other; ``now``
        aborts it at once, telling every participant. Either way the coordinator then exits and
        the current round stays open, to run again on restart. A ``now`` after an
        ``after-round`` escalates; anything else repeats what was asked."""
        current = self.stop_request
        if current is not None and (current.mode == "now" or request.mode == current.mode):
            return
        if current is not None and request.reason is None:
            request = dataclasses.replace(request, reason=current.reason)  # escalated: the why still holds
        round_status = self._round_status
        idle = round_status is not None and request.mode == "after-round" and not self._work_in_flight(round_status)
        if idle:
            # Nobody has the task yet: "finish the round" would wait out the join timeout for nothing.
            request = dataclasses.replace(request, mode="now")
        self.stop_request = request
        self._stop_asked.set()
        why = f" ({request.reason})" if request.reason else ""
        if request.mode == "now":
            self._abort_now.set()
        if round_status is None:
            self.progress(f"stop requested: stopping before the next round{why}")
        elif idle:
            self.progress(
                f"stop requested: no participant is at work on round {round_status.number}: stopping now{why}"
            )
        elif request.mode == "now":
            self.progress(f"stop requested: aborting round {round_status.number} now{why}")
        else:
            self.progress(
                f"stop requested: finishing the attempt of round {round_status.number} in progress, then stopping"
                f"{why}; `fedmask coordinator stop --now` aborts it at once"
            )
        self._state = "stopping"
        self._publish_status()

    def _work_in_flight(self, round_status: RoundStatus) -> bool:
        """Whether a participant has fetched this attempt's task (it may be training) or
        connected to its round: then a graceful stop lets the attempt finish."""
        if round_status.phase != "join":
            return True
        standing = self.server.round_roster() if self.server is not None else round_status.standing
        if any(state != "waiting" for state in standing.values()):
            return True
        return any(self.service.last_seen.get(name, 0.0) >= round_status.opened_at for name in round_status.selected)

    def _on_signal(self, name: str) -> None:
        """SIGTERM/SIGINT: what ``fedmask coordinator stop`` asked for (its request file), or,
        without one, finish the round -- and abort it at the second signal."""
        request = take_stop_request(self.state_dir)
        if request is None:
            first = self.stop_request is None
            # A repeated signal escalates and keeps the reason given first.
            request = StopRequest(
                "after-round" if first else "now", f"{name} received" if first else None, requested_by=0
            )
        self.request_stop(request)

    def _install_signal_handlers(self) -> None:
        if not self._handle_signals:
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signal.Signals(signum).name)

    def _remove_signal_handlers(self) -> None:
        if not self._handle_signals:
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    def _discard_stale_stop_request(self) -> None:
        """A stop request left from before this start was meant for a coordinator that is gone."""
        if stop_request_path(self.state_dir).exists():
            stale = take_stop_request(self.state_dir)
            if stale is not None:
                self.progress(f"removed a stop request left from an earlier run ({stale.describe()})")

    async def _heartbeat(self) -> None:
        """Rewrite the status every ``heartbeat_s`` (proof the event loop serves), and pick up a
        stop request whose signal did not arrive (e.g. sent by a user not allowed to signal)."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            if stop_request_path(self.state_dir).exists():
                request = take_stop_request(self.state_dir)
                if request is not None:
                    self.request_stop(request)
            self._publish_status()

    def _report_arrived(self, report: ParticipantReport) -> None:
        self.metrics.record_epsilon(report.name, report.epsilon)
        self._publish_status()

    def _set_phase(self, phase: str) -> None:
        if self._round_status is not None and self._round_status.phase != phase:
            self._round_status.phase = phase
            self._round_status.phase_since = time.time()
        self._publish_status()

    def _log_fields(self) -> dict[str, Any]:
        """The structured fields of a progress record (JSON logs): the round, attempt and phase."""
        current = self._round_status
        if current is None:
            return {}
        phase = self.server.round_phase() if self.server is not None else None
        return {"round": current.number, "attempt": current.attempt, "phase": phase or current.phase}

    def _committed_facts(self) -> dict[str, Any] | None:
        """The last committed round and when (from the store)."""
        committed = [r for r in self.store.rounds() if r.state.value == "committed"]
        if not committed:
            return None
        return {"round": committed[-1].round_number, "at": committed[-1].finished_at}

    def _participants_status(self, standing: Mapping[str, str], now: float) -> dict[str, ParticipantStatus]:
        roster = self.roster
        participants = {}
        for name in self.config.participants:
            if standing.get(name) in LIVE_STANDINGS:  # a secure-aggregation stream is open
                self.service.last_seen[name] = now
            reported = self.service.latest_epsilon.get(name)
            participants[name] = ParticipantStatus(
                name=name,
                organisation=self._organisations.get(name),
                in_roster=roster is None or name in roster.entries,
                excluded=self._excluded.get(name),
                last_seen=self.service.last_seen.get(name),
                epsilon=reported[1] if reported else None,
                epsilon_round=reported[0] if reported else None,
            )
        return participants

    def _publish_status(self, event: str | None = None) -> None:
        """Hand the current status to the writer thread (it never waits for the disk)."""
        writer = self._status_writer
        if writer is None:
            return
        if event is not None:
            self._last_event = event
        now = time.time()
        round_status = self._round_status
        standing: dict[str, str] = {}
        if round_status is not None and self.server is not None:
            standing = self.server.round_roster()
            if standing:
                round_status.standing = standing
                phase = self.server.round_phase()
                if phase is not None and phase != round_status.phase:
                    round_status.phase, round_status.phase_since = phase, now
        request = self.stop_request
        status = CoordinatorStatus(
            pid=os.getpid(),
            pid_started_at=self._process_started_at,
            started_at=self._started_at,
            heartbeat_at=now,
            heartbeat_interval_s=self._heartbeat_s,
            state=self._state,
            rounds_total=self.config.rounds,
            federation_id=self.federation_id,
            listening=self._listening,
            metrics_url=self.metrics_endpoint.url if self.metrics_endpoint is not None else None,
            dashboard_url=self.dashboard_url,
            log_file=str(self._log_file) if self._log_file is not None else None,
            roster_version=self.roster.version if self.roster is not None else None,
            round=dataclasses.replace(
                round_status, standing=dict(round_status.standing), selected=list(round_status.selected)
            )
            if round_status
            else None,
            last_committed=self._last_committed,
            participants=self._participants_status(standing, now),
            stop_request={"mode": request.mode, "reason": request.reason, "at": request.requested_at}
            if request
            else None,
            exit={"code": self.exit_code, "message": self.exit_message} if self.exit_code is not None else None,
            last_event=self._last_event,
        )
        writer.publish(status.to_json())

    def _finish_status(self, error: BaseException | None) -> None:
        """How the run ended, in the status file (read by ``fedmask coordinator stop``/``status``)."""
        if self.exit_code is None:
            try:
                next_round = self.store.next_round_number()
            except (StoreError, sqlite3.Error, OSError):
                next_round = 0  # the store is what failed: the error says so
            if isinstance(error, asyncio.CancelledError):
                self._state, self.exit_code = "stopped", EXIT_STOPPED
                self.exit_message = f"cancelled; restart with the same --state to resume at round {next_round}"
            elif error is not None:
                self._state = "failed"
                self.exit_code = EXIT_FAILED if isinstance(error, FederationError) else EXIT_ERROR
                self.exit_message = f"stopped by an error: {' '.join(str(error).split()) or type(error).__name__}"
            elif next_round <= self.config.rounds:
                self._state, self.exit_code = "stopped", EXIT_STOPPED
                request = self.stop_request
                why = f" ({request.reason})" if request is not None and request.reason else ""
                committed = self._last_committed
                self.exit_message = (
                    f"stopped on the operator's request{why}"
                    + (f" after committing round {committed['round']}" if committed else "")
                    + f"; restart with the same --state to resume at round {next_round}"
                )
            else:
                self._state, self.exit_code = "finished", EXIT_FINISHED
                self.exit_message = f"finished: {self.config.rounds} round(s) run"
        self._round_status = None
        self._publish_status(self.exit_message)
        if self._status_writer is not None:
            self._status_writer.close()


def _round_name(round_number: int, rounds: int) -> str:
    return f"round {round_number}/{rounds}" if round_number <= rounds else "calibration round"


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in values.items()) or "not reported"
