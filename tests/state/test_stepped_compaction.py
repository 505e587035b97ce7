"""Compaction in steps (CompactionRequest.start/limit): each step is a command of its own, so
a large compaction never holds the state machine for long. What must hold:

- after every step, every read at a revision the compaction keeps answers what it answers
  after a one-shot compaction at the same revision, and HashKV is already the final one;
- the last step leaves exactly the records, digest and hash of the one-shot compaction;
- a replica restored from a snapshot taken between two steps, then given the same remaining
  steps, is identical to the replica that took the snapshot, at every index.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from quorum.errors import InvalidRequest, RevisionCompacted
from quorum.state import (
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    StateMachine,
    mvcc,
)
from quorum.state.commands import encode_command


def _history(seed: int, keys: int, writes: int) -> list[Any]:
    rng = random.Random(seed)
    out: list[Any] = []
    for _ in range(writes):
        key = b"k%03d" % rng.randrange(keys)
        if rng.random() < 0.2:
            out.append(DeleteRangeRequest(key))
        else:
            out.append(PutRequest(key, b"v%d" % rng.randrange(1000)))
    return out


def _machine(history: list[Any]) -> tuple[StateMachine, int]:
    sm = StateMachine()
    index = 0
    for req in history:
        index += 1
        sm.apply(index, encode_command(req))
    return sm, index


def _reads(sm: StateMachine, lo: int) -> list[Any]:
    """Every key at every revision from ``lo`` to the current one."""
    return [sm.range(RangeRequest(b"\0", b"\0", revision=rev)).kvs
            for rev in range(lo, sm.revision + 1)]


def _compact(sm: StateMachine, index: int, req: CompactionRequest) -> tuple[CompactionResponse, int]:
    index += 1
    res = sm.apply(index, encode_command(req))
    assert isinstance(res, CompactionResponse)
    return res, index


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), keys=st.integers(1, 30), writes=st.integers(1, 200),
       limit=st.integers(1, 7), at=st.floats(0.0, 1.0))
def test_steps_end_where_one_shot_compaction_ends(seed: int, keys: int, writes: int,
                                                   limit: int, at: float) -> None:
    history = _history(seed, keys, writes)
    one, index = _machine(history)
    assume(one.revision > 0)  # (deletes of absent keys write nothing)
    stepped, _ = _machine(history)
    revision = max(1, round(at * one.revision))
    _compact(one, index, CompactionRequest(revision))
    expected_reads, expected_hash = _reads(one, revision), one.hash_kv()
    res, i = _compact(stepped, index, CompactionRequest(revision, limit=limit))
    steps = 1
    while True:
        assert _reads(stepped, revision) == expected_reads  # reads never change mid-way
        assert stepped.hash_kv() == expected_hash  # nor does HashKV
        if revision > 1:
            with pytest.raises(RevisionCompacted):  # refused from the first step on
                stepped.range(RangeRequest(b"k", revision=revision - 1))
        if not res.next:
            break
        res, i = _compact(stepped, i, CompactionRequest(revision, start=res.next, limit=limit))
        steps += 1
    assert steps <= keys // limit + 1
    assert stepped.store.digest == one.store.digest
    assert stepped.state_hash() == one.state_hash()
    assert stepped.store.view()[0] == one.store.view()[0]  # the same keys are left


def test_a_replica_restored_between_steps_stays_identical() -> None:
    history = _history(7, 40, 400)
    leader, index = _machine(history)
    res, index = _compact(leader, index, CompactionRequest(300, limit=5))
    assert res.next  # mid-way
    follower = StateMachine.from_snapshot(leader.snapshot())
    assert follower.state_hash() == leader.state_hash()
    start = res.next
    while start:
        index += 1
        cmd = encode_command(CompactionRequest(300, start=start, limit=5))
        a, b = leader.apply(index, cmd), follower.apply(index, cmd)
        assert a == b
        assert follower.state_hash() == leader.state_hash()
        start = a.next  # type: ignore[union-attr]
        index += 1  # writes interleave with the steps
        put = encode_command(PutRequest(b"k%03d" % (index % 40), b"late"))
        leader.apply(index, put)
        follower.apply(index, put)
    assert follower.hash_kv() == leader.hash_kv()


def test_a_step_of_a_superseded_or_unknown_compaction_is_refused() -> None:
    sm, index = _machine(_history(3, 20, 100))
    res, index = _compact(sm, index, CompactionRequest(50, limit=3))
    _, index = _compact(sm, index, CompactionRequest(60))  # a newer compaction, one shot
    with pytest.raises(RevisionCompacted):
        sm.apply(index + 1, encode_command(CompactionRequest(50, start=res.next, limit=3)))
    with pytest.raises(InvalidRequest):
        sm.apply(index + 2, encode_command(CompactionRequest(70, start=b"k", limit=3)))
    with pytest.raises(InvalidRequest):
        sm.apply(index + 3, encode_command(CompactionRequest(70, limit=-1)))


def test_planted_physical_hash_is_caught_mid_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """HashKV that counts records a step has not dropped yet (no skipping) differs between
    replicas at different steps: the property above catches it."""
    monkeypatch.setattr(mvcc, "_kept_from", lambda records, compact: 0)
    history = _history(11, 10, 200)
    one, index = _machine(history)
    stepped, _ = _machine(history)
    _compact(one, index, CompactionRequest(150))
    res, _ = _compact(stepped, index, CompactionRequest(150, limit=2))
    assert res.next
    assert stepped.hash_kv() != one.hash_kv()
