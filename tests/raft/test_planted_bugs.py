"""Each planted bug breaks its rule in a targeted scenario, and is inert when switched off.

These are the negative controls for the safety checks of the core: if a scenario below gave
the same answer with the bug switched on, the corresponding test would prove nothing.
"""

from __future__ import annotations

import random

import pytest

from quorum.raft import (
    Config,
    Entry,
    HardState,
    MemoryStorage,
    Message,
    MessageType,
    RawNode,
    Ready,
    StateRole,
    bootstrap_snapshot,
)

MT = MessageType


def node(bugs: frozenset[str], log_terms: tuple[int, ...] = (), term: int = 1) -> RawNode:
    """Node 1 of (1 2 3); its log holds entries 2.. with ``log_terms``; pre-vote off."""
    storage = MemoryStorage()
    storage.apply_snapshot(bootstrap_snapshot((1, 2, 3)))
    storage.append([Entry(term=t, index=i + 2) for i, t in enumerate(log_terms)])
    storage.set_hard_state(HardState(term=term, commit=1))
    config = Config(id=1, pre_vote=False, planted_bugs=bugs)
    return RawNode(config, storage, random.Random(1))


def persist(n: RawNode) -> Ready:
    rd = n.ready()
    storage = n.raft.raft_log.storage
    assert isinstance(storage, MemoryStorage)
    storage.append(rd.entries)
    if rd.hard_state is not None:
        storage.set_hard_state(rd.hard_state)
    n.advance(rd)
    return rd


def elect(n: RawNode) -> None:
    n.campaign()
    persist(n)
    n.step(Message(type=MT.VOTE_RESP, to=1, from_=2, term=n.raft.term))
    assert n.raft.role == StateRole.LEADER
    persist(n)  # the leader's empty entry is now persisted: its own match counts


@pytest.mark.parametrize("bug", [False, True])
def test_commit_old_term(bug: bool) -> None:
    # Entry 2 is of term 2; the new leader is of term 3 and its empty entry is index 3.
    n = node(frozenset({"commit_old_term"}) if bug else frozenset(), log_terms=(2,), term=2)
    elect(n)
    n.step(Message(type=MT.APP_RESP, to=1, from_=2, term=3, index=2))
    # A majority (1, 2) stores index 2, but it is of term 2: Figure 8 forbids committing it.
    assert n.status().commit == (2 if bug else 1)
    n.step(Message(type=MT.APP_RESP, to=1, from_=2, term=3, index=3))
    assert n.status().commit == 3  # an entry of the leader's term commits it all


@pytest.mark.parametrize("bug", [False, True])
def test_skip_vote_log_check(bug: bool) -> None:
    n = node(frozenset({"skip_vote_log_check"}) if bug else frozenset(), log_terms=(2,), term=2)
    # Candidate 2's last entry (1, 1) is behind ours (2, 2): §5.4.1 says reject.
    n.step(Message(type=MT.VOTE, to=1, from_=2, term=3, index=1, log_term=1))
    reply = [m for m in persist(n).messages if m.type == MT.VOTE_RESP]
    assert len(reply) == 1 and reply[0].reject is (not bug)


@pytest.mark.parametrize("bug", [False, True])
def test_forget_vote(bug: bool) -> None:
    n = node(frozenset({"forget_vote"}) if bug else frozenset())
    n.step(Message(type=MT.VOTE, to=1, from_=2, term=2, index=1, log_term=1))
    rd = persist(n)
    assert rd.hard_state is not None and rd.hard_state.term == 2
    assert rd.hard_state.vote == (0 if bug else 2)
    assert not rd.messages[0].reject


@pytest.mark.parametrize("bug", [False, True])
def test_read_index_no_quorum(bug: bool) -> None:
    n = node(frozenset({"read_index_no_quorum"}) if bug else frozenset())
    elect(n)
    n.read_index(b"ctx")
    rd = persist(n)
    # A fresh leader must wait for its own entry to commit and then for a heartbeat round.
    assert [rs.context for rs in rd.read_states] == ([b"ctx"] if bug else [])
    heartbeats = [m for m in rd.early_messages if m.type == MT.HEARTBEAT]
    assert heartbeats == []  # not before its own entry commits (and never with the bug)


def test_unknown_bug_name_is_rejected() -> None:
    from quorum.errors import ConfigError

    with pytest.raises(ConfigError, match="planted_bugs"):
        Config(id=1, planted_bugs=frozenset({"nope"})).validate()
