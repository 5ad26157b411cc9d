"""``fedmask bench secagg``: the keystream each row's unmask must regenerate, the limits it is
put against, and the table that shows both."""

from __future__ import annotations

import pytest

from fedmask.bench.secagg_bench import aes_ctr_throughput_gbps, keystream_bytes, prg_floor_s, render_table


def _row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "participants": 100,
        "dim": 1_000_000,
        "graph": "complete",
        "threshold": 67,
        "exact": True,
        "survivors": 90,
        "dropped": 10,
        "client_share_s": 0.01,
        "client_mask_s": 0.03,
        "server_unmask_s": 0.3,
        "server_unmask_receive_s": 0.01,
        "round_s": 5.0,
        "upload_bytes_per_value": 4.024,
        "server_peak_rss_mb": 80.0,
    }
    row.update(overrides)
    return row


def test_the_unmask_regenerates_every_self_mask_and_each_dropped_participants_pairwise_masks() -> None:
    # Complete graph: 90 self masks, and each of the 10 dropped shares a mask with all 90 survivors.
    assert keystream_bytes(_row()) == (90 + 10 * 90) * 1_000_000 * 4
    # SecAgg+ (degree 102): a dropped participant's masks are with its neighbours only.
    harary = _row(participants=1000, dim=100_000, graph="harary-102", survivors=900, dropped=100)
    assert keystream_bytes(harary) == (900 + 100 * 102) * 100_000 * 4
    # Fewer survivors than neighbours: only survivors' masks are left to undo.
    assert keystream_bytes(_row(participants=10, survivors=2, dropped=8)) == (2 + 8 * 2) * 1_000_000 * 4
    assert prg_floor_s(_row(), 4.0) == pytest.approx(keystream_bytes(_row()) / 4e9)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_keystream_limit_is_measured_on_as_many_threads_as_asked(threads: int) -> None:
    assert aes_ctr_throughput_gbps(megabytes=2, chunks=(1 << 16,), threads=threads) > 0


def test_the_table_puts_each_unmask_against_both_limits_measured_for_its_row() -> None:
    row = _row(
        aes_ctr_gbps=6.0,
        aes_ctr_workers_gbps=11.0,
        prg_floor_s=0.66,
        unmask_over_prg_floor=0.3 / 0.66,
        prg_workers_floor_s=0.36,
        unmask_over_workers_floor=0.3 / 0.36,
    )
    table = render_table({"aes_ctr_gbps": 6.0, "dropout": 0.1, "cpus": 2, "workers": 2, "rows": [row]})
    header, rule, line = table.splitlines()[-3:]
    names = [cell.strip() for cell in header.strip("|").split("|")]
    values = [cell.strip() for cell in line.strip("|").split("|")]
    cells = dict(zip(names, values, strict=True))
    assert rule.count("---") == len(cells)
    assert cells["server unmask s"] == "0.300"
    assert cells["unmask / floor"] == "0.45"
    assert cells["floor on all mask threads s"] == "0.360"
    assert cells["unmask / that floor"] == "0.83"
