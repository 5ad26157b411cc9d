"""Neighbour graphs and the SecAgg+ parameter finder."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmask.secagg.graph import (
    GraphError,
    NeighbourGraph,
    complete_graph,
    cycle_order,
    find_secagg_plus_parameters,
    harary_graph,
)

SEED = bytes(range(32))


def _is_connected(graph: NeighbourGraph, members: set[int]) -> bool:
    if not members:
        return True
    start = next(iter(members))
    seen = {start}
    frontier = [start]
    while frontier:
        u = frontier.pop()
        for v in graph.neighbours(u) & members:
            if v not in seen:
                seen.add(v)
                frontier.append(v)
    return seen == members


class TestCompleteGraph:
    def test_every_pair_linked(self):
        graph = complete_graph([3, 1, 2, 7])
        assert graph.ids == (1, 2, 3, 7)
        assert graph.degree == 3
        assert graph.is_complete
        assert graph.neighbours(3) == frozenset({1, 2, 7})

    def test_unknown_participant(self):
        with pytest.raises(GraphError, match="not in this graph"):
            complete_graph([1, 2]).neighbours(5)

    def test_bool_is_not_participant_one(self):
        graph = complete_graph([1, 2])
        assert True not in graph
        assert 1 in graph

    @pytest.mark.parametrize(
        "ids, message",
        [([], "at least one"), ([1, 1], "more than once"), ([0, 1], "outside"), (["a"], "ints"), ("12", "iterable")],
    )
    def test_bad_ids(self, ids, message):
        with pytest.raises(GraphError, match=message):
            complete_graph(ids)

    def test_immutable(self):
        with pytest.raises(AttributeError):
            complete_graph([1, 2]).degree = 5  # type: ignore[misc]


class TestHararyGraph:
    @pytest.mark.parametrize("n, k", [(10, 2), (10, 4), (10, 6), (10, 3), (11, 4), (50, 8), (101, 20)])
    def test_regular_symmetric_connected(self, n, k):
        graph = harary_graph(range(1, n + 1), k, SEED)
        assert graph.degree == k
        for u in graph.ids:
            linked = graph.neighbours(u)
            assert len(linked) == k and u not in linked
            assert all(u in graph.neighbours(v) for v in linked)
        assert _is_connected(graph, set(graph.ids))

    def test_neighbours_are_cycle_neighbours(self):
        ring = cycle_order(range(1, 13), SEED)
        graph = harary_graph(range(1, 13), 4, SEED)
        position = ring.index(5)
        expected = {ring[(position + step) % 12] for step in (-2, -1, 1, 2)}
        assert graph.neighbours(5) == frozenset(expected)

    def test_k_connectivity_survives_any_k_minus_one_removals(self):
        # H_{k,n} is k-connected: removing any k-1 nodes leaves it connected.
        graph = harary_graph(range(1, 11), 4, SEED)
        for removed in itertools.combinations(graph.ids, 3):
            assert _is_connected(graph, set(graph.ids) - set(removed))

    def test_large_degree_is_complete(self):
        assert harary_graph(range(1, 6), 4, SEED) == complete_graph(range(1, 6))
        assert harary_graph(range(1, 6), 9, SEED).is_complete

    def test_same_seed_same_graph_other_seed_other_graph(self):
        ids = range(1, 41)
        assert harary_graph(ids, 6, SEED) == harary_graph(ids, 6, SEED)
        assert harary_graph(ids, 6, SEED) != harary_graph(ids, 6, b"another session id")

    def test_cycle_order_known_answer(self):
        # Recomputed here from the definition (AES-256-CTR keyed with SHA-256(label || seed), zero
        # counter, one 64-bit little-endian word per id in ascending id order) so that a change of
        # derivation, which would split a federation into incompatible graphs, fails loudly.
        import hashlib

        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        ids = list(range(1, 9))
        key = hashlib.sha256(b"fedmask/secagg/v1/cycle-order" + SEED).digest()
        stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(8 * len(ids)))
        words = [int.from_bytes(stream[8 * i : 8 * i + 8], "little") for i in range(len(ids))]
        expected = [u for _, u in sorted(zip(words, ids, strict=True))]
        assert cycle_order(ids, SEED) == tuple(expected)
        assert cycle_order(ids, SEED) != tuple(ids)
        assert sorted(cycle_order(range(1, 1001), SEED)) == list(range(1, 1001))

    def test_lazy_ring_equals_explicit_adjacency(self):
        ids = range(1, 31)
        graph = harary_graph(ids, 7 - 1, SEED)
        explicit = NeighbourGraph(ids, {u: graph.neighbours(u) for u in ids})
        assert graph == explicit

    @pytest.mark.parametrize(
        "ids, k, seed, message",
        [
            (range(1, 10), 3, SEED, "odd degree"),
            (range(1, 10), 1, SEED, "degree >= 2"),
            (range(1, 10), 2.0, SEED, "must be an int"),
            (range(1, 10), 2, b"", "must not be empty"),
            (range(1, 10), 2, "seed", "must be bytes"),
        ],
    )
    def test_bad_input(self, ids, k, seed, message):
        with pytest.raises(GraphError, match=message):
            harary_graph(ids, k, seed)

    def test_explicit_adjacency_is_checked(self):
        with pytest.raises(GraphError, match="symmetric"):
            NeighbourGraph([1, 2, 3], {1: {2}, 2: {3}, 3: {1}})
        with pytest.raises(GraphError, match="itself"):
            NeighbourGraph([1, 2], {1: {1}, 2: {2}})
        with pytest.raises(GraphError, match="regular"):
            NeighbourGraph([1, 2, 3, 4], {1: {2, 3}, 2: {1}, 3: {1}, 4: set()})
        with pytest.raises(GraphError, match="unknown"):
            NeighbourGraph([1, 2], {1: {9}, 2: {1}})

    @settings(max_examples=40, deadline=None)
    @given(n=st.integers(4, 60), half=st.integers(1, 10), seed=st.binary(min_size=1, max_size=32))
    def test_property_regular_and_symmetric(self, n, half, seed):
        k = min(2 * half, n - 1)
        if k < 2 or (k % 2 == 1 and n % 2 == 1):
            return
        graph = harary_graph(range(1, n + 1), k, seed)
        assert all(len(graph.neighbours(u)) == k for u in graph.ids)
        assert all(u in graph.neighbours(v) for u in graph.ids for v in graph.neighbours(u))


class TestParameterFinder:
    # Google fcp/secagg's published semi-honest figures at 0.33 corrupt + 0.33 dropout.
    @pytest.mark.parametrize("n, expected", [(10, (8, 4)), (100, (68, 34)), (1000, (286, 150))])
    def test_fcp_published_figures(self, n, expected):
        assert find_secagg_plus_parameters(n, dropout_fraction=0.33, corruption_fraction=0.33) == expected

    def test_exact_thirds(self):
        # One third exactly rounds fewer participants down than 0.33: a little more degree at n=1000.
        third = Fraction(1, 3)
        assert find_secagg_plus_parameters(100, dropout_fraction=third, corruption_fraction=third) == (68, 34)
        assert find_secagg_plus_parameters(1000, dropout_fraction=third, corruption_fraction=third) == (292, 154)

    def test_degree_grows_slowly(self):
        degrees = [
            find_secagg_plus_parameters(n, dropout_fraction=0.1, corruption_fraction=0.1)[0] for n in (100, 1000, 5000)
        ]
        assert degrees == sorted(degrees)
        assert degrees[-1] < 5000 // 10

    @pytest.mark.parametrize("n", [100, 1000])
    def test_malicious_threshold_majority(self, n):
        k, t = find_secagg_plus_parameters(n, dropout_fraction=0.1, corruption_fraction=0.1, malicious_server=True)
        assert 2 * t > k + 1
        assert t <= k

    def test_finder_output_is_accepted_by_params(self):
        from fedmask.secagg import ProtocolParams, SecurityMode

        k, t = find_secagg_plus_parameters(1000, dropout_fraction=0.1, corruption_fraction=0.1, malicious_server=True)
        params = ProtocolParams(dimension=10, modulus_bits=32, threshold=t, mode=SecurityMode.MALICIOUS, neighbours=k)
        params.validate(1000)

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            ({"dropout_fraction": 0.5, "corruption_fraction": 0.5}, "below 1"),
            ({"dropout_fraction": 0.4, "corruption_fraction": 0.3, "malicious_server": True}, "malicious"),
            ({"dropout_fraction": float("nan"), "corruption_fraction": 0.1}, "finite"),
            ({"dropout_fraction": -0.1, "corruption_fraction": 0.1}, r"\[0, 1\)"),
            ({"dropout_fraction": "0.1", "corruption_fraction": 0.1}, "number"),
            ({"dropout_fraction": 0.1, "corruption_fraction": 0.1, "security_bits": 0}, "security_bits"),
        ],
    )
    def test_bad_input(self, kwargs, message):
        with pytest.raises(GraphError, match=message):
            find_secagg_plus_parameters(100, **kwargs)

    def test_small_n_needs_complete_graph(self):
        with pytest.raises(GraphError, match="complete graph"):
            find_secagg_plus_parameters(5, dropout_fraction=0.33, corruption_fraction=0.33)


def test_the_cycle_is_the_harary_order_or_the_ids():
    ids = list(range(3, 40, 3))
    graph = harary_graph(ids, 4, SEED)
    assert graph.cycle == cycle_order(ids, SEED)
    for position, u in enumerate(graph.cycle):  # neighbours are the cycle's nearest two on each side
        nearest = {graph.cycle[(position + step) % len(ids)] for step in (-2, -1, 1, 2)}
        assert graph.neighbours(u) == nearest
    assert complete_graph(ids).cycle == tuple(ids)
