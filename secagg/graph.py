"""Neighbour graphs: who exchanges pairwise masks and holds shares of whom.

Classic SecAgg (Bonawitz et al., CCS 2017) links every pair of participants: the complete graph.
SecAgg+ (Bell et al., CCS 2020) links each participant to k others only: a Harary graph H_{k,n}
(the participants on a cycle, each linked to its k/2 nearest on either side) whose cycle order is
pseudorandom. The order is derived from a public per-round seed, the session id, so every party
computes the same graph on its own and no party picks it.

``find_secagg_plus_parameters`` chooses the degree k and the Shamir threshold t; the method and
its figures are in docs/secagg-plus.md.

Participant ids are ints >= 1: they double as Shamir x-coordinates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from types import MappingProxyType

import numpy as np

from . import prg
from .errors import SecAggError
from .params import MAX_PARTICIPANT_ID

__all__ = [
    "GraphError",
    "NeighbourGraph",
    "complete_graph",
    "cycle_order",
    "find_secagg_plus_parameters",
    "harary_graph",
]

# Rates given as floats are read as the nearest fraction with a denominator up to this, so that
# 1/3 means one third and 0.1 * 10 is 1, not 0.999...
_RATE_DENOMINATOR_LIMIT = 10**6
_CYCLE_LABEL = b"fedmask/secagg/v1/cycle-order"


class GraphError(SecAggError, ValueError):
    """Bad graph input (ids, degree, seed, unknown participant), or no SecAgg+ parameters meet
    the requested guarantees."""


class NeighbourGraph:
    """An undirected regular graph over participant ids, without self-loops.

    ``adjacency`` maps every id to its neighbours; None means the complete graph, which is kept
    implicit so that classic SecAgg over many participants does not store n^2 entries. The
    constructor checks that the graph is symmetric, loop-free and regular, so any instance can be
    trusted by the protocol code. Harary graphs (``harary_graph``) are kept as their cycle and
    answer ``neighbours`` on demand: a participant needs its own k neighbours, not all n*k links.
    """

    __slots__ = ("_ids", "_members", "_adjacency", "_degree", "_ring", "_position")

    _ids: tuple[int, ...]
    _members: frozenset[int]
    _adjacency: Mapping[int, frozenset[int]] | None
    _degree: int
    _ring: tuple[int, ...] | None
    _position: dict[int, int] | None

    def __init__(self, ids: Iterable[int], adjacency: Mapping[int, Iterable[int]] | None = None) -> None:
        members = _validated_ids(ids)
        member_set = frozenset(members)
        if adjacency is None:
            frozen_adjacency = None
            degree = len(members) - 1
        else:
            frozen_adjacency = _validated_adjacency(members, member_set, adjacency)
            degree = len(next(iter(frozen_adjacency.values())))
        self._init(members, member_set, frozen_adjacency, degree, None)

    @classmethod
    def _from_ring(cls, members: tuple[int, ...], ring: tuple[int, ...], degree: int) -> NeighbourGraph:
        # H_{k,n} is symmetric, loop-free and k-regular by construction (k < n - 1, and n even
        # when k is odd): nothing to check beyond what harary_graph validated.
        graph = cls.__new__(cls)
        graph._init(members, frozenset(members), None, degree, ring)
        return graph

    def _init(
        self,
        members: tuple[int, ...],
        member_set: frozenset[int],
        adjacency: Mapping[int, frozenset[int]] | None,
        degree: int,
        ring: tuple[int, ...] | None,
    ) -> None:
        object.__setattr__(self, "_ids", members)
        object.__setattr__(self, "_members", member_set)
        object.__setattr__(self, "_adjacency", adjacency)
        object.__setattr__(self, "_degree", degree)
        object.__setattr__(self, "_ring", ring)
        position = None if ring is None else {u: i for i, u in enumerate(ring)}
        object.__setattr__(self, "_position", position)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("NeighbourGraph is immutable")

    @property
    def ids(self) -> tuple[int, ...]:
        """Every participant of the graph, ascending."""
        return self._ids

    @property
    def cycle(self) -> tuple[int, ...]:
        """The participants in an order where neighbourhoods change little from one to the next:
        a Harary graph's cycle order; the ids ascending for any other graph."""
        return self._ring if self._ring is not None else self._ids

    @property
    def degree(self) -> int:
        """Neighbours per participant (the same for all)."""
        return self._degree

    @property
    def is_complete(self) -> bool:
        return self._degree == len(self._ids) - 1

    def neighbours(self, participant: int) -> frozenset[int]:
        """The participants linked to ``participant``; never contains ``participant`` itself."""
        if participant not in self:
            raise GraphError(f"participant {participant!r} is not in this graph")
        if self._ring is not None and self._position is not None:
            return self._ring_neighbours(self._ring, self._position[participant])
        if self._adjacency is None:
            return self._members - {participant}
        return self._adjacency[participant]

    def _ring_neighbours(self, ring: tuple[int, ...], position: int) -> frozenset[int]:
        count = len(ring)
        half = self._degree // 2
        linked = {ring[(position + step) % count] for step in range(-half, half + 1) if step}
        if self._degree % 2 == 1:
            linked.add(ring[(position + count // 2) % count])
        return frozenset(linked)

    def __contains__(self, participant: object) -> bool:
        # bool is an int subclass: True would otherwise pass for participant 1.
        return isinstance(participant, int) and not isinstance(participant, bool) and participant in self._members

    def __len__(self) -> int:
        return len(self._ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeighbourGraph):
            return NotImplemented
        if self._ids != other._ids or self._degree != other._degree:
            return False
        if self.is_complete:
            return True
        return all(self.neighbours(u) == other.neighbours(u) for u in self._ids)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = "complete" if self.is_complete else f"{self._degree}-regular"
        return f"NeighbourGraph({kind}, {len(self._ids)} participants)"


def complete_graph(ids: Iterable[int]) -> NeighbourGraph:
    """Every participant linked to every other one: classic SecAgg."""
    return NeighbourGraph(ids)


def cycle_order(ids: Iterable[int], seed: bytes) -> tuple[int, ...]:
    """The ids in the order they take on the Harary cycle.

    The i-th smallest id gets the i-th 64-bit word of AES-256-CTR keyed with
    SHA-256(label || seed) (the mask PRG of ``prg``); ids are sorted by their words, ties (chance
    about n^2 / 2^65) broken by id so the order is total. Anyone holding the seed gets the same
    order, and without it the order looks uniformly random. One keystream and a numpy sort keep
    this at well under a millisecond for thousands of participants, which matters because every
    participant computes it.
    """
    return _cycle_order(_validated_ids(ids), _validated_seed(seed))


def _cycle_order(members: tuple[int, ...], seed: bytes) -> tuple[int, ...]:
    key = hashlib.sha256(_CYCLE_LABEL + seed).digest()
    words = prg.expand(key, len(members), 64)
    ordered_ids = np.array(members, dtype=np.uint64)
    return tuple(int(u) for u in ordered_ids[np.lexsort((ordered_ids, words))])


def harary_graph(ids: Iterable[int], degree: int, seed: bytes) -> NeighbourGraph:
    """SecAgg+'s graph: H_{degree,n} over the ids in ``cycle_order(ids, seed)``.

    Each participant is linked to the degree//2 nearest on either side of the cycle; an odd degree
    adds the participant diametrically opposite, which needs an even number of participants (a
    k-regular graph on n nodes has n*k/2 edges). A degree of n-1 or more gives the complete graph.
    ``seed`` must be public and fixed only after the participant set is: the session id.
    """
    members = _validated_ids(ids)
    if not isinstance(degree, int) or isinstance(degree, bool):
        raise GraphError(f"degree must be an int, got {type(degree).__name__}")
    if degree < 2:
        raise GraphError(f"the SecAgg+ graph needs degree >= 2, got {degree}")
    key = _validated_seed(seed)
    count = len(members)
    if degree >= count - 1:
        return NeighbourGraph(members)
    if degree % 2 == 1 and count % 2 == 1:
        raise GraphError(f"no {degree}-regular graph on {count} participants: an odd degree needs an even count")
    return NeighbourGraph._from_ring(members, _cycle_order(members, key), degree)


def find_secagg_plus_parameters(
    n: int,
    *,
    dropout_fraction: float | Fraction,
    corruption_fraction: float | Fraction,
    security_bits: int = 40,
    correctness_bits: int = 20,
    malicious_server: bool = False,
) -> tuple[int, int]:
    """The smallest even degree k < n-1 and a threshold t for a SecAgg+ round of n participants.

    Up to floor(corruption_fraction * n) participants collude with the server, and up to
    floor(dropout_fraction * n) drop out. The graph is a Harary graph under a uniformly random
    cycle order; each participant's k neighbours are then a uniform k-subset, and the counts of
    corrupted and surviving neighbours are hypergeometric. With a union bound over the n
    participants, (k, t) is accepted when

    - the honest survivors stay connected, except with probability < 2^-(security_bits+1);
    - no honest participant has t or more corrupted neighbours (who could rebuild its secrets),
      except with probability < 2^-(security_bits+1); t is the smallest such threshold;
    - every participant keeps at least t surviving neighbours, except with probability
      < 2^-correctness_bits.

    All tails are exact integer sums, so no probability underflows. The model is the one behind
    Google's federated-compute finder and reproduces its published semi-honest figures (for
    example n=1000 at 0.33 corrupt + 0.33 dropout gives (286, 150)).

    ``malicious_server``: the server may tell different neighbours different stories about who
    dropped. Each participant also holds a share of its own secrets (k + 1 holders), so t is
    raised until 2t > k + 1 + (corrupted neighbours) holds with the same probability; this is
    one more than federated-compute's rule for some inputs, because there a participant's own
    share is left out of the count. The result satisfies ``2t > k + 1``, as params requires.

    t is at least 2 (a 1-of-k sharing hands out the secret itself) and the correctness bound is
    checked at the returned t. Raises GraphError when no even k < n-1 qualifies: use the complete
    graph then.
    """
    _check_count(n)
    corruption = _validated_rate("corruption_fraction", corruption_fraction)
    dropout = _validated_rate("dropout_fraction", dropout_fraction)
    for name, bits in (("security_bits", security_bits), ("correctness_bits", correctness_bits)):
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 256:
            raise GraphError(f"{name} must be an int in [1, 256], got {bits!r}")
    # The thresholds must separate what the adversary holds from what survives: t > (corrupt
    # share of k) and t <= (surviving share of k); a lying server needs t > (k + corrupt) / 2.
    if malicious_server and corruption + 2 * dropout >= 1:
        raise GraphError("with a malicious server, corruption_fraction + 2 * dropout_fraction must be below 1")
    if corruption + dropout >= 1:
        raise GraphError("corruption_fraction + dropout_fraction must be below 1")

    corrupted = math.floor(corruption * n)
    survivors = n - math.floor(dropout * n)
    lost = corrupted + (n - survivors)
    # Half the security budget for each of the two bad events, and 1/n of it for each node.
    security_scale = n << (security_bits + 1)
    correctness_scale = n << correctness_bits

    for degree in range(2, n - 1, 2):
        subsets = math.comb(n, degree)
        if not _honest_survivors_stay_connected(n, degree, lost, security_bits, subsets):
            continue
        threshold = _smallest_safe_threshold(n, corrupted, degree, security_scale, subsets)
        if malicious_server:
            threshold = (degree + 1 + threshold + 1) // 2  # ceil((k + 1 + t) / 2)
        threshold = max(threshold, 2)
        if threshold > degree:
            continue
        if _reconstruction_may_fail(n, survivors, degree, threshold, correctness_scale, subsets):
            continue
        return degree, threshold
    raise GraphError(
        f"no SecAgg+ degree below {n - 1} meets {security_bits}-bit security and {correctness_bits}-bit "
        f"correctness for {n} participants at corruption {corruption} and dropout {dropout}; "
        "use the complete graph"
    )


def _honest_survivors_stay_connected(n: int, degree: int, lost: int, security_bits: int, subsets: int) -> bool:
    """Removing nodes from H_{k,n} disconnects it only if two disjoint runs of k/2 consecutive
    cycle positions are all removed. Fewer than n(n-k-1)/2 such pairs exist, and a given set of
    k positions is all corrupted-or-dropped with probability C(lost, k) / C(n, k)."""
    if degree > lost:
        return True
    # n(n-k-1)/2 * C(lost,k)/C(n,k) < 2^-(security_bits+1), multiplied out.
    return n * (n - degree - 1) * math.comb(lost, degree) << security_bits < subsets


def _smallest_safe_threshold(n: int, corrupted: int, degree: int, scale: int, subsets: int) -> int:
    """The smallest t with scale * #{k-subsets holding >= t corrupted nodes} < C(n, k).

    Sums the upper tail from its far end, stepping each hypergeometric weight
    C(corrupted, x) * C(n - corrupted, k - x) to the next by an exact integer ratio."""
    honest = n - corrupted
    top = min(degree, corrupted)
    bottom = max(0, degree - honest)
    weight = math.comb(corrupted, top) * math.comb(honest, degree - top)
    tail = 0
    for x in range(top, bottom - 1, -1):
        if (tail + weight) * scale >= subsets:
            return x + 1
        tail += weight
        if x > bottom:
            weight = weight * x * (honest - degree + x) // ((corrupted - x + 1) * (degree - x + 1))
    return bottom  # unreachable: the whole distribution sums to C(n, k) and scale >= 1


def _reconstruction_may_fail(n: int, survivors: int, degree: int, threshold: int, scale: int, subsets: int) -> bool:
    """Whether scale * #{k-subsets holding fewer than t survivors} >= C(n, k)."""
    dropped = n - survivors
    bottom = max(0, degree - dropped)
    if threshold <= bottom:
        return False
    weight = math.comb(survivors, bottom) * math.comb(dropped, degree - bottom)
    tail = 0
    for z in range(bottom, min(threshold, degree + 1)):
        tail += weight
        if tail * scale >= subsets:
            return True
        weight = weight * (survivors - z) * (degree - z) // ((z + 1) * (dropped - degree + z + 1))
    return False


def _validated_ids(ids: Iterable[int]) -> tuple[int, ...]:
    if isinstance(ids, (str, bytes)):
        raise GraphError("ids must be an iterable of ints")
    members = tuple(ids)
    if not members:
        raise GraphError("a graph needs at least one participant")
    for u in members:
        if not isinstance(u, int) or isinstance(u, bool):
            raise GraphError(f"participant ids must be ints, got {u!r}")
        if not 1 <= u <= MAX_PARTICIPANT_ID:
            raise GraphError(f"participant id {u} is outside [1, {MAX_PARTICIPANT_ID}]")
    ordered = tuple(sorted(members))
    for previous, current in zip(ordered, ordered[1:], strict=False):
        if previous == current:
            raise GraphError(f"participant id {current} appears more than once")
    return ordered


def _validated_adjacency(
    members: tuple[int, ...], member_set: frozenset[int], adjacency: Mapping[int, Iterable[int]]
) -> Mapping[int, frozenset[int]]:
    if set(adjacency) != member_set:
        strays = sorted(set(adjacency) ^ member_set, key=repr)
        raise GraphError(f"adjacency keys differ from the ids at {strays[0]!r}")
    frozen = {u: frozenset(adjacency[u]) for u in members}
    degree = len(frozen[members[0]])
    for u, linked in frozen.items():
        if u in linked:
            raise GraphError(f"participant {u} is linked to itself")
        if not linked <= member_set:
            raise GraphError(f"participant {u} is linked to unknown participant {min(linked - member_set, key=repr)!r}")
        if len(linked) != degree:
            raise GraphError(f"the graph is not regular: {u} has {len(linked)} neighbours, {members[0]} has {degree}")
        for v in linked:
            if u not in frozen[v]:
                raise GraphError(f"the graph is not symmetric: {v} is a neighbour of {u} but not the reverse")
    return MappingProxyType(frozen)


def _validated_seed(seed: bytes) -> bytes:
    if not isinstance(seed, (bytes, bytearray, memoryview)):
        raise GraphError(f"seed must be bytes, got {type(seed).__name__}")
    key = bytes(seed)
    if not key:
        raise GraphError("seed must not be empty")
    return key


def _check_count(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise GraphError(f"n must be a positive int, got {n!r}")


def _validated_rate(name: str, rate: float | Fraction) -> Fraction:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, Fraction)):
        raise GraphError(f"{name} must be a number, got {rate!r}")
    if isinstance(rate, float) and not math.isfinite(rate):
        raise GraphError(f"{name} must be finite, got {rate!r}")
    value = Fraction(rate)
    if isinstance(rate, float):
        value = value.limit_denominator(_RATE_DENOMINATOR_LIMIT)
    if not 0 <= value < 1:
        raise GraphError(f"{name} must be in [0, 1), got {rate!r}")
    return value
