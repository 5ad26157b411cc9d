"""``fedmask bench modes``: the Ed25519 floor it reports beside the two modes' rounds."""

from __future__ import annotations

import pytest

from fedmask.bench import modes_bench
from fedmask.secagg import keys


def test_a_round_s_signature_work_follows_the_protocol():
    # n = 10: the coordinator checks 10 advertisements; a participant checks its 9 neighbours'
    # and t = 7 survivor-list signatures, and signs 9 envelopes and the survivor list.
    assert modes_bench.SignatureWork.of_round(10) == modes_bench.SignatureWork(10, (9, 7), (9, 1))
    assert modes_bench.SignatureWork.of_round(100) == modes_bench.SignatureWork(100, (99, 67), (99, 1))


@pytest.mark.parametrize("workers", [1, 2])
def test_the_floor_times_exactly_that_work(monkeypatch, workers):
    checked: list[int] = []
    signed: list[int] = []
    verify, sign = keys.verify, keys.Signer.sign

    def counting_verify(*args: bytes) -> None:
        checked.append(1)
        verify(*args)

    def counting_sign(self: keys.Signer, payload: bytes) -> bytes:
        signed.append(1)
        return sign(self, payload)

    monkeypatch.setattr(keys, "verify", counting_verify)
    monkeypatch.setattr(keys.Signer, "sign", counting_sign)
    work = modes_bench.SignatureWork(10, (9, 7), (9, 1))
    seconds = modes_bench.signature_floor(work, workers, repeats=3)
    # Each batch once to warm up, then three timed runs; one signature makes the check.
    assert len(checked) == 4 * (10 + 9 + 7)
    assert len(signed) == 1 + 4 * (9 + 1)
    assert seconds > 0
