"""step() never raises on what a peer sends; bad input is dropped and counted."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.raft import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
    StateRole,
)

from .net import Net

MT = MessageType


def leader_net() -> Net:
    net = Net()
    net.elect(1)
    net.node(1).propose(b"a")
    net.stabilize()
    return net


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (Message(type=MT.HUP, to=1, from_=2, term=2), "dropped.local_type"),
        (Message(type=MT.BEAT, to=1, from_=2, term=2), "dropped.local_type"),
        (Message(type=MT.APP_RESP, to=9, from_=2, term=2), "dropped.misaddressed"),
        (Message(type=MT.APP_RESP, to=1, from_=7, term=2, index=3), "dropped.unknown_peer"),
        (Message(type=MT.APP_RESP, to=1, from_=2, term=2, index=-4), "dropped.malformed"),
        (Message(type=MT.APP_RESP, to=1, from_=0, term=2), "dropped.malformed"),
        (Message(type=MT.HEARTBEAT_RESP, to=1, from_=2, term=0), "dropped.malformed"),
        (
            Message(type=MT.APP, to=1, from_=2, term=2, index=3, log_term=2,
                    entries=(Entry(term=2, index=5),)),
            "dropped.malformed",  # not contiguous with the previous index
        ),
        (
            Message(type=MT.APP, to=1, from_=2, term=2, index=3, log_term=2,
                    entries=(Entry(term=3, index=4),)),
            "dropped.malformed",  # entry term above the sender's term
        ),
        (Message(type=MT.SNAP, to=1, from_=2, term=2), "dropped.malformed"),
        (
            Message(type=MT.SNAP, to=1, from_=2, term=2,
                    snapshot=Snapshot(metadata=SnapshotMetadata(index=5, term=9))),
            "dropped.malformed",
        ),
        (Message(type=MT.READ_INDEX, to=1, from_=2), "dropped.malformed"),
        (Message(type=MT.VOTE, to=1, from_=2, term=1), "dropped.stale_term"),
    ],
)
def test_bad_messages_are_dropped_and_counted(msg: Message, reason: str) -> None:
    net = leader_net()
    before = net.node(1).status()
    net.node(1).step(msg)
    after = net.node(1).status()
    assert after.counters.get(reason, 0) == before.counters.get(reason, 0) + 1
    assert (after.term, after.commit, after.last_index, after.role) == (
        before.term, before.commit, before.last_index, before.role)


def test_append_beyond_log_is_rejected_with_a_hint() -> None:
    net = leader_net()
    follower = net.node(2)
    follower.step(Message(type=MT.APP, to=2, from_=1, term=2, index=50, log_term=2,
                          entries=(Entry(term=2, index=51),), commit=51))
    rd = follower.ready()
    (resp,) = [m for m in rd.messages if m.type == MT.APP_RESP]
    assert resp.reject and resp.reject_hint == follower.status().last_index
    assert follower.status().counters["rejected.beyond_log"] == 1
    assert follower.status().commit == 3  # the bogus commit index was not adopted


def test_heartbeat_commit_beyond_log_is_ignored() -> None:
    net = leader_net()
    net.node(2).step(Message(type=MT.HEARTBEAT, to=2, from_=1, term=2, commit=99))
    assert net.node(2).status().commit == 3
    assert net.node(2).status().counters["dropped.beyond_log"] == 1


def test_append_below_commit_never_rewrites_committed_entries() -> None:
    net = leader_net()
    # Index 3 is committed with term 2; a (broken) leader of term 3 tries to overwrite it.
    net.node(2).step(Message(type=MT.APP, to=2, from_=1, term=3, index=2, log_term=2,
                             entries=(Entry(term=3, index=3, data=b"forged"),), commit=3))
    assert net.node(2).raft.raft_log.term(3) == 2
    (resp,) = [m for m in net.node(2).ready().messages if m.type == MT.APP_RESP]
    assert resp.index == 3 and not resp.reject  # "I have everything up to my commit"


messages = st.builds(
    Message,
    type=st.sampled_from(list(MessageType)),
    to=st.sampled_from([1, 1, 1, 2, 0]),
    from_=st.integers(-1, 5),
    term=st.integers(-1, 4),
    log_term=st.integers(-1, 4),
    index=st.integers(-1, 8),
    entries=st.lists(
        st.builds(Entry, term=st.integers(0, 4), index=st.integers(0, 9),
                  data=st.binary(max_size=3)),
        max_size=3,
    ).map(tuple),
    commit=st.integers(-1, 8),
    reject=st.booleans(),
    reject_hint=st.integers(-1, 8),
    context=st.sampled_from([b"", b"transfer", b"r"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=25), st.integers(0, 3))
def test_fuzzed_messages_never_raise_and_keep_invariants(
    batch: list[Message], ticks: int
) -> None:
    net = leader_net()
    rng = random.Random(len(batch))
    for msg in batch:
        target = net.node(rng.choice([1, 2]))
        target.step(msg)
        for _ in range(ticks):
            target.tick()
    for node_id in (1, 2, 3):
        net.process(node_id)
        st_ = net.node(node_id).status()
        assert st_.applied <= st_.commit <= st_.last_index
        if st_.role == StateRole.LEADER:
            assert st_.lead == node_id


def test_snapshot_with_inconsistent_configuration_changes_nothing() -> None:
    net = leader_net()
    bad_conf = ConfState(voters=(1, 2, 3), learners=(2,))  # 2 both voter and learner
    snap = Snapshot(metadata=SnapshotMetadata(index=9, term=2, conf_state=bad_conf))
    before = net.node(3).status()
    net.node(3).step(Message(type=MT.SNAP, to=3, from_=1, term=2, snapshot=snap))
    after = net.node(3).status()
    assert (after.commit, after.last_index, after.conf_state) == (
        before.commit, before.last_index, before.conf_state)
    assert after.counters["dropped.malformed"] == 1
