"""RawNode.propose_batch: all entries of a batch or none."""

from __future__ import annotations

import random

import pytest

from quorum.errors import NoLeader
from quorum.raft import Config, MemoryStorage, RawNode, bootstrap_snapshot


def _single_node_leader() -> tuple[RawNode, MemoryStorage]:
    storage = MemoryStorage()
    storage.apply_snapshot(bootstrap_snapshot(voters=(1,)))
    node = RawNode(Config(id=1), storage, random.Random(1))
    node.campaign()
    while node.has_ready():
        rd = node.ready()
        storage.append(rd.entries)
        if rd.hard_state is not None:
            storage.set_hard_state(rd.hard_state)
        node.advance(rd)
    assert node.status().lead == 1
    return node, storage


def test_a_batch_is_appended_in_order_in_one_ready() -> None:
    node, _ = _single_node_leader()
    node.propose_batch([b"a", b"b", b"c"])
    rd = node.ready()
    assert [e.data for e in rd.entries] == [b"a", b"b", b"c"]
    assert [e.index for e in rd.entries] == list(range(rd.entries[0].index,
                                                       rd.entries[0].index + 3))


def test_a_refused_batch_appends_nothing() -> None:
    storage = MemoryStorage()
    storage.apply_snapshot(bootstrap_snapshot(voters=(1, 2, 3)))
    follower = RawNode(Config(id=1), storage, random.Random(1))
    before = follower.status().last_index
    with pytest.raises(NoLeader):
        follower.propose_batch([b"a", b"b"])
    assert follower.status().last_index == before
    assert not follower.ready().entries


def test_an_empty_batch_does_nothing() -> None:
    node, _ = _single_node_leader()
    node.propose_batch([])
    assert not node.has_ready() or not node.ready().entries
