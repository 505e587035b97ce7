"""Follower rules: accept the leader's appends, heartbeats and snapshots; forward requests."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from quorum.errors import NoLeader, NotLeader
from quorum.raft.log import LogInvariantError
from quorum.raft.types import NONE, Message, MessageType, ReadState, Snapshot, StateRole

if TYPE_CHECKING:
    from quorum.raft.core import Raft

MT = MessageType


def step_follower(r: Raft, m: Message) -> None:
    if m.type == MT.PROP:
        forward_proposal(r, m)
    elif m.type in (MT.APP, MT.HEARTBEAT, MT.SNAP):
        r.election_elapsed = 0  # the leader is alive: no election for a while (§5.2)
        r.lead = m.from_
        if m.type == MT.APP:
            handle_append_entries(r, m)
        elif m.type == MT.HEARTBEAT:
            handle_heartbeat(r, m)
        else:
            handle_snapshot(r, m)
    elif m.type == MT.TRANSFER_LEADER:
        _forward(r, m, "transfer_leader")
    elif m.type == MT.TIMEOUT_NOW:
        from quorum.raft import election

        # The leader asked us to take over: campaign now, skipping pre-vote (thesis §3.10).
        election.hup(r, transfer=True)
    elif m.type == MT.READ_INDEX:
        if r.lead == NONE:
            raise NoLeader("no leader known to serve the read index")
        _forward(r, m, "read_index")
    elif m.type == MT.READ_INDEX_RESP:
        if len(m.entries) != 1:
            r.count("dropped.malformed")
            return
        r.read_states.append(ReadState(index=m.index, context=m.entries[0].data))
    else:
        r.count("ignored.follower_" + m.type.name.lower())


def forward_proposal(r: Raft, m: Message) -> None:
    """Send a proposal to the leader, or raise NoLeader/NotLeader."""
    if r.lead == NONE:
        raise NoLeader("no leader known to forward the proposal to")
    if r.config.disable_proposal_forwarding:
        raise NotLeader(f"not the leader (leader is {r.lead})", leader_id=r.lead)
    r.send(msgspec.structs.replace(m, to=r.lead))


def _forward(r: Raft, m: Message, what: str) -> None:
    if r.lead == NONE:
        r.count("dropped.no_leader_" + what)
        return
    r.send(msgspec.structs.replace(m, to=r.lead))


def handle_append_entries(r: Raft, m: Message) -> None:
    """AppendEntries (§5.3): accept if our log matches at (index, log_term), else hint."""
    log = r.raft_log
    if m.index < log.committed:
        # Everything up to our commit is known to match; tell the leader where we are.
        r.send(Message(type=MT.APP_RESP, to=m.from_, index=log.committed))
        return
    try:
        last_new = log.maybe_append(m.index, m.log_term, m.commit, list(m.entries))
    except LogInvariantError:
        r.count("dropped.conflicts_committed")  # only a broken leader sends this
        return
    if last_new is not None:
        _ack(r, m.from_, last_new)
        return
    r.count("rejected.beyond_log" if m.index > log.last_index() else "rejected.log_mismatch")
    # Fast backtracking: point the leader at the last index whose term could match
    # (every index above it has a term > m.log_term, so it cannot be the match point).
    hint_index = min(m.index, log.last_index())
    hint_index, hint_term = log.find_conflict_by_term(hint_index, m.log_term)
    r.send(
        Message(
            type=MT.APP_RESP,
            to=m.from_,
            index=m.index,
            reject=True,
            reject_hint=hint_index,
            log_term=hint_term,
        )
    )


def _ack(r: Raft, leader: int, index: int) -> None:
    """Acknowledge our log up to ``index``. An acceptance queued just before, in this
    Ready, to the same leader in the same term says less (a match up to a lower index), so
    this one replaces it: appends that arrive together (a commit notice followed by the next
    write's entries) get one reply, and the leader steps one message instead of two. Only
    an adjacent acceptance is replaced; rejections carry hints and are always sent."""
    msgs = r.msgs
    if msgs:
        last = msgs[-1]
        if (last.type == MT.APP_RESP and last.to == leader and not last.reject
                and last.term == r.term and last.index <= index):
            msgs.pop()
    r.send(Message(type=MT.APP_RESP, to=leader, index=index))


def handle_heartbeat(r: Raft, m: Message) -> None:
    """The leader sends min(our match, its commit), so the index is in our log."""
    if m.commit > r.raft_log.last_index():
        r.count("dropped.beyond_log")
    else:
        r.raft_log.commit_to(m.commit)
    # Echo the leader's send tick: it bounds the leader's lease (thesis §6.4.1).
    r.send(Message(type=MT.HEARTBEAT_RESP, to=m.from_, index=m.index, context=m.context))


def handle_snapshot(r: Raft, m: Message) -> None:
    snapshot = m.snapshot
    assert snapshot is not None  # validated by RawNode.step
    if restore(r, snapshot):
        r.send(Message(type=MT.APP_RESP, to=m.from_, index=r.raft_log.last_index()))
    else:
        r.send(Message(type=MT.APP_RESP, to=m.from_, index=r.raft_log.committed))


def restore(r: Raft, snapshot: Snapshot) -> bool:
    """Install ``snapshot`` if it is newer than our commit. Returns True if installed."""
    from quorum.raft.confchange import restore as restore_config

    meta = snapshot.metadata
    log = r.raft_log
    if meta.index <= log.committed:
        return False
    if r.role != StateRole.FOLLOWER:
        r.become_follower(r.term + 1, NONE)  # defensive: only followers restore
        return False
    conf = meta.conf_state
    if r.id not in (*conf.voters, *conf.learners, *conf.voters_outgoing):
        r.count("ignored.snapshot_not_member")
        return False
    if log.match_term(meta.index, meta.term):
        # We already have the snapshot's last entry: just fast-forward the commit.
        log.commit_to(meta.index)
        return False
    if log.applying > log.applied:
        # Committed entries were handed out in a Ready that is not advanced yet. Restoring
        # now would switch the configuration under the application while it still applies
        # older conf changes; refuse, the leader sends the snapshot again later.
        r.count("ignored.snapshot_while_applying")
        return False
    # Build the configuration first: an inconsistent ConfState raises InvalidConfChange
    # (the message is dropped) before anything changed.
    cfg = restore_config(r.trk, conf, meta.index)
    log.restore(snapshot)
    r.switch_to_config(cfg)
    return True
