"""Server optimizers: turn the mean of the survivors' updates into the next global adapter.

The federation loop decodes the secure-aggregation sum (``secagg.encoding.decode_sum``), divides
by the number of survivors, and hands that mean update -- the pseudo-gradient of Reddi et al.,
"Adaptive Federated Optimization" (ICLR 2021), with the sign that *adds* it -- to
``optimizer.apply(global_vector, mean_update)``.

- ``FedAvg(server_lr)``:  x <- x + server_lr * delta  (server_lr = 1 is plain FedAvg).
- ``FedAdam(lr, beta1, beta2, tau)``: Algorithm 2 of Reddi et al., as published:
      m <- beta1 * m + (1 - beta1) * delta          m starts at 0
      v <- beta2 * v + (1 - beta2) * delta^2        v starts at tau^2
      x <- x + lr * m / (sqrt(v) + tau)
  with no bias correction.

Arithmetic is float64; the new global vector keeps the dtype of the one passed in. ``apply``
checks everything and computes the result before it touches the optimizer's state, so a refused
update leaves the state as it was. ``state_dict()`` / ``load_state_dict()`` carry the
hyper-parameters, the step count and (FedAdam) the moments; ``fedmask.coordinator.checkpoint`` saves the
state next to each global adapter, so a restarted coordinator continues with the moments of
the last committed round. If saving or committing a round fails after ``apply``, reload the
state of the last committed checkpoint before trying the round again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

__all__ = [
    "AggregationError",
    "FedAdam",
    "FedAvg",
    "ServerOptimizer",
    "server_optimizer_from_config",
]


class AggregationError(ValueError):
    """An update, a global vector or an optimizer state is unusable."""


class ServerOptimizer(Protocol):
    name: str

    def apply(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class FedAvg:
    """x <- x + server_lr * mean_update."""

    name = "fedavg"

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = _positive("server_lr", server_lr)
        self.step = 0

    def apply(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        x, delta = _checked_pair(global_vector, mean_update)
        with np.errstate(over="ignore"):
            new = _as_global(x + self.server_lr * delta, global_vector.dtype)
        self.step += 1
        return new

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.name, "server_lr": self.server_lr, "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_state_keys(state, {"optimizer", "server_lr", "step"}, self.name)
        _check_hyperparameters(state, {"server_lr": self.server_lr}, self.name)
        self.step = _step(state)


class FedAdam:
    """Adaptive server optimizer (Reddi et al. 2021, Algorithm 2, FedAdam)."""

    name = "fedadam"

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.lr = _positive("lr", lr)
        self.beta1 = _unit_interval("beta1", beta1)
        self.beta2 = _unit_interval("beta2", beta2)
        self.tau = _positive("tau", tau)
        self.step = 0
        self._m: np.ndarray | None = None
        self._v: np.ndarray | None = None

    def apply(self, global_vector: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        x, delta = _checked_pair(global_vector, mean_update)
        if self._m is None or self._v is None:
            m = np.zeros_like(delta)
            v = np.full_like(delta, self.tau * self.tau)
        else:
            if self._m.shape != delta.shape:
                raise AggregationError(
                    f"the update has {delta.size} coordinates, the optimizer's moments {self._m.size}"
                )
            m, v = self._m, self._v
        with np.errstate(over="ignore"):  # overflow is checked below and refused
            m = self.beta1 * m + (1.0 - self.beta1) * delta
            v = self.beta2 * v + (1.0 - self.beta2) * np.square(delta)
        new = _as_global(x + self.lr * m / (np.sqrt(v) + self.tau), global_vector.dtype)
        if not (np.isfinite(m).all() and np.isfinite(v).all()):
            raise AggregationError("the update overflows the optimizer's moments")
        self._m, self._v = m, v
        self.step += 1
        return new

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "optimizer": self.name,
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "tau": self.tau,
            "step": self.step,
        }
        if self._m is not None and self._v is not None:
            state["m"] = self._m.copy()
            state["v"] = self._v.copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        hyper = {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}
        has_moments = "m" in state or "v" in state
        keys = {"optimizer", "step", *hyper} | ({"m", "v"} if has_moments else set())
        _check_state_keys(state, keys, self.name)
        _check_hyperparameters(state, hyper, self.name)
        step = _step(state)
        if has_moments != (step > 0):
            raise AggregationError(f"fedadam state at step {step} must {'' if step else 'not '}carry moments")
        if not has_moments:
            self._m = self._v = None
            self.step = 0
            return
        m = _state_vector(state["m"], "m")
        v = _state_vector(state["v"], "v")
        if m.shape != v.shape:
            raise AggregationError(f"fedadam moments differ in shape: m {m.shape}, v {v.shape}")
        if (v <= 0).any():
            raise AggregationError("fedadam second moment must be positive")
        self._m, self._v, self.step = m, v, step


def server_optimizer_from_config(config: Mapping[str, Any]) -> FedAvg | FedAdam:
    """``{"name": "fedavg", "server_lr": 1.0}`` or ``{"name": "fedadam", "lr": ..., "beta1": ...,
    "beta2": ..., "tau": ...}`` -> the optimizer. Unknown names or keys are refused."""
    if not isinstance(config, Mapping):
        raise AggregationError("a server optimizer config is a mapping")
    options = dict(config)
    name = options.pop("name", None)
    classes: dict[str, type[FedAvg] | type[FedAdam]] = {"fedavg": FedAvg, "fedadam": FedAdam}
    if name not in classes:
        raise AggregationError(f"unknown server optimizer {name!r}; known: {', '.join(classes)}")
    try:
        return classes[name](**options)
    except TypeError as exc:
        raise AggregationError(f"bad {name} options {sorted(options)}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Validation


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise AggregationError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _unit_interval(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise AggregationError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def _checked_pair(global_vector: object, mean_update: object) -> tuple[np.ndarray, np.ndarray]:
    for what, array in (("global vector", global_vector), ("mean update", mean_update)):
        if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
            raise AggregationError(f"the {what} must be a float numpy array")
        if array.ndim != 1 or array.size == 0:
            raise AggregationError(f"the {what} must be a non-empty 1-D vector, got shape {array.shape}")
        if not np.isfinite(array).all():
            raise AggregationError(f"the {what} has NaN or infinite values")
    assert isinstance(global_vector, np.ndarray) and isinstance(mean_update, np.ndarray)
    if global_vector.shape != mean_update.shape:
        raise AggregationError(
            f"the mean update has {mean_update.size} coordinates, the global vector {global_vector.size}"
        )
    return global_vector.astype(np.float64), mean_update.astype(np.float64)


def _as_global(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow is checked just below and refused
        result = values.astype(dtype)
    if not np.isfinite(result).all():
        raise AggregationError(f"the new global vector overflows {dtype}")
    return result


def _check_state_keys(state: object, expected: set[str], name: str) -> None:
    if not isinstance(state, Mapping):
        raise AggregationError("an optimizer state is a mapping")
    if state.get("optimizer") != name:
        raise AggregationError(f"this is a {state.get('optimizer')!r} state, not a {name} one")
    if set(state) != expected:
        raise AggregationError(f"{name} state keys {sorted(state)} differ from {sorted(expected)}")


def _check_hyperparameters(state: Mapping[str, Any], hyper: Mapping[str, float], name: str) -> None:
    # Continuing with other hyper-parameters would silently change the run.
    changed = [f"{key}={state[key]!r} (now {value!r})" for key, value in hyper.items() if state[key] != value]
    if changed:
        raise AggregationError(f"the {name} state was saved with {', '.join(changed)}")


def _step(state: Mapping[str, Any]) -> int:
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise AggregationError(f"optimizer step must be an integer >= 0, got {step!r}")
    return step


def _state_vector(value: object, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != np.float64 or value.ndim != 1 or value.size == 0:
        raise AggregationError(f"fedadam state {name!r} must be a non-empty 1-D float64 array")
    if not np.isfinite(value).all():
        raise AggregationError(f"fedadam state {name!r} has NaN or infinite values")
    return value.copy()
