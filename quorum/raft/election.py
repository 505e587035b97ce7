"""Elections: campaigns, pre-votes (thesis §9.6), vote requests and tallying (Raft §5.2, §5.4.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quorum.errors import NoLeader
from quorum.raft import follower
from quorum.raft.quorum import VoteResult
from quorum.raft.types import NONE, Message, MessageType, StateRole

if TYPE_CHECKING:
    from quorum.raft.core import Raft

MT = MessageType

VOTE_REQUEST_TYPES = frozenset({MT.VOTE, MT.PRE_VOTE})
VOTE_TYPES = frozenset({MT.VOTE, MT.VOTE_RESP, MT.PRE_VOTE, MT.PRE_VOTE_RESP})
# Context of a leadership-transfer election: bypasses pre-vote and leader stickiness (§3.10).
CAMPAIGN_TRANSFER = b"transfer"


def hup(r: Raft, transfer: bool) -> None:
    """Start an election if this node may (a voter, not the leader, conf changes applied)."""
    if r.role == StateRole.LEADER:
        return
    if not r.promotable():
        r.count("ignored.campaign_not_promotable")
        return
    if r.has_unapplied_conf_changes():
        r.count("ignored.campaign_unapplied_conf_change")
        return
    if transfer:
        campaign(r, pre_vote=False, transfer=True)
    else:
        campaign(r, pre_vote=r.config.pre_vote, transfer=False)


def campaign(r: Raft, pre_vote: bool, transfer: bool) -> None:
    """Become (pre-)candidate, vote for ourselves and ask every other voter."""
    if pre_vote:
        r.become_pre_candidate()
        vote_type, term = MT.PRE_VOTE, r.term + 1  # pre-votes ask about the next term
    else:
        r.become_candidate()
        vote_type, term = MT.VOTE, r.term
    if poll(r, r.id, granted=True) == VoteResult.WON:
        # Single-voter configuration: we won at once.
        if pre_vote:
            campaign(r, pre_vote=False, transfer=transfer)
        else:
            r.become_leader()
        return
    last_index, last_term = r.raft_log.last_index(), r.raft_log.last_term()
    context = CAMPAIGN_TRANSFER if transfer else b""
    for voter in r.trk.voter_ids():
        if voter == r.id:
            continue
        r.send(
            Message(
                type=vote_type,
                to=voter,
                term=term,
                index=last_index,
                log_term=last_term,
                context=context,
            )
        )


def poll(r: Raft, node_id: int, granted: bool) -> VoteResult:
    r.trk.record_vote(node_id, granted)
    return r.trk.tally_votes()[2]


def handle_vote_request(r: Raft, m: Message) -> None:
    """Grant at most one vote per term, only to an up-to-date log (§5.2, §5.4.1)."""
    can_vote = (
        r.vote == m.from_
        or (r.vote == NONE and r.lead == NONE)  # not yet voted, no known leader this term
        or (m.type == MT.PRE_VOTE and m.term > r.term)  # a pre-vote for a future term
    )
    up_to_date = r.bug("skip_vote_log_check") or r.raft_log.is_up_to_date(m.index, m.log_term)
    resp_type = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
    if can_vote and up_to_date:
        # The response carries the requested term: for a pre-vote that is a future term the
        # candidate recognises; our own term does not change.
        r.send(Message(type=resp_type, to=m.from_, term=m.term))
        if m.type == MT.VOTE:
            r.election_elapsed = 0
            r.vote = m.from_  # persisted through the Ready's hard state before the response
    else:
        r.count("rejected.vote")
        r.send(Message(type=resp_type, to=m.from_, term=r.term, reject=True))


def step_candidate(r: Raft, m: Message) -> None:
    """Candidate and pre-candidate: count votes; any current leader's message demotes us."""
    my_resp = MT.PRE_VOTE_RESP if r.role == StateRole.PRE_CANDIDATE else MT.VOTE_RESP
    if m.type == MT.PROP:
        raise NoLeader("no leader: an election is in progress")
    if m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
        r.become_follower(m.term, m.from_)  # a leader of our term exists (§5.2)
        follower.step_follower(r, m)
    elif m.type == my_resp:
        handle_vote_response(r, m)
    elif m.type == MT.READ_INDEX:
        raise NoLeader("no leader: an election is in progress")
    else:
        r.count("ignored.candidate_" + m.type.name.lower())


def handle_vote_response(r: Raft, m: Message) -> None:
    if m.from_ not in r.trk.voters.ids():
        r.count("dropped.unknown_peer")
        return
    result = poll(r, m.from_, granted=not m.reject)
    if result == VoteResult.WON:
        if r.role == StateRole.PRE_CANDIDATE:
            campaign(r, pre_vote=False, transfer=False)
        else:
            r.become_leader()
    elif result == VoteResult.LOST:
        # Return to follower in the current term; a pre-candidate's term never changed.
        r.become_follower(r.term, NONE)
