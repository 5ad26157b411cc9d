"""Metrics inside the masked vector: their sum decodes exactly; impossible totals are refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedmask.adapter.metrics import (
    LOSS_SCALE,
    METRIC_COORDINATES,
    RoundMetrics,
    decode_metrics,
    encode_metrics,
    per_participant_cap,
)
from fedmask.secagg.encoding import ImplausibleSum


def test_the_sum_of_encoded_metrics_decodes_to_the_totals():
    parties = [RoundMetrics(70, 100, 0.5 * 100, 400), RoundMetrics(30, 80, 1.25 * 80, 320), RoundMetrics(0, 0, 0, 10)]
    total = sum(encode_metrics(m, 32, 3).astype(np.uint64) for m in parties) & np.uint64(2**32 - 1)
    totals = decode_metrics(total.astype(np.uint32), 32, 3, survivors=3)
    assert (totals.heldout_correct, totals.heldout_count, totals.train_records) == (100, 180, 730)
    assert totals.accuracy == pytest.approx(100 / 180)
    # Fixed point: each party's mean loss is carried to 1/256 nat.
    assert abs(totals.heldout_loss_sum - (50 + 100)) <= 180 / (2 * LOSS_SCALE)
    assert encode_metrics(parties[0], 32, 3).shape == (METRIC_COORDINATES,)


def test_values_are_capped_so_the_sum_cannot_wrap():
    cap = per_participant_cap(32, 1000)
    assert 1000 * cap < 2**31
    huge = RoundMetrics(10**9, 10**9, 0.0, 10**9)
    assert int(encode_metrics(huge, 32, 1000).max()) == cap


def test_totals_no_honest_participants_can_produce_are_refused():
    with pytest.raises(ImplausibleSum):
        decode_metrics(np.array([5, 4, 0, 1], dtype=np.uint32), 32, 3, survivors=3)  # correct > count
    garbage = np.full(METRIC_COORDINATES, 2**31, dtype=np.uint32)
    with pytest.raises(ImplausibleSum):
        decode_metrics(garbage, 32, 3, survivors=3)
    with pytest.raises(ValueError):
        encode_metrics(RoundMetrics(3, 2, 0.0, 1), 32, 3)
