"""Server optimizers: exact arithmetic on small vectors, state round trips, refusals."""

import numpy as np
import pytest

from fedmask.coordinator.aggregation import AggregationError, FedAdam, FedAvg, server_optimizer_from_config


def test_fedavg_adds_the_scaled_mean_update_exactly():
    optimizer = FedAvg(server_lr=0.5)
    new = optimizer.apply(np.array([1.0, -2.0, 0.25]), np.array([4.0, 2.0, -0.5]))
    np.testing.assert_array_equal(new, [3.0, -1.0, 0.0])
    assert new.dtype == np.float64
    assert optimizer.state_dict() == {"optimizer": "fedavg", "server_lr": 0.5, "step": 1}


def test_fedavg_keeps_the_global_dtype():
    new = FedAvg().apply(np.array([1.5, 2.0], dtype=np.float32), np.array([0.25, -1.0]))
    assert new.dtype == np.float32
    np.testing.assert_array_equal(new, np.array([1.75, 1.0], dtype=np.float32))


def test_fedadam_two_steps_by_hand():
    # beta2 = 1/2, tau = 1 and updates chosen so that every sqrt(v) is an integer:
    # v0 = tau^2 = 1; step 1, delta = (1, 7, -1): v = 1/2 + delta^2/2 = (1, 25, 1),
    # m = delta/2 = (0.5, 3.5, -0.5), x += m / (sqrt(v) + 1) = (0.25, 3.5/6, -0.25).
    optimizer = FedAdam(lr=1.0, beta1=0.5, beta2=0.5, tau=1.0)
    x1 = optimizer.apply(np.zeros(3), np.array([1.0, 7.0, -1.0]))
    np.testing.assert_array_equal(x1, [0.25, 3.5 / 6, -0.25])
    state = optimizer.state_dict()
    np.testing.assert_array_equal(state["m"], [0.5, 3.5, -0.5])
    np.testing.assert_array_equal(state["v"], [1.0, 25.0, 1.0])
    # step 2, delta = (7, 5, 1): v = (25, 25, 1), m = (3.75, 4.25, 0.25).
    x2 = optimizer.apply(x1, np.array([7.0, 5.0, 1.0]))
    np.testing.assert_array_equal(x2, [0.25 + 3.75 / 6, 3.5 / 6 + 4.25 / 6, -0.25 + 0.25 / 2])
    state = optimizer.state_dict()
    np.testing.assert_array_equal(state["m"], [3.75, 4.25, 0.25])
    np.testing.assert_array_equal(state["v"], [25.0, 25.0, 1.0])
    assert state["step"] == 2


def test_fedadam_matches_the_published_update_coordinate_by_coordinate():
    """Against a scalar transcription of Reddi et al., Algorithm 2 (v starts at tau^2)."""
    lr, beta1, beta2, tau = 0.03, 0.9, 0.99, 1e-3
    rng = np.random.default_rng(7)
    x = rng.normal(size=5).astype(np.float32)
    updates = [rng.normal(scale=0.1, size=5) for _ in range(4)]
    optimizer = FedAdam(lr, beta1, beta2, tau)
    xs = x
    for delta in updates:
        xs = optimizer.apply(xs, delta)
    for i in range(5):
        xi, m, v = float(x[i]), 0.0, tau * tau
        for delta in updates:
            m = beta1 * m + (1 - beta1) * float(delta[i])
            v = beta2 * v + (1 - beta2) * float(delta[i]) ** 2
            xi = float(np.float32(xi + lr * m / (v**0.5 + tau)))
        assert xs[i] == np.float32(xi)


def test_fedadam_state_round_trip_continues_bit_for_bit():
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=64).astype(np.float32)
    updates = [rng.normal(scale=0.05, size=64) for _ in range(3)]
    straight = FedAdam(lr=0.01)
    x = x0
    for delta in updates:
        x = straight.apply(x, delta)

    first = FedAdam(lr=0.01)
    y = first.apply(x0, updates[0])
    resumed = FedAdam(lr=0.01)
    resumed.load_state_dict(first.state_dict())
    for delta in updates[1:]:
        y = resumed.apply(y, delta)
    np.testing.assert_array_equal(y, x)
    assert resumed.state_dict()["step"] == 3


def test_state_dict_is_a_copy():
    optimizer = FedAdam(lr=0.1)
    optimizer.apply(np.zeros(2), np.ones(2))
    state = optimizer.state_dict()
    state["m"][:] = 100.0
    assert optimizer.state_dict()["m"][0] == pytest.approx(0.1)


def test_fresh_fedadam_state_has_no_moments_and_loads_back():
    optimizer = FedAdam(lr=0.1)
    state = optimizer.state_dict()
    assert "m" not in state and state["step"] == 0
    FedAdam(lr=0.1).load_state_dict(state)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": 0.2}, r"saved with lr=0.2 \(now 0.1\)"),
        ({"optimizer": "fedavg"}, "not a fedadam one"),
        ({"extra": 1}, "keys"),
        ({"step": 0}, "must not carry moments"),
        ({"step": -1}, "step must be an integer"),
        ({"m": np.zeros(3)}, "differ in shape"),
        ({"m": np.array([np.nan, 0.0])}, "NaN"),
        ({"v": np.zeros(2)}, "must be positive"),
        ({"m": np.zeros(2, dtype=np.float32)}, "float64"),
    ],
)
def test_fedadam_refuses_a_bad_state(change, message):
    source = FedAdam(lr=0.1)
    source.apply(np.zeros(2), np.ones(2))
    state = {**source.state_dict(), **change}
    target = FedAdam(lr=0.1)
    with pytest.raises(AggregationError, match=message):
        target.load_state_dict(state)
    assert target.state_dict()["step"] == 0  # nothing half-loaded


def test_fedavg_refuses_a_state_with_another_learning_rate():
    with pytest.raises(AggregationError, match="server_lr=1.0"):
        FedAvg(server_lr=0.5).load_state_dict(FedAvg().state_dict())


@pytest.mark.parametrize(
    "global_vector, update, message",
    [
        (np.zeros(3), np.zeros(4), "4 coordinates, the global vector 3"),
        (np.zeros(3), np.array([0.0, np.nan, 0.0]), "mean update has NaN"),
        (np.array([np.inf, 0.0]), np.zeros(2), "global vector has NaN"),
        (np.zeros((2, 2)), np.zeros((2, 2)), "1-D"),
        (np.zeros(0), np.zeros(0), "non-empty"),
        (np.zeros(2, dtype=np.int64), np.zeros(2), "float numpy array"),
        ([0.0, 1.0], np.zeros(2), "float numpy array"),
        (np.zeros(2, dtype=np.float32), np.full(2, 1e300), "overflows"),
    ],
)
@pytest.mark.parametrize("make", [FedAvg, lambda: FedAdam(lr=0.1)], ids=["fedavg", "fedadam"])
def test_apply_refuses_bad_vectors_and_leaves_the_state_alone(make, global_vector, update, message):
    optimizer = make()
    before = optimizer.state_dict()
    with pytest.raises(AggregationError, match=message):
        optimizer.apply(global_vector, update)
    assert optimizer.state_dict() == before


def test_fedadam_refuses_an_update_of_another_size_than_its_moments():
    optimizer = FedAdam(lr=0.1)
    optimizer.apply(np.zeros(3), np.ones(3))
    with pytest.raises(AggregationError, match="moments 3"):
        optimizer.apply(np.zeros(4), np.ones(4))
    assert optimizer.state_dict()["step"] == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0}, "lr must be a positive"),
        ({"lr": float("nan")}, "lr must be a positive"),
        ({"lr": True}, "lr must be a positive"),
        ({"lr": 0.1, "beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
        ({"lr": 0.1, "beta2": -0.1}, r"beta2 must be in \[0, 1\)"),
        ({"lr": 0.1, "tau": 0.0}, "tau must be a positive"),
    ],
)
def test_fedadam_hyperparameters_are_validated(kwargs, message):
    with pytest.raises(AggregationError, match=message):
        FedAdam(**kwargs)


def test_server_optimizer_from_config():
    adam = server_optimizer_from_config({"name": "fedadam", "lr": 0.01, "tau": 1e-2})
    assert isinstance(adam, FedAdam) and (adam.lr, adam.tau, adam.beta1) == (0.01, 1e-2, 0.9)
    assert isinstance(server_optimizer_from_config({"name": "fedavg"}), FedAvg)
    with pytest.raises(AggregationError, match="unknown server optimizer 'sgd'"):
        server_optimizer_from_config({"name": "sgd"})
    with pytest.raises(AggregationError, match="bad fedavg options"):
        server_optimizer_from_config({"name": "fedavg", "momentum": 0.9})


def test_a_server_optimizer_config_or_state_that_is_not_a_mapping_is_refused():
    with pytest.raises(AggregationError, match="a server optimizer config is a mapping"):
        server_optimizer_from_config(["fedavg"])  # type: ignore[arg-type]
    with pytest.raises(AggregationError, match="an optimizer state is a mapping"):
        FedAdam(lr=0.1).load_state_dict([("optimizer", "fedadam")])  # type: ignore[arg-type]
    with pytest.raises(AggregationError, match="an optimizer state is a mapping"):
        FedAvg().load_state_dict("fedavg")  # type: ignore[arg-type]
