"""The global adapter's file: how large a participant lets an announced one be."""

from __future__ import annotations

import numpy as np
import pytest

from fedmask.adapter import payload as adapter_payload

LAYOUT = [{"name": "base_model.classifier.weight", "shape": [2, 384], "dtype": "float32"}]


@pytest.mark.parametrize("dimension", [1, 7, 9, 10, 99, 768, 12_345, 1_000_000])
@pytest.mark.parametrize("round_number", [0, 9, 10, 1234])
def test_the_bound_holds_every_packed_file_and_is_tight(dimension: int, round_number: int) -> None:
    size = len(adapter_payload.pack(np.zeros(dimension, dtype=np.float32), LAYOUT, round_number).data)
    bound = adapter_payload.size_bound(LAYOUT, dimension, round_number)
    # At most the 8-byte alignment and the shape's and offsets' digits above the file itself.
    assert size <= bound <= size + 7 + 2 * len(str(4 * dimension))


def test_an_adapter_has_a_value() -> None:
    with pytest.raises(adapter_payload.AdapterPayloadError, match="at least one value"):
        adapter_payload.size_bound(LAYOUT, 0, 0)
