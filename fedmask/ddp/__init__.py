"""Distributed differential privacy under secure aggregation: each participant adds a share of
exact integer noise before masking, so the sum the coordinator unmasks already carries it.

A layer above ``fedmask.secagg`` (it uses its encoding and randomness, and nothing in secagg uses
it). Modules: ``mechanism`` (configuration, calibration, encoding and decoding), ``samplers``
(exact discrete Gaussian, Skellam, ...), ``exactmath``, ``rotation`` (randomised Hadamard) and
``accounting`` (participant-level RDP of the summed noise). docs/distributed-dp.md has the details.
"""

from fedmask.ddp.mechanism import (
    AggregateNoise,
    AggregateNoiseConfig,
    AggregateNoisePlan,
    BudgetScope,
    WrapAroundDetected,
    calibrate,
    central_gaussian_variance,
    decode_sum,
    encode_with_noise,
)

__all__ = [
    "AggregateNoise",
    "AggregateNoiseConfig",
    "AggregateNoisePlan",
    "BudgetScope",
    "WrapAroundDetected",
    "calibrate",
    "central_gaussian_variance",
    "decode_sum",
    "encode_with_noise",
]
