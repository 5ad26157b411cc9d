"""Distributed DP end to end: configuration, calibration, encoding with noise through a real
masked round, decoding, wrap-around refusal."""

import dataclasses
import math

import numpy as np
import pytest

from fedmask.ddp import mechanism as ddp
from fedmask.ddp import rotation
from fedmask.ddp.accounting import DistributedDPAccountant
from fedmask.ddp.mechanism import AggregateNoise, AggregateNoiseConfig, BudgetScope, WrapAroundDetected
from fedmask.ddp.rotation import rotation_seed
from fedmask.secagg.encoding import ImplausibleSum, centered_lift, clip_l2, to_modular
from fedmask.secagg.errors import ParameterError
from fedmask.secagg.prg import reduce_modulus
from fedmask.secagg.rand import SeededRandom

SEED = rotation.rotation_seed(b"round-42")


def _config(mechanism=AggregateNoise.SKELLAM, **overrides):
    base = dict(
        mechanism=mechanism,
        clip_norm=1.0,
        dimension=700,
        modulus_bits=20,
        max_participants=5,
        min_survivors=3,
        epsilon=2.0,
        delta=1e-5,
        rounds=10,
        budget_scope=BudgetScope.RUN,
    )
    if mechanism is AggregateNoise.NONE:
        for key in ("epsilon", "delta", "rounds", "budget_scope"):
            base.pop(key)
    base.update(overrides)
    return AggregateNoiseConfig(**base)


@pytest.fixture(scope="module")
def plans():
    return {m: ddp.calibrate(_config(m)) for m in AggregateNoise}


# ---- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": math.nan}, "clip_norm"),
        ({"dimension": 0}, "dimension"),
        ({"modulus_bits": 65}, "modulus_bits"),
        ({"min_survivors": 6}, "min_survivors"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"rounds": 0}, "rounds"),
        ({"budget_scope": "run"}, "budget_scope"),
        ({"epsilon": None}, "needs epsilon"),
        ({"wrap_probability": 0.01}, "wrap_probability"),
        ({"rounding_beta": 1.0}, "rounding_beta"),
        ({"detection_bits": 19}, "detection_bits"),
    ],
)
def test_bad_configurations_are_refused_with_the_field_named(overrides, match):
    with pytest.raises(ParameterError, match=match):
        _config(**overrides).validate()


def test_no_noise_refuses_privacy_settings():
    with pytest.raises(ParameterError, match="adds no noise; remove epsilon"):
        _config(AggregateNoise.NONE, epsilon=1.0).validate()
    _config(AggregateNoise.NONE).validate()


def test_configuration_from_a_mapping():
    raw = {
        "mechanism": "discrete_gaussian",
        "clip_norm": 0.5,
        "dimension": 100,
        "modulus_bits": 32,
        "max_participants": 10,
        "min_survivors": 7,
        "epsilon": 3.0,
        "delta": 1e-6,
        "rounds": 5,
        "budget_scope": "per-round",
    }
    config = AggregateNoiseConfig.from_dict(raw)
    assert config.mechanism is AggregateNoise.DISCRETE_GAUSSIAN and config.budget_scope is BudgetScope.PER_ROUND
    assert config.describe() == {
        **raw,
        "wrap_probability": 2.0**-40,
        "detection_bits": 1,
        "rounding_beta": math.exp(-0.5),
    }
    with pytest.raises(ParameterError, match="none, skellam, discrete_gaussian"):
        AggregateNoiseConfig.from_dict({**raw, "mechanism": "gaussian"})
    with pytest.raises(ParameterError, match="unknown aggregate-noise settings: sigma"):
        AggregateNoiseConfig.from_dict({**raw, "sigma": 1.0})
    with pytest.raises(ParameterError, match="budget_scope"):
        AggregateNoiseConfig.from_dict({**raw, "budget_scope": "forever"})
    with pytest.raises(ParameterError, match="incomplete"):
        AggregateNoiseConfig.from_dict({"mechanism": "none"})


# ---- calibration --------------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", [AggregateNoise.SKELLAM, AggregateNoise.DISCRETE_GAUSSIAN])
def test_calibration_meets_the_run_budget_tightly_with_the_minimum_survivors(plans, mechanism):
    plan = plans[mechanism]
    assert 0.999 * 2.0 <= plan.planned_epsilon <= 2.0
    accountant = DistributedDPAccountant(1e-5)
    for _ in range(10):
        accountant.step(plan.noise_record(3))
    assert math.isclose(accountant.get_epsilon(), plan.planned_epsilon, rel_tol=1e-12)  # summed vs multiplied RDP
    # every extra survivor adds a noise share: the real epsilon is smaller
    assert plan.noise_record(5).epsilon(1e-5) < plan.round_epsilon


def test_per_round_budget_bounds_each_round():
    plan = ddp.calibrate(_config(budget_scope=BudgetScope.PER_ROUND, epsilon=1.0))
    assert 0.999 <= plan.round_epsilon <= 1.0
    assert plan.planned_epsilon > 1.0  # ten rounds of it


@pytest.mark.parametrize("mechanism", list(AggregateNoise))
def test_calibration_takes_the_largest_scale_that_fits(plans, mechanism):
    plan = plans[mechanism]
    # 20-bit modulus, 1 bit kept for wrap detection
    assert plan.sum_bound <= 2**18 - 1 and 1 <= plan.headroom_bits < 1.01
    assert plan.padded_dimension == 1024
    bigger = ddp._plan_at(plan.config, plan.scale * 1.001)
    assert bigger.sum_bound > 2**18 - 1


def test_calibration_refuses_a_modulus_too_small_and_says_how_many_bits_are_needed():
    with pytest.raises(ParameterError, match=r"needs \d+\.\d bits, more than the modulus's 8 less 1"):
        ddp.calibrate(_config(modulus_bits=8, dimension=100_000))


def test_plan_description_for_the_ledger(plans):
    described = plans[AggregateNoise.SKELLAM].describe()
    for key in (
        "scale",
        "local_noise_variance",
        "sum_bound",
        "headroom_bits",
        "planned_epsilon",
        "expected_mse_at_min_survivors",
    ):
        assert key in described
    assert described["mechanism"] == "skellam"


# ---- end to end through a masked round -------------------------------------------------------------


def _updates(count, dimension, seed):
    g = np.random.default_rng(seed)
    out = []
    for i in range(count):
        v = g.normal(size=dimension)
        out.append(v * (1.4 if i % 2 else 0.7) / np.linalg.norm(v))  # half of them get clipped
    return out


@pytest.mark.parametrize("mechanism", list(AggregateNoise))
def test_masked_round_recovers_the_survivors_mean_within_the_predicted_error(plans, make_round, mechanism):
    """Rotation + rounding + noise + masks + dropouts + unmask + inverse rotation: the sum is exact
    bit for bit, and the decoded average errs from the survivors' clipped mean by the predicted
    mean-squared error."""
    plan = plans[mechanism]
    r = make_round(5, t=3, dimension=plan.padded_dimension, bits=plan.modulus_bits, seed=3)
    updates = dict(zip(r.ids, _updates(5, 700, seed=1), strict=True))
    participant_rng = SeededRandom.from_int(77)
    for u in r.ids:
        encoded = ddp.encode_with_noise(updates[u], plan, SEED, participant_rng.spawn())
        r.inputs[u] = encoded
        r.clients[u].set_input(encoded)
    survivors = (1, 3, 4)  # 2 and 5 drop before sending their masked input
    r.answer(r.advertise())
    r.answer(r.server.close_phase(), who=survivors)
    r.answer(r.server.close_phase())
    r.server.close_phase()
    assert np.array_equal(r.server.result, r.expected_sum(survivors))

    average = ddp.decode_sum(r.server.result, plan, SEED, len(survivors))
    truth = np.mean([clip_l2(updates[u], 1.0)[0] for u in survivors], axis=0)
    mse = float(np.mean((average - truth) ** 2))
    expected = plan.expected_mse(3)
    if mechanism is AggregateNoise.NONE:
        assert mse <= expected  # rounding only, whose variance is at most 1/4 unit
    else:
        # noise-dominated: the mean of 700 squared errors is within 5 standard errors
        assert abs(mse / expected - 1) < 5 * math.sqrt(2 / 700)
        # the error norm the coordinator announces: the same statistic, over the decoded coordinates
        norm_ratio = float(np.linalg.norm(average - truth)) / plan.expected_noise_norm(3)
        assert abs(norm_ratio**2 - 1) < 5 * math.sqrt(2 / 700)


def test_wrap_around_never_happens_inside_validated_parameters():
    """Worst cases for the sum: every participant sends the same full-norm vector, or the same
    spike. The lifted sum equals the integer sum of the signed encodings, and stays inside the
    bound."""
    plan = ddp.calibrate(_config(modulus_bits=16, dimension=4096, max_participants=8, min_survivors=8))
    rng = SeededRandom.from_int(9)
    spike = np.zeros(4096)
    spike[17] = 1.0
    for trial, update in enumerate([np.full(4096, 1 / 64.0), spike, -spike]):
        seed = rotation.rotation_seed(b"wrap-%d" % trial)
        encodings = [ddp.encode_with_noise(update, plan, seed, rng) for _ in range(8)]
        total = reduce_modulus(np.sum(encodings, axis=0, dtype=np.uint32), 16)
        lifted = ddp.lift_sum(total, plan)
        exact = np.sum([centered_lift(e, 16) for e in encodings], axis=0)
        assert np.array_equal(lifted, exact)
        assert np.max(np.abs(lifted)) <= plan.sum_bound


def test_wrap_around_outside_validated_parameters_is_refused(plans):
    plan = plans[AggregateNoise.SKELLAM]
    # 1024 times the scale (and the rounding bound to match), but the old sum bound
    reckless = dataclasses.replace(
        plan,
        scale=plan.scale * 1024,
        l2_sensitivity_sq=ddp.rounded_norm_bound_sq(plan.scale * 1024, plan.padded_dimension, math.exp(-0.5)),
    )
    rng = SeededRandom.from_int(10)
    update = _updates(1, 700, seed=2)[0]
    total = np.zeros(plan.padded_dimension, dtype=np.uint32)
    for _ in range(5):
        total += ddp.encode_with_noise(update, reckless, SEED, rng)
    with pytest.raises(WrapAroundDetected, match="outside") as caught:
        ddp.decode_sum(reduce_modulus(total, plan.modulus_bits), plan, SEED, 5)
    assert caught.value.count > 0
    one_bad = np.zeros(plan.padded_dimension, dtype=np.uint32)
    one_bad[5] = plan.sum_bound + 1
    with pytest.raises(WrapAroundDetected) as caught:
        ddp.decode_sum(one_bad, plan, SEED, 5)
    assert caught.value.count == 1


def test_decode_and_encode_check_their_inputs(plans):
    plan = plans[AggregateNoise.SKELLAM]
    total = np.zeros(plan.padded_dimension, dtype=np.uint32)
    for survivors in (2, 6):
        with pytest.raises(ParameterError, match="3..5 survivors"):
            ddp.decode_sum(total, plan, SEED, survivors)
    with pytest.raises(ValueError, match="shape"):
        ddp.decode_sum(total[:-1], plan, SEED, 4)
    with pytest.raises(ValueError, match="unsigned"):
        ddp.decode_sum(total.astype(np.int64), plan, SEED, 4)
    rng = SeededRandom.from_int(0)
    with pytest.raises(ValueError, match="shape"):
        ddp.encode_with_noise(np.zeros(699), plan, SEED, rng)
    with pytest.raises(ValueError, match="NaN"):
        ddp.encode_with_noise(np.full(700, np.nan), plan, SEED, rng)


# ---- conditional rounding ------------------------------------------------------------------------


def test_exact_squared_norm():
    g = np.random.default_rng(0)
    values = g.integers(-(2**40) + 1, 2**40, size=3000, dtype=np.int64)
    assert ddp.squared_norm_exact(values) == sum(int(v) ** 2 for v in values)
    with pytest.raises(ValueError):
        ddp.squared_norm_exact(np.array([2**40], dtype=np.int64))


def test_conditional_rounding_enforces_the_bound():
    rng = SeededRandom.from_int(4)
    scaled = np.full(400, 0.5)  # each coordinate rounds to 0 or 1: the squared norm is Binomial(400, 1/2)
    tight = 190  # below the mean: most draws are refused and redrawn
    for _ in range(20):
        rounded = ddp.conditional_round(scaled, tight, rng)
        assert ddp.squared_norm_exact(rounded) <= tight and set(np.unique(rounded)) <= {0, 1}
    with pytest.raises(ParameterError, match="norm bound"):
        ddp.conditional_round(np.full(400, 0.999), 10, rng)


def test_rounded_norm_bound_matches_the_paper():
    c, n, beta = 1000.0, 4096, math.exp(-0.5)
    expected = c * c + n / 4 + 1.0 * (c + math.sqrt(n) / 2)  # sqrt(2 ln(1/beta)) = 1
    assert ddp.rounded_norm_bound_sq(c, n, beta) == math.floor(expected)
    # with a small beta the deterministic bound (c + sqrt(n))^2 can be the smaller one
    assert ddp.rounded_norm_bound_sq(0.0, 4, 1e-12) == 4


@pytest.mark.parametrize("mechanism", [ddp.AggregateNoise.SKELLAM, ddp.AggregateNoise.DISCRETE_GAUSSIAN])
def test_a_sum_beyond_the_norm_bound_is_refused(mechanism):
    """Honest noisy encodings pass the norm check; the same sum with one participant's garbage
    in it (inside the per-coordinate bound, but far beyond any honest norm) is refused."""
    plan = ddp.calibrate(
        ddp.AggregateNoiseConfig(
            mechanism=mechanism, clip_norm=1.0, dimension=1000, modulus_bits=32, max_participants=5,
            min_survivors=3, epsilon=5.0, delta=1e-5, rounds=1, budget_scope=ddp.BudgetScope.RUN,
        )
    )  # fmt: skip
    seed = rotation_seed(b"norm-check")
    rng = SeededRandom.from_int(11)
    total = np.zeros(plan.padded_dimension, dtype=np.uint32)
    for i in range(5):
        update = np.random.default_rng(i).normal(size=1000)
        total += ddp.encode_with_noise(update, plan, seed, rng)
    ddp.decode_sum(total, plan, seed, 5)  # honest: passes
    # Push every coordinate outward, most of the way to the per-coordinate bound but inside it:
    # no wrap-around to see, only a norm no honest sum reaches.
    lifted = ddp.lift_sum(total, plan)
    push = np.sign(lifted) * np.floor(0.9 * (plan.sum_bound - np.abs(lifted))).astype(np.int64)
    poisoned = reduce_modulus(total + to_modular(push, 32), 32)
    assert np.abs(ddp.lift_sum(poisoned, plan)).max() <= plan.sum_bound
    assert np.linalg.norm(ddp.lift_sum(poisoned, plan).astype(float)) > ddp.sum_norm_bound(plan, 5)
    with pytest.raises(ImplausibleSum, match="L2 norm"):
        ddp.decode_sum(poisoned, plan, seed, 5)
