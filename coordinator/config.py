"""A federation run's settings (``FederationConfig``), validated at start-up and stored with the
run; what follows from them (encoding, noise plan, protocol parameters).
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmask import ddp
from fedmask.secagg.errors import ParameterError
from fedmask.secagg.params import EncodingParams, ProtocolParams, SecurityMode, default_threshold

if TYPE_CHECKING:
    from fedmask.adapter.config import TrainingConfig

SERVER_OPTIMIZERS = ("fedavg", "fedadam")
# Each round spends a share of every participant's budget planned for all of them: beyond this,
# a round's share is noise, and round numbers outgrow what the store and the wire carry.
MAX_ROUNDS = 10_000


class FederationError(ValueError):
    """A federation setting is invalid, or the federation cannot go on (with the reason)."""


@dataclass(frozen=True)
class FederationConfig:
    """Everything a federation run is: validated at start-up and stored with the run.

    ``training`` holds ``participant.training.TrainingConfig`` fields (model, mode, target
    epsilon and delta, local epochs or steps, learning rate, batch size, sequence length); the
    participants validate it again on their side. ``clip_norm`` bounds the L2 norm of each
    participant's update (local - global) before encoding; ``scale`` ``None`` picks the largest
    power of two that cannot wrap mod 2^modulus_bits for this many participants.
    """

    participants: tuple[str, ...]
    rounds: int = 3
    training: Mapping[str, Any] = field(default_factory=dict)
    clip_norm: float = 5.0
    scale: float | None = None
    modulus_bits: int = 32
    threshold: int | None = None
    security_mode: str = SecurityMode.MALICIOUS.value
    server_optimizer: str = "fedavg"
    server_learning_rate: float = 1.0
    join_timeout_s: float = 900.0  # from a TRAIN task to the round start: local training fits in it
    phase_timeout_s: float = 60.0
    # Once the threshold has joined, how long to wait for the rest (None: until join_timeout_s).
    # Long enough for a slower machine's training, short enough that one absent party cannot
    # hold a round for the whole join timeout. (A party whose stream ends is not waited for.)
    quorum_grace_s: float | None = 300.0
    attempts_per_round: int = 3
    # Rounds of local training the participants' DP budget is planned for beyond ``rounds``: a
    # round re-run after an abort or a coordinator restart makes them train again.
    spare_rounds: int = 1
    # Participant-level DP against the coordinator: each participant adds a share of integer
    # noise before masking (secagg.ddp); epsilon/delta bound the whole run as seen by the
    # coordinator, calibrated for the threshold t of survivors.
    aggregate_noise: str = "none"
    aggregate_epsilon: float | None = None
    aggregate_delta: float = 1e-5
    final_report_wait_s: float = 120.0

    def __post_init__(self) -> None:
        names = tuple(self.participants)
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise FederationError(f"participants: {', '.join(map(str, twice[:5]))} listed more than once")
        if len(names) < 2:
            raise FederationError("a federation needs at least 2 distinct participants")
        object.__setattr__(self, "participants", tuple(sorted(names)))
        object.__setattr__(self, "training", dict(self.training))
        if not isinstance(self.rounds, int) or not 1 <= self.rounds <= MAX_ROUNDS:
            raise FederationError(f"rounds must be an integer from 1 to {MAX_ROUNDS}, got {self.rounds!r}")
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise FederationError(f"clip_norm must be positive and finite, got {self.clip_norm}")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise FederationError(f"server_optimizer must be one of {SERVER_OPTIMIZERS}")
        if not (self.server_learning_rate > 0 and math.isfinite(self.server_learning_rate)):
            raise FederationError("server_learning_rate must be positive")
        for name in ("join_timeout_s", "phase_timeout_s", "final_report_wait_s"):
            if not getattr(self, name) > 0:
                raise FederationError(f"{name} must be positive")
        if self.quorum_grace_s is not None and not (
            isinstance(self.quorum_grace_s, int | float) and self.quorum_grace_s > 0
        ):
            raise FederationError(f"quorum_grace_s must be positive or null, got {self.quorum_grace_s!r}")
        if self.attempts_per_round < 1:
            raise FederationError("attempts_per_round must be at least 1")
        try:
            SecurityMode(self.security_mode)
        except ValueError:
            raise FederationError(f"unknown security mode {self.security_mode!r}") from None
        if not isinstance(self.spare_rounds, int) or not 0 <= self.spare_rounds <= MAX_ROUNDS:
            raise FederationError(f"spare_rounds must be an integer from 0 to {MAX_ROUNDS}")
        if "planned_rounds" in self.training:
            raise FederationError("training.planned_rounds is set from rounds + spare_rounds; leave it out")
        check_training_settings(self.training_config())
        self.protocol_params(dimension=1).validate(len(self.participants))
        self.encoding().validate(len(self.participants))
        try:
            mechanism = ddp.AggregateNoise.parse(self.aggregate_noise)
        except ValueError as exc:
            raise FederationError(str(exc)) from None
        if (mechanism is ddp.AggregateNoise.NONE) != (self.aggregate_epsilon is None):
            raise FederationError("aggregate_epsilon is needed with aggregate noise, and only then")
        if mechanism is not ddp.AggregateNoise.NONE:
            self.noise_plan(dimension=1024)  # refuses targets no dimension could meet early

    # --- derived settings ---------------------------------------------------------------------

    def training_config(self) -> dict[str, Any]:
        """The participants' training settings, with the budget planned over every round."""
        return {**self.training, "planned_rounds": self.rounds + self.spare_rounds}

    def server_optimizer_config(self) -> dict[str, Any]:
        """What ``aggregation.server_optimizer_from_config`` builds the server step from."""
        if self.server_optimizer == "fedavg":
            return {"name": "fedavg", "server_lr": self.server_learning_rate}
        return {"name": "fedadam", "lr": self.server_learning_rate}

    @property
    def calibration_round(self) -> int | None:
        """The round after the last training round in which the participants release their
        calibration statistics (``fedmask.adapter.calibration``), or ``None``: the training
        settings plan no calibration, or aggregate noise promises a participant-level guarantee
        that the record-level release would fall outside of."""
        training = training_config_of(self.training_config())
        if not training.calibrates or ddp.AggregateNoise.parse(self.aggregate_noise) is not ddp.AggregateNoise.NONE:
            return None
        return self.rounds + 1

    @property
    def last_round_number(self) -> int:
        """The number of the federation's last round: the calibration round, if there is one."""
        return self.calibration_round or self.rounds

    def encoding(self) -> EncodingParams:
        n = len(self.participants)
        scale = self.scale
        if scale is None:
            # Largest power of two with n * ceil(C * scale) <= 2^(b-1) - 1: the sum cannot wrap.
            limit = (2 ** (self.modulus_bits - 1) - 1) / n
            if limit <= 1:
                raise FederationError(
                    f"modulus_bits: {self.modulus_bits} bits cannot hold the sum of {n} updates "
                    f"(need at least {(n + 1).bit_length() + 1}; 32 is the usual choice)"
                )
            scale = 2.0 ** math.floor(math.log2((limit - 1) / self.clip_norm))
        params = EncodingParams(clip_norm=self.clip_norm, scale=scale, modulus_bits=self.modulus_bits)
        try:
            params.validate(n)
        except ValueError as exc:
            raise FederationError(f"encoding: {exc}") from None
        return params

    def noise_plan(self, dimension: int) -> ddp.AggregateNoisePlan | None:
        """The distributed-DP encoding for updates of ``dimension`` values, or None without it."""
        mechanism = ddp.AggregateNoise.parse(self.aggregate_noise)
        if mechanism is ddp.AggregateNoise.NONE:
            return None
        if self.aggregate_epsilon is None:
            raise FederationError("aggregate_epsilon is needed with aggregate noise")
        n = len(self.participants)
        threshold = self.protocol_params(dimension=1).threshold
        try:
            return ddp.calibrate(
                ddp.AggregateNoiseConfig(
                    mechanism=mechanism,
                    clip_norm=float(self.clip_norm),
                    dimension=dimension,
                    modulus_bits=self.modulus_bits,
                    max_participants=n,
                    min_survivors=threshold,
                    epsilon=float(self.aggregate_epsilon),
                    delta=float(self.aggregate_delta),
                    rounds=self.rounds,
                    budget_scope=ddp.BudgetScope.RUN,
                )
            )
        except ValueError as exc:
            raise FederationError(f"aggregate noise: {exc}") from None

    def protocol_params(self, dimension: int) -> ProtocolParams:
        mode = SecurityMode(self.security_mode)
        n = len(self.participants)
        threshold = self.threshold if self.threshold is not None else default_threshold(n, mode)
        return ProtocolParams(dimension=dimension, modulus_bits=self.modulus_bits, threshold=threshold, mode=mode)

    def to_json(self) -> dict[str, Any]:
        """The settings as given, plus (under ``derived``) what follows from them: the
        participants' training settings and the encoding with its headroom."""
        data = asdict(self)
        data["participants"] = list(self.participants)
        data["training"] = dict(self.training)
        encoding = self.encoding()
        data["derived"] = {
            "training": self.training_config(),
            "encoding": {
                "clip_norm": encoding.clip_norm,
                "scale": encoding.scale,
                "modulus_bits": encoding.modulus_bits,
                "headroom_bits": encoding.validate(len(self.participants)).bits,
            },
        }
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FederationConfig:
        """From parsed JSON, every key and type checked; errors name the key (``rounds: ...``)."""
        if not isinstance(data, Mapping):
            raise FederationError("the federation config must be a JSON object")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known - {"derived"})
        if unknown:
            raise FederationError(f"unknown federation settings: {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if name not in ("participants", "training"):
                _check_type(name, value, hints[name])
        participants = values.get("participants", ())
        if not isinstance(participants, list | tuple) or not all(isinstance(p, str) for p in participants):
            raise FederationError("participants: expected a list of names")
        if not isinstance(values.get("training", {}), Mapping):
            raise FederationError("training: expected an object of training settings")
        values["participants"] = tuple(participants)
        return cls(**values)


def load_federation_config(path: Path) -> FederationConfig:
    """The ``coordinator run --config`` file at ``path`` with every check ``coordinator run``
    makes before it writes anything (``fedmask doctor coordinator --config`` runs this same
    function): the JSON, every setting, and the settings that need the model's shape. Any
    problem is a one-line ``FederationError`` that starts with the path."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FederationError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise FederationError(f"{path}: {exc}") from None
    try:
        config = FederationConfig.from_json(document)
        check_model_shape(config.training_config())
    except (FederationError, ParameterError) as exc:  # ParameterError: threshold or modulus for these participants
        raise FederationError(f"{path}: {exc}") from None
    return config


def check_model_shape(settings: Mapping[str, Any]) -> None:
    """The training settings that depend on the model's shape fit it (``lora_layers`` within its
    depth), read from the model's config.json alone: no weights are loaded."""
    training = training_config_of(settings)
    if training.lora_layers is None:
        return  # nothing to check: spares importing torch
    from fedmask.adapter.config import ConfigError
    from fedmask.adapter.model import check_lora_layers

    try:
        check_lora_layers(training)
    except ConfigError as exc:
        raise FederationError(f"training: {exc}") from None


def training_config_of(settings: Mapping[str, Any]) -> TrainingConfig:
    """The ``TrainingConfig`` of JSON training settings."""
    from fedmask.adapter.config import TrainingConfig

    return TrainingConfig.create(**settings)


def check_training_settings(settings: Mapping[str, Any]) -> None:
    """The participants' training settings, as ``TrainingConfig`` will read them: every key
    known, every value of the right type and in range; errors name the key (``training.epochs``)."""
    from fedmask.adapter.config import ConfigError, TrainingConfig

    hints = typing.get_type_hints(TrainingConfig)
    unknown = sorted(set(settings) - set(hints))
    if unknown:
        raise FederationError(f"training.{unknown[0]}: unknown training setting (known: {', '.join(sorted(hints))})")
    for name, value in settings.items():
        _check_type(f"training.{name}", value, hints[name])
    try:
        training_config_of(settings)
    except ConfigError as exc:
        raise FederationError(f"training: {exc}") from None
    model = settings.get("model_path")
    if model is not None and not (Path(model) / "config.json").is_file():
        # The coordinator builds the initial adapter from it: it must be a model directory here.
        raise FederationError(f"training.model_path: no model directory at {model} (a folder with config.json)")


def _check_type(key: str, value: object, annotation: object) -> None:
    """``value`` fits ``annotation`` (the plain types settings use), or a one-line error."""
    from fedmask.adapter.config import type_problem

    problem = type_problem(value, annotation)
    if problem is not None:
        raise FederationError(f"{key}: {problem}")
