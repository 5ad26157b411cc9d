"""The participant's own security policy: what it agrees to, whatever the coordinator asks.

Everything the coordinator sends is untrusted input. The security mode, the number of
participants and who they are, the privacy budget, the noise and the model a participant accepts
come from this policy, a local file the participant's operator controls (TOML, see
docs/threat-model.md), never from the coordinator. Every round start and every training task is
checked against it before anything is computed or revealed; a violation is refused with one line
that names the rule and what the coordinator asked (``PolicyViolation``).

Rules that hold whatever the file says (they are not settings):
- the threshold exceeds half the share holders (``ProtocolParams.validate``; this alone defeats
  the split view);
- every participant of a round is in the CA-signed roster this participant holds.

Defaults are the safe choice: malicious-coordinator mode (signed keys and the consistency check),
at least 3 participants from at least 2 organisations, record-level epsilon at most 8 in total
at delta at most 1e-5, and a pinned list of members (``fedmask participant policy init`` writes
the current roster's members into the file; a member the CA holder adds later is refused until
this participant's operator accepts it).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeGuard

from fedmask.adapter.config import MODES, TrainingConfig
from fedmask.durable import PRIVATE, write_text_atomic
from fedmask.secagg.params import SecurityMode

POLICY_FILE_NAME = "policy.toml"
# Modes by strength: a policy asking for one accepts it and anything stronger.
_MODE_STRENGTH = {SecurityMode.SEMI_HONEST: 0, SecurityMode.MALICIOUS: 1}


class PolicyError(ValueError):
    """The policy file itself is malformed (the message names the key)."""


class PolicyViolation(Exception):
    """The coordinator asked for something this participant's policy refuses."""

    def __init__(self, rule: str, asked: str, *, asker: str = "the coordinator") -> None:
        self.rule = rule
        self.asked = asked
        super().__init__(f"refused by the participant policy ({rule}): {asker} asked for {asked}")


@dataclass(frozen=True)
class ParticipantPolicy:
    """See the module docstring. ``members`` None: anyone in the CA-signed roster (not the
    default written by ``policy init``). ``models`` empty: any model."""

    security_mode: SecurityMode = SecurityMode.MALICIOUS
    # The round's threshold t: how many of this participant's share holders, together with the
    # coordinator, could rebuild its masks. The coordinator picks t; this is the least accepted.
    min_threshold: int = 2
    # SecAgg+'s sparse graph: each secret is shared with a few neighbours only, so fewer colluders
    # suffice, and which participants are neighbours follows from the key roster the coordinator
    # assembles (it can leave members out and try again). Refused unless accepted here.
    allow_sparse_graph: bool = False
    min_participants: int = 3
    min_organisations: int = 2
    members: frozenset[str] | None = None
    min_roster_version: int = 1
    max_epsilon: float = 8.0  # record-level, over every round of this participant's ledger
    max_epsilon_per_round: float | None = None
    max_delta: float = 1e-5
    max_local_steps: int | None = None
    # Distributed DP the participant insists on: a mechanism and the most participant-level
    # epsilon (over the run) it accepts. None: no requirement.
    aggregate_noise: str | None = None
    max_participant_epsilon: float | None = None
    models: tuple[str, ...] = ()
    adapter_modes: tuple[str, ...] = MODES
    # `participant join --input FILE` over several rounds sends the same input each time: two
    # sums that differ by one participant then reveal its input. Refused unless this is true.
    allow_repeated_input: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.security_mode, SecurityMode):
            raise PolicyError(f"security_mode: expected one of {[m.value for m in SecurityMode]}")
        for name in ("min_threshold", "min_participants", "min_organisations", "min_roster_version", "max_local_steps"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise PolicyError(f"{name}: expected a positive integer, got {value!r}")
        for flag in ("allow_repeated_input", "allow_sparse_graph"):
            if not isinstance(getattr(self, flag), bool):
                # A TOML string such as "no" is truthy: only true and false mean what they say.
                raise PolicyError(f"{flag}: expected true or false, got {getattr(self, flag)!r}")
        if self.min_threshold < 2:
            raise PolicyError("min_threshold: a secret shared with a threshold of 1 is no secret: at least 2")
        if self.min_participants < 2:
            raise PolicyError("min_participants: secure aggregation needs at least 2 (3 or more is safer)")
        for name in ("max_epsilon", "max_epsilon_per_round", "max_participant_epsilon"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
                raise PolicyError(f"{name}: expected a positive number, got {value!r}")
        if not (_is_number(self.max_delta) and 0 < self.max_delta < 1):
            raise PolicyError(f"max_delta: expected a number in (0, 1), got {self.max_delta!r}")
        if self.max_local_steps is not None and (
            not isinstance(self.max_local_steps, int)
            or isinstance(self.max_local_steps, bool)
            or self.max_local_steps < 1
        ):
            raise PolicyError(f"max_local_steps: expected a positive integer, got {self.max_local_steps!r}")
        if self.aggregate_noise not in (None, "skellam", "discrete_gaussian"):
            raise PolicyError(f"aggregate_noise: expected skellam or discrete_gaussian, got {self.aggregate_noise!r}")
        if (self.aggregate_noise is None) != (self.max_participant_epsilon is None):
            raise PolicyError("aggregate_noise and max_participant_epsilon go together")
        unknown_modes = set(self.adapter_modes) - set(MODES)
        if not self.adapter_modes or unknown_modes:
            raise PolicyError(f"adapter_modes: expected some of {list(MODES)}, got {list(self.adapter_modes)}")
        if self.members is not None and len(self.members) < self.min_participants:
            raise PolicyError(
                f"members: {len(self.members)} names, fewer than min_participants ({self.min_participants})"
            )

    # --- files ---------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ParticipantPolicy:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"unknown policy settings: {', '.join(unknown)}")
        values = dict(data)
        try:
            if "security_mode" in values:
                values["security_mode"] = SecurityMode(values["security_mode"])
        except ValueError:
            raise PolicyError(
                f"security_mode: expected one of {[m.value for m in SecurityMode]}, got {values['security_mode']!r}"
            ) from None
        for name in ("models", "adapter_modes"):
            if name in values:
                values[name] = tuple(_strings(values[name], name))
        if "members" in values:
            values["members"] = frozenset(_strings(values["members"], "members"))
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> ParticipantPolicy:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise PolicyError(f"cannot read the policy {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise PolicyError(f"{path} is not valid TOML: not UTF-8 text (byte {exc.start})") from None
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{path} is not valid TOML: {exc}") from None
        try:
            return cls.from_mapping(data)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    def to_toml(self) -> str:
        lines = [
            "# This participant's security policy: what it accepts, whatever the coordinator asks.",
            "# docs/threat-model.md explains every setting.",
        ]
        for name, value in asdict(self).items():
            if value is None:
                continue
            lines.append(f"{name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.to_toml(), mode=PRIVATE)

    @classmethod
    def pinned_to(cls, members: Iterable[str], roster_version: int, **settings: Any) -> ParticipantPolicy:
        """The default policy with the federation's current members and roster version pinned."""
        names = frozenset(members)
        return cls(
            members=names,
            min_roster_version=roster_version,
            min_participants=min(settings.pop("min_participants", 3), max(2, len(names))),
            **settings,
        )

    # --- checks ------------------------------------------------------------------------------

    def check_roster(self, version: int) -> None:
        """The roster this participant holds is at least as new as the one it pinned (an older,
        validly signed roster could list members since removed)."""
        if version < self.min_roster_version:
            raise PolicyViolation("min_roster_version", f"roster version {version} < {self.min_roster_version}")

    def check_round(
        self,
        mode: SecurityMode,
        participants: Iterable[str],
        organisations: Mapping[str, str],
        *,
        threshold: int,
        neighbours: int | None,
    ) -> None:
        """A round start: its security mode, threshold and graph, and who takes part.
        ``organisations`` is the participant's own CA-signed roster (name -> organisation)."""
        names = sorted(participants)
        if len(set(names)) != len(names):
            # Listed twice, one name would count twice towards min_participants.
            twice = sorted({n for n in names if names.count(n) > 1})
            raise PolicyViolation("each participant once", f"a round listing {', '.join(twice[:5])} twice")
        if _MODE_STRENGTH[mode] < _MODE_STRENGTH[self.security_mode]:
            raise PolicyViolation(f"security_mode = {self.security_mode.value}", f"a {mode.value} round")
        if threshold < self.min_threshold:
            raise PolicyViolation(f"min_threshold = {self.min_threshold}", f"threshold {threshold}")
        if neighbours is not None and neighbours < len(names) - 1 and not self.allow_sparse_graph:
            raise PolicyViolation(
                "allow_sparse_graph = false", f"a SecAgg+ graph of degree {neighbours} over {len(names)} participants"
            )
        if len(names) < self.min_participants:
            raise PolicyViolation(f"min_participants = {self.min_participants}", f"a round of {len(names)}")
        outside = [n for n in names if n not in organisations]
        if outside:
            raise PolicyViolation("members of the CA-signed roster only", f"non-members {', '.join(outside[:5])}")
        if self.members is not None:
            unexpected = [n for n in names if n not in self.members]
            if unexpected:
                raise PolicyViolation("members", f"participants it does not know: {', '.join(unexpected[:5])}")
        distinct = {organisations[n] for n in names}
        if len(distinct) < self.min_organisations:
            raise PolicyViolation(
                f"min_organisations = {self.min_organisations}", f"a round of {len(distinct)} organisation(s)"
            )

    def check_training(self, config: TrainingConfig, *, local_models: Iterable[str] = ()) -> None:
        """A training task's settings, before the model is loaded. ``local_models``: the model
        names this participant resolved locally for it (a path on this machine)."""
        if config.target_epsilon > self.max_epsilon:
            raise PolicyViolation(f"max_epsilon = {self.max_epsilon:g}", f"epsilon {config.target_epsilon:g}")
        if config.target_delta > self.max_delta:
            raise PolicyViolation(f"max_delta = {self.max_delta:g}", f"delta {config.target_delta:g}")
        if config.mode not in self.adapter_modes:
            raise PolicyViolation(f"adapter_modes = {list(self.adapter_modes)}", f"adapter mode {config.mode}")
        if self.models:
            asked = {config.model_path or "default", *local_models}
            if not asked & set(self.models):
                raise PolicyViolation(f"models = {list(self.models)}", f"model {config.model_path or 'default'}")

    def check_plan(self, *, steps_per_round: int, epsilon_increment: float) -> None:
        """The privacy plan of one round, once the data is known."""
        if self.max_local_steps is not None and steps_per_round > self.max_local_steps:
            raise PolicyViolation(f"max_local_steps = {self.max_local_steps}", f"{steps_per_round} steps a round")
        if self.max_epsilon_per_round is not None and epsilon_increment > self.max_epsilon_per_round:
            raise PolicyViolation(
                f"max_epsilon_per_round = {self.max_epsilon_per_round:g}", f"epsilon {epsilon_increment:.3g} this round"
            )

    def check_aggregate_noise(self, announced: Mapping[str, Any] | None) -> None:
        """The distributed-DP settings of a task (``None``: no aggregate noise)."""
        if self.aggregate_noise is None:
            return
        if not announced:
            raise PolicyViolation(f"aggregate_noise = {self.aggregate_noise}", "no aggregate noise")
        mechanism = announced.get("mechanism")
        if mechanism != self.aggregate_noise:
            raise PolicyViolation(f"aggregate_noise = {self.aggregate_noise}", f"aggregate noise {mechanism}")
        epsilon = announced.get("epsilon")
        assert self.max_participant_epsilon is not None  # checked with aggregate_noise
        if not _is_number(epsilon) or not epsilon <= self.max_participant_epsilon:
            raise PolicyViolation(
                f"max_participant_epsilon = {self.max_participant_epsilon:g}", f"participant-level epsilon {epsilon}"
            )

    def check_repeated_input(self, rounds: int, accept_risk: bool) -> None:
        """``participant join --input`` for several rounds sends one input again and again."""
        if rounds > 1 and not (accept_risk or self.allow_repeated_input):
            raise PolicyViolation(
                "allow_repeated_input = false",
                f"the same input in {rounds} rounds (two sums that differ by one participant reveal its input; "
                "pass --accept-differencing-risk to send it anyway)",
                asker="--rounds",
            )


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{name}: expected a list of strings")
    return list(value)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecurityMode):
        return f'"{value.value}"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value) if isinstance(value, set | frozenset) else list(value)
        return "[" + ", ".join(_toml_value(v) for v in items) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
