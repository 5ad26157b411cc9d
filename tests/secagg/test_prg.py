import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedmask.parallel import ThreadPartRunner
from fedmask.secagg import prg


def _aes_ecb_counter_blocks(key: bytes, blocks: int) -> bytes:
    """CTR keystream computed independently: AES-ECB of the counter blocks 0, 1, 2, ..."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(b"".join(i.to_bytes(16, "big") for i in range(blocks)))


@pytest.mark.parametrize("bits", [32, 64])
def test_expand_is_aes256_ctr_keystream_little_endian(bits):
    key = bytes(range(32))
    mask = prg.expand(key, 40, bits)
    raw = _aes_ecb_counter_blocks(key, 40 * (bits // 8) // 16)
    assert np.array_equal(mask, np.frombuffer(raw, dtype=mask.dtype))


def test_expand_reduces_modulo_2_to_the_b():
    for bits in (1, 7, 31, 33, 63):
        mask = prg.expand(b"\x01" * 32, 1000, bits)
        assert int(mask.max()) < 1 << bits
        assert int(mask.max()) >= 1 << (bits - 1)  # the top bit is used


class _RecordingRunner:
    """Runs the jobs one after another (last first, so no part relies on the order) and
    records how many there were."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self.calls: list[int] = []

    def __call__(self, jobs):
        self.calls.append(len(jobs))
        for job in reversed(jobs):
            job()


@pytest.mark.parametrize("dimension", [1, 7, prg._CHUNK_VALUES - 1, prg._CHUNK_VALUES, 3 * prg._CHUNK_VALUES + 5])
@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("runner", [None, "threads-2", "threads-3", "reversed-4"])
def test_add_masks_equals_sum_of_expansions_across_chunk_boundaries(dimension, bits, runner):
    """Bit for bit, whether the vector is masked whole or in parts (each part's keystream starts
    at its offset: a wrong counter would give a different mask in every part but the first)."""
    runners = {"threads-2": ThreadPartRunner(2), "threads-3": ThreadPartRunner(3), "reversed-4": _RecordingRunner(4)}
    dtype = prg.dtype_for_bits(bits)
    seeds = [bytes([i]) * 32 for i in range(1, 6)]
    acc = np.arange(dimension, dtype=dtype)
    prg.add_masks(acc, seeds[:3], seeds[3:], runner=runners.get(runner))
    expected = np.arange(dimension, dtype=dtype)
    for s in seeds[:3]:
        expected += prg.expand(s, dimension, bits)
    for s in seeds[3:]:
        expected -= prg.expand(s, dimension, bits)
    assert np.array_equal(acc, expected)
    if runner == "reversed-4":  # four parts of the vector (4 chunks) or of the five masks
        assert runners[runner].calls == [4]


def test_bad_seeds_are_refused_before_any_part_runs():
    runner = _RecordingRunner(2)
    acc = np.zeros(3 * prg._CHUNK_VALUES, dtype=np.uint32)
    with pytest.raises(ValueError, match="32 bytes"):
        prg.add_masks(acc, [b"a" * 32, b"short"], runner=runner)
    assert runner.calls == [] and not acc.any()  # nothing half-masked


def test_add_then_subtract_cancels_exactly():
    acc = np.arange(50_000, dtype=np.uint64)
    prg.add_masks_signed(acc, [(b"a" * 32, +1), (b"b" * 32, -1), (b"a" * 32, -1), (b"b" * 32, +1)])
    assert np.array_equal(acc, np.arange(50_000, dtype=np.uint64))


def test_distinct_seeds_give_distinct_masks():
    assert not np.array_equal(prg.expand(b"a" * 32, 64, 32), prg.expand(b"b" * 32, 64, 32))


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33])
def test_seed_length_is_checked(bad):
    with pytest.raises(ValueError):
        prg.expand(bad, 8, 32)


def test_bad_accumulator_is_refused():
    with pytest.raises(ValueError):
        prg.add_masks(np.zeros(4, dtype=np.int32), [b"a" * 32])
    with pytest.raises(ValueError):
        prg.dtype_for_bits(65)
