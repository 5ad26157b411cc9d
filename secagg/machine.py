"""A transition whose next state depends on the round, as data: the choosing function returns a
label and the table maps each label to a state, so every possible target is in the table (and in
the diagrams drawn from it) rather than hidden in a function."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

State = TypeVar("State", bound=enum.Enum)
Machine = TypeVar("Machine")


@dataclass(frozen=True)
class Branch(Generic[Machine, State]):
    """``choose(machine)`` names the outcome; ``targets[outcome]`` is the next state."""

    choose: Callable[[Machine], str]
    targets: Mapping[str, State]

    def __call__(self, machine: Machine) -> State:
        return self.targets[self.choose(machine)]


def next_state(target: State | Branch[Machine, State], machine: Machine) -> State:
    """The state a table row leads to for this machine."""
    return target(machine) if isinstance(target, Branch) else target
