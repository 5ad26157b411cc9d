import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

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


@pytest.mark.parametrize("dimension", [1, 7, prg._CHUNK_VALUES - 1, prg._CHUNK_VALUES, 3 * prg._CHUNK_VALUES + 5])
def test_add_masks_equals_sum_of_expansions_across_chunk_boundaries(dimension):
    seeds = [bytes([i]) * 32 for i in range(1, 6)]
    acc = np.arange(dimension, dtype=np.uint32)
    prg.add_masks(acc, seeds[:3], seeds[3:])
    expected = np.arange(dimension, dtype=np.uint32)
    for s in seeds[:3]:
        expected += prg.expand(s, dimension, 32)
    for s in seeds[3:]:
        expected -= prg.expand(s, dimension, 32)
    assert np.array_equal(acc, expected)


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
