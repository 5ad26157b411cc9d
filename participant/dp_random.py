"""The secret randomness of DP-SGD: which records a step samples, and the noise it adds.

DP-SGD's guarantee holds only if nobody who sees the released model can predict either, so both
come from a CSPRNG: the AES-256-CTR keystream of :class:`fedmask.secagg.rand.SeededRandom`,
keyed each round with 32 bytes of the operating system's CSPRNG (the construction the masks
use). torch's CPU generator is a Mersenne Twister, whose whole state follows from 624 of its
outputs; Opacus's ``secure_mode`` would swap it for torchcsprng, which has no build here.

Gaussian noise is drawn as Opacus's ``secure_mode`` draws it: each value is the sum of four
standard normals, halved (again N(0, 1)). One Box-Muller or ziggurat sample has a sparse
floating-point support, and where an output lands in it can tell which value the noise was added
to (Jin et al., arXiv:2112.05307); the sum's support is dense (Holohan and Braghin,
arXiv:2107.10138, section 5.1). The normals come from Marsaglia's polar method on 52-bit uniforms
(no trigonometry: 3.7 times faster than Box-Muller in numpy here).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from fedmask.secagg.rand import RandomSource, SeededRandom, SystemRandom

# Standard normals summed for one noise value (Opacus's secure_mode: 2n with n = 2).
NORMALS_PER_VALUE = 4
_CHUNK = 1 << 15  # normals per pass of the polar method
_INSIDE_THE_DISC = math.pi / 4  # the share of the square's points the polar method keeps


class DpRandomness:
    """Poisson masks and Gaussian noise for DP-SGD from a CSPRNG ``source``."""

    def __init__(self, source: RandomSource) -> None:
        self._source = source

    @classmethod
    def fresh(cls) -> DpRandomness:
        """Keyed from the OS's CSPRNG: what private training uses."""
        return cls(SeededRandom(SystemRandom().random_bytes(32)))

    @classmethod
    def reproducible(cls, label: str) -> DpRandomness:
        """Keyed by ``label``: the same draws every time. For tests and non-private references
        only: whoever knows the label can remove the noise."""
        return cls(SeededRandom(hashlib.sha256(label.encode("utf-8")).digest()))

    def uniforms(self, count: int) -> np.ndarray:
        """``count`` float64 uniforms in (0, 1): 52 random bits each, offset by half a unit so
        that neither 0 nor 1 occurs (with 53 bits the offset would round the largest to 1)."""
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        bits = np.frombuffer(self._source.random_bytes(8 * count), dtype="<u8") >> np.uint64(12)
        return (bits.astype(np.float64) + 0.5) * 2.0**-52

    def poisson_mask(self, count: int, sample_rate: float) -> torch.Tensor:
        """Which of ``count`` records a Poisson-sampled step takes: each independently with
        probability ``sample_rate`` (to 2^-52)."""
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        return torch.from_numpy(self.uniforms(count) < sample_rate)

    def standard_normals(self, count: int) -> np.ndarray:
        """``count`` independent N(0, 1) values, each the halved sum of four normals."""
        draws = self._normals(NORMALS_PER_VALUE * count).reshape(NORMALS_PER_VALUE, count)
        summed: np.ndarray = draws.sum(axis=0) / math.sqrt(NORMALS_PER_VALUE)
        return summed

    def _normals(self, count: int) -> np.ndarray:
        """``count`` independent N(0, 1) values by Marsaglia's polar method: a uniform point
        (x, y) of the square (-1, 1)^2 inside the unit disc, s = x^2 + y^2, gives the two
        normals x * f and y * f with f = sqrt(-2 ln(s) / s); points outside are drawn again.
        Worked in chunks whose arrays stay in cache."""
        out = np.empty(count)
        filled = 0
        while filled < count:
            wanted = min(count - filled, _CHUNK)
            pairs = math.ceil(wanted / 2 / _INSIDE_THE_DISC * 1.05) + 8
            square = self.uniforms(2 * pairs) * 2.0 - 1.0  # never 0: (2k + 1 - 2^52) / 2^52
            x, y = square[:pairs], square[pairs:]
            radius2 = x * x + y * y
            inside = radius2 < 1.0
            radius2 = radius2[inside]
            factor = np.sqrt(-2.0 * np.log(radius2) / radius2)
            normals = np.concatenate((x[inside] * factor, y[inside] * factor))
            take = min(normals.size, count - filled)
            out[filled : filled + take] = normals[:take]
            filled += take
        return out

    def gaussian(self, shape: torch.Size | tuple[int, ...], std: float, dtype: torch.dtype) -> torch.Tensor:
        """Noise of ``shape``, each value N(0, std^2), as ``dtype`` on the CPU."""
        if not (std >= 0.0 and math.isfinite(std)):
            raise ValueError(f"std must be a finite non-negative number, got {std}")
        count = math.prod(shape)
        values = self.standard_normals(count) * std
        return torch.from_numpy(values.reshape(tuple(shape))).to(dtype)
