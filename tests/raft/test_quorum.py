"""Quorum arithmetic versus naive definitions (Hypothesis)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from quorum.raft.quorum import INFINITE_INDEX, JointConfig, MajorityConfig, VoteResult

ids = st.frozensets(st.integers(1, 9), max_size=7)
acks = st.dictionaries(st.integers(1, 9), st.integers(0, 20))
votes = st.dictionaries(st.integers(1, 9), st.booleans())


def naive_committed(voters: frozenset[int], acked: dict[int, int]) -> int:
    """The largest index that a strict majority of voters has acknowledged."""
    if not voters:
        return INFINITE_INDEX
    best = 0
    for index in range(0, 21):
        if sum(1 for v in voters if acked.get(v, 0) >= index) * 2 > len(voters):
            best = index
    return best


def naive_vote(voters: frozenset[int], cast: dict[int, bool]) -> VoteResult:
    """Brute force over every way the missing voters could still vote."""
    if not voters:
        return VoteResult.WON
    missing = [v for v in voters if v not in cast]
    outcomes = set()
    for choice in itertools.product([True, False], repeat=len(missing)):
        full = {v: cast[v] for v in voters if v in cast} | dict(zip(missing, choice))
        outcomes.add(sum(full.values()) * 2 > len(voters))
    if outcomes == {True}:
        return VoteResult.WON
    if outcomes == {False}:
        return VoteResult.LOST
    return VoteResult.PENDING


@given(ids, acks)
def test_majority_committed_matches_naive(voters: frozenset[int], acked: dict[int, int]) -> None:
    got = MajorityConfig(voters).committed_index(acked.get)
    assert got == naive_committed(voters, acked)


@given(ids, ids, acks)
def test_joint_committed_is_min_of_halves(
    a: frozenset[int], b: frozenset[int], acked: dict[int, int]
) -> None:
    joint = JointConfig(a, b).committed_index(acked.get)
    assert joint == min(naive_committed(a, acked), naive_committed(b, acked))


@given(ids, votes)
def test_majority_vote_matches_brute_force(voters: frozenset[int], cast: dict[int, bool]) -> None:
    assert MajorityConfig(voters).vote_result(cast) == naive_vote(voters, cast)


@given(ids, ids, votes)
def test_joint_vote_needs_both_halves(
    a: frozenset[int], b: frozenset[int], cast: dict[int, bool]
) -> None:
    first, second = naive_vote(a, cast), naive_vote(b, cast)
    if VoteResult.LOST in (first, second):
        expected = VoteResult.LOST
    elif first == second == VoteResult.WON:
        expected = VoteResult.WON
    else:
        expected = VoteResult.PENDING
    assert JointConfig(a, b).vote_result(cast) == expected


def test_examples() -> None:
    cfg = MajorityConfig({1, 2, 3})
    assert cfg.committed_index({1: 5, 2: 3, 3: 1}.get) == 3
    assert cfg.committed_index({1: 5}.get) == 0
    assert cfg.vote_result({1: True, 2: True}) == VoteResult.WON
    assert cfg.vote_result({1: True, 2: False}) == VoteResult.PENDING
    assert cfg.vote_result({1: False, 2: False}) == VoteResult.LOST
    joint = JointConfig({1, 2, 3}, {3, 4, 5})
    assert joint.committed_index({1: 9, 2: 9, 3: 4, 4: 2}.get) == 2  # outgoing half lags
    assert joint.committed_index({1: 9, 2: 9, 3: 4, 4: 4}.get) == 4
    assert joint.describe() == "(1 2 3)&&(3 4 5)"
