"""Scenarios from the Raft paper (§5), in the style of etcd-io/raft's paper tests.

Pre-vote and check-quorum are off here: these are the base algorithm's rules.
"""

from __future__ import annotations

import pytest

from quorum.raft import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    Entry,
    Message,
    MessageType,
    StateRole,
)

from .paper_util import drain, exchange, log_terms, make_node, sent

MT = MessageType


def leader(voters: tuple[int, ...] = (1, 2, 3), **kw: object) -> object:
    node = make_node(1, voters, **kw)  # type: ignore[arg-type]
    node.campaign()
    for v in voters[1:]:
        node.step(Message(type=MT.VOTE_RESP, to=1, from_=v, term=node.raft.term))
    assert node.raft.role == StateRole.LEADER
    return node


@pytest.mark.parametrize("role", ["follower", "candidate", "leader"])
def test_update_term_from_message(role: str) -> None:
    """§5.1: a node seeing a higher term adopts it and becomes follower."""
    node = make_node(1, term=1)
    if role == "candidate":
        node.campaign()
    elif role == "leader":
        node = leader(term=1)  # type: ignore[assignment]
    node.step(Message(type=MT.APP, to=1, from_=2, term=5, index=0, log_term=0))
    assert node.raft.term == 5 and node.raft.role == StateRole.FOLLOWER
    assert node.raft.lead == 2


def test_reject_stale_term_message() -> None:
    node = make_node(1, term=2, log_terms=(1,))
    node.step(Message(type=MT.APP, to=1, from_=2, term=1, index=1, log_term=1,
                      entries=(Entry(term=1, index=2),)))
    assert node.raft.raft_log.last_index() == 1 and node.raft.term == 2


def test_start_as_follower() -> None:
    assert make_node(1).raft.role == StateRole.FOLLOWER


def test_leader_broadcasts_heartbeats() -> None:
    node = leader(heartbeat_ticks=1)
    drain(node)
    node.tick()
    beats = [m for m in sent(drain(node)) if m.type == MT.HEARTBEAT]
    assert [(m.to, m.term) for m in beats] == [(2, 1), (3, 1)]


@pytest.mark.parametrize("start", ["follower", "candidate"])
def test_nonleader_starts_election_after_timeout(start: str) -> None:
    node = make_node(1, term=1)
    if start == "candidate":
        node.campaign()
        drain(node)
    term = node.raft.term
    for _ in range(2 * node.raft.config.election_ticks):
        node.tick()
    assert node.raft.term == term + 1 and node.raft.role == StateRole.CANDIDATE
    assert node.raft.vote == 1
    votes = [m for m in sent(drain(node)) if m.type == MT.VOTE]
    assert [(m.to, m.term) for m in votes] == [(2, term + 1), (3, term + 1)]


@pytest.mark.parametrize(
    ("size", "granted", "rejected", "role"),
    [
        (1, (), (), StateRole.LEADER),
        (3, (2, 3), (), StateRole.LEADER),
        (3, (2,), (), StateRole.LEADER),
        (5, (2, 3, 4, 5), (), StateRole.LEADER),
        (5, (2, 3), (), StateRole.LEADER),
        (3, (), (2, 3), StateRole.FOLLOWER),
        (5, (2,), (3, 4, 5), StateRole.FOLLOWER),
        (5, (2,), (3,), StateRole.CANDIDATE),
        (3, (), (), StateRole.CANDIDATE),
    ],
)
def test_election_in_one_round(
    size: int, granted: tuple[int, ...], rejected: tuple[int, ...], role: StateRole
) -> None:
    node = make_node(1, voters=tuple(range(1, size + 1)))
    node.campaign()
    for v in granted:
        node.step(Message(type=MT.VOTE_RESP, to=1, from_=v, term=1))
    for v in rejected:
        node.step(Message(type=MT.VOTE_RESP, to=1, from_=v, term=1, reject=True))
    assert node.raft.role == role and node.raft.term == 1


@pytest.mark.parametrize(
    ("vote", "candidate", "reject"),
    [(0, 2, False), (0, 3, False), (2, 2, False), (3, 3, False), (2, 3, True), (3, 2, True)],
)
def test_follower_votes_once_per_term(vote: int, candidate: int, reject: bool) -> None:
    node = make_node(1, term=1)
    node.raft.vote = vote
    node.step(Message(type=MT.VOTE, to=1, from_=candidate, term=1, index=0, log_term=0))
    (resp,) = [m for m in sent(drain(node)) if m.type == MT.VOTE_RESP]
    assert resp.reject is reject


@pytest.mark.parametrize("msg_term", [1, 2])
def test_candidate_falls_back_on_leader_append(msg_term: int) -> None:
    node = make_node(1)
    node.campaign()
    assert node.raft.term == 1
    node.step(Message(type=MT.APP, to=1, from_=2, term=msg_term, index=0, log_term=0))
    assert node.raft.role == StateRole.FOLLOWER and node.raft.term == msg_term


def test_randomized_election_timeouts_differ() -> None:
    timeouts = set()
    for seed in range(20):
        node = make_node(1, seed=seed)
        ticks = 0
        while node.raft.role == StateRole.FOLLOWER:
            node.tick()
            ticks += 1
        timeouts.add(ticks)
    et = node.raft.config.election_ticks
    assert len(timeouts) > 1 and all(et <= t < 2 * et for t in timeouts)


def test_leader_starts_replication_with_prev_and_commit() -> None:
    node = leader()
    drain(node)
    for peer in (2, 3):  # the probes for the empty entry are answered: now replicating
        node.step(Message(type=MT.APP_RESP, to=1, from_=peer, term=1, index=1))
    drain(node)
    node.propose(b"some data")
    apps = [m for m in sent(drain(node)) if m.type == MT.APP]
    assert [(m.to, m.index, m.log_term, m.commit) for m in apps] == [(2, 1, 1, 1), (3, 1, 1, 1)]
    assert [(e.term, e.index, e.data) for e in apps[0].entries] == [(1, 2, b"some data")]


def test_leader_commits_preceding_entries_with_its_own() -> None:
    """§5.3 / §5.4.2: once an entry of its term commits, all earlier ones are committed."""
    node = leader(log_terms=(1, 2), term=2)
    drain(node)  # persist the empty entry of term 3 at index 3
    node.step(Message(type=MT.APP_RESP, to=1, from_=2, term=3, index=3))
    rd = drain(node)
    assert [(e.term, e.index) for e in rd.committed_entries] == [(1, 1), (2, 2), (3, 3)]


@pytest.mark.parametrize(
    ("size", "acks", "committed"),
    [(1, (), True), (3, (), False), (3, (2,), True), (3, (2, 3), True), (5, (2,), False),
     (5, (2, 3), True), (5, (2, 3, 4, 5), True)],
)
def test_leader_acknowledge_commit(size: int, acks: tuple[int, ...], committed: bool) -> None:
    node = leader(voters=tuple(range(1, size + 1)))
    drain(node)
    node.propose(b"x")
    drain(node)
    for peer in acks:
        node.step(Message(type=MT.APP_RESP, to=1, from_=peer, term=1, index=2))
    assert (node.raft.raft_log.committed == 2) is committed


def test_follower_commits_what_the_leader_says() -> None:
    node = make_node(1, term=1)
    node.step(Message(type=MT.APP, to=1, from_=2, term=1, index=0, log_term=0, commit=1,
                      entries=(Entry(term=1, index=1, data=b"a"), Entry(term=1, index=2))))
    assert node.raft.raft_log.committed == 1
    rd = drain(node)
    assert rd.committed_entries == []  # applied only once persisted
    assert [e.data for e in drain(node).committed_entries] == [b"a"]


@pytest.mark.parametrize(
    ("index", "log_term", "reject", "hint"),
    [(0, 0, False, 0), (2, 2, False, 0), (2, 1, True, 1), (3, 3, True, 2)],
)
def test_follower_checks_previous_entry(
    index: int, log_term: int, reject: bool, hint: int
) -> None:
    node = make_node(1, term=3, log_terms=(1, 2))
    node.step(Message(type=MT.APP, to=1, from_=2, term=3, index=index, log_term=log_term))
    (resp,) = [m for m in sent(drain(node)) if m.type == MT.APP_RESP]
    assert resp.reject is reject
    if reject:
        assert resp.reject_hint == hint


@pytest.mark.parametrize(
    ("index", "log_term", "entries", "after"),
    [
        (2, 2, ((3, 3),), [1, 2, 3]),
        (1, 1, ((3, 2), (4, 3)), [1, 3, 4]),
        (0, 0, ((1, 1),), [1, 2]),
        (0, 0, ((3, 1),), [3]),
    ],
)
def test_follower_appends_and_truncates(
    index: int, log_term: int, entries: tuple[tuple[int, int], ...], after: list[int]
) -> None:
    node = make_node(1, term=4, log_terms=(1, 2))
    node.step(Message(type=MT.APP, to=1, from_=2, term=4, index=index, log_term=log_term,
                      entries=tuple(Entry(term=t, index=i) for t, i in entries)))
    assert log_terms(node) == after


FIGURE_7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)


@pytest.mark.parametrize(
    "follower",
    [
        (1, 1, 1, 4, 4, 5, 5, 6, 6),  # (a)
        (1, 1, 1, 4),  # (b)
        (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),  # (c)
        (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),  # (d)
        (1, 1, 1, 4, 4, 4, 4),  # (e)
        (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),  # (f)
    ],
    ids=list("abcdef"),
)
def test_leader_syncs_follower_log_figure_7(follower: tuple[int, ...]) -> None:
    """Figure 7: whatever the follower holds, it ends with exactly the leader's log."""
    nodes = {
        1: make_node(1, log_terms=FIGURE_7_LEADER, term=8),
        2: make_node(2, log_terms=follower, term=8),
        3: make_node(3, term=8),  # empty log: votes for 1
    }
    nodes[1].campaign()
    exchange(nodes)
    assert nodes[1].raft.role == StateRole.LEADER
    assert log_terms(nodes[2]) == [*FIGURE_7_LEADER, 9]
    assert log_terms(nodes[3]) == [*FIGURE_7_LEADER, 9]


@pytest.mark.parametrize(
    ("ours", "cand_index", "cand_term", "grant"),
    [
        ((1, 1), 2, 1, True), ((1, 1), 3, 1, True), ((1, 1, 2), 3, 2, True),
        ((1, 1, 2), 4, 2, True), ((1, 2), 2, 2, True), ((1, 1), 1, 1, False),
        ((1, 1, 2), 3, 1, False), ((1, 2), 1, 1, False), ((1, 2), 5, 1, False),
    ],
)
def test_voter_up_to_date_rule(
    ours: tuple[int, ...], cand_index: int, cand_term: int, grant: bool
) -> None:
    """§5.4.1: grant only to a candidate whose log is at least as up-to-date."""
    node = make_node(1, log_terms=ours, term=3)
    node.step(Message(type=MT.VOTE, to=1, from_=2, term=3, index=cand_index, log_term=cand_term))
    (resp,) = [m for m in sent(drain(node)) if m.type == MT.VOTE_RESP]
    assert resp.reject is (not grant)


@pytest.mark.parametrize(("index", "committed"), [(1, 0), (2, 0), (3, 3)])
def test_leader_only_commits_its_own_term_by_counting(index: int, committed: int) -> None:
    node = leader(log_terms=(1, 1), term=2)  # leader of term 3, its empty entry at index 3
    drain(node)
    node.step(Message(type=MT.APP_RESP, to=1, from_=2, term=3, index=index))
    assert node.raft.raft_log.committed == committed


def test_a_learner_still_votes_when_asked() -> None:
    """A node that still sees itself as a learner may already be a voter in the candidate's
    (newer) configuration; refusing would stall elections (etcd-io/raft
    campaign_learner_must_vote). Learners never campaign themselves."""
    node = make_node(4, voters=(1, 2, 3), term=1)
    node.apply_conf_change(ConfChange(changes=(ConfChangeSingle(ConfChangeType.ADD_LEARNER, 4),)))
    assert node.raft.is_learner
    node.campaign()
    assert node.raft.role == StateRole.FOLLOWER  # not promotable
    node.step(Message(type=MT.VOTE, to=4, from_=2, term=2, index=0, log_term=0))
    (resp,) = [m for m in sent(drain(node)) if m.type == MT.VOTE_RESP]
    assert not resp.reject
