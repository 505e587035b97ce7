"""Leader rules: replication (§5.3), commitment (§5.4.2), heartbeats, check-quorum,
ReadIndex (thesis §6.4), leadership transfer (thesis §3.10) and proposal admission."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from quorum.errors import (
    Compacted,
    ConfChangePending,
    InvalidConfChange,
    ProposalDropped,
    SnapshotTemporarilyUnavailable,
    TransferInProgress,
    UncommittedLogFull,
)
from quorum.raft.config import ReadOnlyOption
from quorum.raft.log import entries_size
from quorum.raft.progress import Progress, ProgressState
from quorum.raft.quorum import VoteResult
from quorum.raft.types import (
    NONE,
    ConfChange,
    Entry,
    EntryType,
    Message,
    MessageType,
    ReadState,
    Snapshot,
    StateRole,
    entry_size,
)

if TYPE_CHECKING:
    from quorum.raft.core import Raft

MT = MessageType


# --- becoming leader and ticking --------------------------------------------------------------


def become_leader(r: Raft) -> None:
    if r.role == StateRole.FOLLOWER:
        raise AssertionError("invalid transition follower -> leader")
    r.reset(r.term)
    r.lead = r.id
    r.role = StateRole.LEADER
    own = r.trk.progress.get(r.id)
    if own is not None:
        own.become_replicate()  # the leader's own log is its own match point
        own.match = r.raft_log.stable_last_index()
        own.next = r.raft_log.last_index() + 1
        own.recent_active = True
    # Commit an entry of our term at once (§5.4.2, §8): it commits every earlier entry and
    # lets ReadIndex and conf changes proceed. No conf change before it is applied.
    append_entries(r, [Entry(term=0, index=0)])
    r.pending_conf_index = r.raft_log.last_index()
    r.uncommitted_size = 0  # the empty entry never counts against the cap
    bcast_append(r)


def tick_heartbeat(r: Raft) -> None:
    r.heartbeat_elapsed += 1
    r.election_elapsed += 1
    if r.election_elapsed >= r.config.election_ticks:
        r.election_elapsed = 0
        if r.config.check_quorum:
            check_quorum(r)
        if r.role == StateRole.LEADER and r.lead_transferee != NONE:
            abort_leader_transfer(r)  # the transfer did not finish within an election timeout
    if r.role != StateRole.LEADER:
        return
    if r.heartbeat_elapsed >= r.config.heartbeat_ticks:
        r.heartbeat_elapsed = 0
        bcast_heartbeat(r)
        maybe_auto_leave(r)


def check_quorum(r: Raft) -> None:
    """Step down if no quorum was heard from in the last election timeout (thesis §6.2)."""
    own = r.trk.progress.get(r.id)
    if own is not None:
        own.recent_active = True
    if not r.trk.quorum_active():
        r.count("stepped_down.check_quorum")
        r.become_follower(r.term, NONE)
        return
    for node_id, pr in r.trk.visit():
        if node_id != r.id:
            pr.recent_active = False


def abort_leader_transfer(r: Raft) -> None:
    r.lead_transferee = NONE


# --- dispatch ---------------------------------------------------------------------------------


def step_leader(r: Raft, m: Message) -> None:
    if m.type == MT.BEAT:
        bcast_heartbeat(r)
    elif m.type == MT.CHECK_QUORUM:
        check_quorum(r)
    elif m.type == MT.PROP:
        handle_proposal(r, m)
    elif m.type == MT.READ_INDEX:
        handle_read_index(r, m)
    else:
        pr = r.trk.progress.get(m.from_)
        if pr is None:
            r.count("dropped.unknown_peer")
            return
        _step_leader_peer(r, m, pr)


def _step_leader_peer(r: Raft, m: Message, pr: Progress) -> None:
    if m.type == MT.APP_RESP:
        handle_append_response(r, m, pr)
    elif m.type == MT.HEARTBEAT_RESP:
        handle_heartbeat_response(r, m, pr)
    elif m.type == MT.SNAP_STATUS:
        handle_snapshot_status(r, m, pr)
    elif m.type == MT.UNREACHABLE:
        # In REPLICATE state an append was most likely lost: fall back to probing.
        if pr.state == ProgressState.REPLICATE:
            pr.become_probe()
    elif m.type == MT.TRANSFER_LEADER:
        handle_transfer_leader(r, m, pr)
    else:
        r.count("ignored.leader_" + m.type.name.lower())


# --- proposals --------------------------------------------------------------------------------


def handle_proposal(r: Raft, m: Message) -> None:
    """Append proposed entries. Raises a ProposalDropped subclass or InvalidConfChange."""
    if not m.entries:
        raise ProposalDropped("empty proposal")
    if r.id not in r.trk.progress:
        raise ProposalDropped("this leader was removed from the configuration")
    if r.lead_transferee != NONE:
        raise TransferInProgress(f"leadership is being transferred to {r.lead_transferee}")
    for entry in m.entries:
        if entry.type == EntryType.CONF_CHANGE:
            _check_conf_change(r, entry)
    if not append_entries(r, list(m.entries)):
        raise UncommittedLogFull(
            f"uncommitted log holds {r.uncommitted_size} bytes "
            f"(cap {r.config.max_uncommitted_entries_size})"
        )
    r.bcast_pending = True  # one append per follower for all proposals of this Ready


def _check_conf_change(r: Raft, entry: Entry) -> None:
    """One change at a time, only after the leader applied an entry of its own term."""
    try:
        cc = ConfChange.decode(entry.data)
    except msgspec.DecodeError as exc:
        raise InvalidConfChange(f"undecodable conf change: {exc}") from exc
    if r.pending_conf_index > r.raft_log.applied:
        raise ConfChangePending(
            f"conf change at index {r.pending_conf_index} not applied yet "
            f"(applied {r.raft_log.applied})"
        )
    joint = r.trk.voters.is_joint()
    if joint and not cc.leave_joint():
        raise InvalidConfChange("must leave the joint configuration first")
    if not joint and cc.leave_joint():
        raise InvalidConfChange("not in a joint configuration; refusing an empty conf change")
    # No change is pending, so the config at apply time is the current one: validate now.
    r.validate_conf_change(cc)


def append_entries(r: Raft, entries: list[Entry]) -> bool:
    """Stamp term and index and append to the (unstable) log. False if over the cap.

    The leader's own match moves only in ``advance`` once the runtime persisted the entries.
    """
    last = r.raft_log.last_index()
    stamped = [
        Entry(term=r.term, index=last + 1 + i, type=e.type, data=e.data)
        for i, e in enumerate(entries)
    ]
    if not _increase_uncommitted_size(r, stamped):
        return False
    r.raft_log.append(stamped)
    for entry in stamped:
        if entry.type == EntryType.CONF_CHANGE:
            r.pending_conf_index = entry.index
    return True


def _payload_size(entries: list[Entry]) -> int:
    # Empty entries (the leader's no-op) never count toward the cap.
    return sum(entry_size(e) for e in entries if e.data)


def _increase_uncommitted_size(r: Raft, entries: list[Entry]) -> bool:
    """Back-pressure; one proposal is always accepted when nothing is uncommitted."""
    size = _payload_size(entries)
    cap = r.config.max_uncommitted_entries_size
    if cap > 0 and size > 0 and r.uncommitted_size > 0 and r.uncommitted_size + size > cap:
        return False
    r.uncommitted_size += size
    return True


def reduce_uncommitted_size(r: Raft, committed: list[Entry]) -> None:
    """Entries were committed/applied: release their share of the cap."""
    r.uncommitted_size = max(0, r.uncommitted_size - _payload_size(committed))


def maybe_auto_leave(r: Raft) -> None:
    """Leave an auto-leave joint configuration once it is applied, by proposing an empty
    conf change. Checked on every advance and every heartbeat tick, so a refused attempt
    (e.g. during a leadership transfer) is retried even when nothing else is applied."""
    if (
        r.trk.auto_leave
        and r.role == StateRole.LEADER
        and r.raft_log.applied >= r.pending_conf_index
    ):
        propose_auto_leave(r)


def propose_auto_leave(r: Raft) -> None:
    """Propose the empty conf change that leaves the joint configuration."""
    entry = Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=ConfChange().encode())
    try:
        handle_proposal(r, Message(type=MT.PROP, from_=r.id, entries=(entry,)))
    except (ProposalDropped, InvalidConfChange):
        r.count("deferred.auto_leave")  # retried on the next advance


# --- replication ------------------------------------------------------------------------------


def flush_bcast(r: Raft) -> None:
    """Send what was deferred since the last Ready: appends (new entries or a new commit
    index) and one ReadIndex heartbeat round. Coalescing turns many proposals per loop turn
    into one append per follower, and many read requests into one round (thesis §6.4)."""
    leading = r.role == StateRole.LEADER
    if r.bcast_pending:
        r.bcast_pending = False
        if leading:
            bcast_append(r)
    if r.read_round_pending:
        r.read_round_pending = False
        context = r.read_only.last_pending_context()
        if leading and context is not None:
            # Acks for the newest context release every request queued before it.
            bcast_heartbeat_with(r, context)


def bcast_append(r: Raft) -> None:
    """One append to every follower; a replicating follower gets as many batches as its
    in-flight window takes (pipelining, thesis §10.2.1)."""
    for node_id, pr in r.trk.visit():
        if node_id == r.id or not maybe_send_append(r, node_id, send_if_empty=True):
            continue
        while pr.state == ProgressState.REPLICATE and maybe_send_append(
            r, node_id, send_if_empty=False
        ):
            pass


def send_append(r: Raft, to: int) -> None:
    maybe_send_append(r, to, send_if_empty=True)


def maybe_send_append(r: Raft, to: int, send_if_empty: bool) -> bool:
    """Send the next batch of entries to ``to`` if its progress allows; maybe a snapshot."""
    pr = r.trk.progress[to]
    if pr.is_paused():
        return False
    if not send_if_empty and pr.next > r.raft_log.last_index():
        return False  # nothing new for it (the common case after a batch or an ack)
    prev_index = pr.next - 1
    prev_term = r.raft_log.term(prev_index)
    if prev_term is None:
        return maybe_send_snapshot(r, to, pr)
    entries: list[Entry] = []
    if not (pr.state == ProgressState.REPLICATE and pr.inflights.full()):
        batch = _batch(r, pr.next)
        if batch is None:
            return maybe_send_snapshot(r, to, pr)
        entries = batch
    if not entries and not send_if_empty:
        return False
    r.send(
        Message(
            type=MT.APP,
            to=to,
            index=prev_index,
            log_term=prev_term,
            entries=tuple(entries),
            commit=r.raft_log.committed,
        )
    )
    last = entries[-1].index if entries else prev_index
    pr.update_on_entries_send(len(entries), last, entries_size(entries))
    return True


def _batch(r: Raft, lo: int) -> list[Entry] | None:
    """Entries from ``lo`` bounded by max_size_per_msg and max_entries_per_msg; None if
    they were compacted (the follower needs a snapshot)."""
    last = r.raft_log.last_index()
    hi = min(last + 1, lo + r.config.max_entries_per_msg)
    try:
        return r.raft_log.slice(lo, hi, r.config.max_size_per_msg)
    except Compacted:
        return None


def maybe_send_snapshot(r: Raft, to: int, pr: Progress) -> bool:
    if not pr.recent_active:
        r.count("deferred.snapshot_inactive")
        return False
    try:
        snapshot = _current_snapshot(r)
    except SnapshotTemporarilyUnavailable:
        r.count("deferred.snapshot_unavailable")
        return False
    if snapshot.is_empty():
        raise AssertionError("a snapshot is needed but storage has none")
    pr.become_snapshot(snapshot.metadata.index)
    r.send(Message(type=MT.SNAP, to=to, snapshot=snapshot))
    return True


def _current_snapshot(r: Raft) -> Snapshot:
    pending = r.raft_log.unstable.snapshot
    return pending if pending is not None else r.raft_log.storage.snapshot()


def handle_append_response(r: Raft, m: Message, pr: Progress) -> None:
    pr.recent_active = True
    if m.reject:
        _handle_append_reject(r, m, pr)
        return
    was_paused = pr.is_paused()
    if not (pr.maybe_update(m.index) or (pr.match == m.index and pr.state == ProgressState.PROBE)):
        return
    if pr.state == ProgressState.PROBE:
        pr.become_replicate()
    elif pr.state == ProgressState.SNAPSHOT and pr.match + 1 >= r.raft_log.first_index():
        # The follower caught up past the snapshot point from the log: replicate again.
        pr.become_probe()
        pr.become_replicate()
    elif pr.state == ProgressState.REPLICATE:
        pr.inflights.free_le(m.index)
    if maybe_commit(r):
        r.bcast_pending = True  # tell everyone the new commit index, once per Ready
    elif was_paused and not r.bcast_pending:  # else the deferred broadcast covers it
        send_append(r, m.from_)
    # The window may have room for several batches now.
    while maybe_send_append(r, m.from_, send_if_empty=False):
        pass
    if m.from_ == r.lead_transferee and pr.match == r.raft_log.last_index():
        send_timeout_now(r, m.from_)


def _handle_append_reject(r: Raft, m: Message, pr: Progress) -> None:
    next_probe = m.reject_hint
    if m.log_term > 0:
        # Skip every leader entry whose term exceeds the follower's term at the hint.
        next_probe, _ = r.raft_log.find_conflict_by_term(m.reject_hint, m.log_term)
    if pr.maybe_decr_to(m.index, next_probe):
        if pr.state == ProgressState.REPLICATE:
            pr.become_probe()
        send_append(r, m.from_)
    else:
        r.count("ignored.stale_reject")


def maybe_commit(r: Raft) -> bool:
    """Advance the commit index to what a quorum persisted, if that entry is of our term.

    Raft §5.4.2 / Figure 8: counting replicas never commits an older-term entry directly.
    Returns True if the commit index moved (pending ReadIndex requests may be released).
    """
    index = r.trk.committed()
    term = r.term
    if r.bug("commit_old_term"):
        term = r.raft_log.term(index) or 0  # planted bug: trust any term
    if not r.raft_log.maybe_commit(index, term):
        return False
    release_pending_read_index(r)
    return True


def handle_heartbeat_response(r: Raft, m: Message, pr: Progress) -> None:
    pr.recent_active = True
    pr.msg_app_flow_paused = False
    if m.index <= r.ticks:  # ignore a send tick from the future (not ours)
        r.heartbeat_acks[m.from_] = max(r.heartbeat_acks.get(m.from_, 0), m.index + 1)
    # A periodic heartbeat answer from a lagging follower triggers an append: it probes a
    # PROBE follower and recovers appends lost in REPLICATE (a gap makes the follower
    # reject, which resets to PROBE). ReadIndex rounds (with a context) skip this: they
    # come in bursts and the periodic heartbeat covers recovery.
    lagging = pr.match < r.raft_log.last_index() or pr.state == ProgressState.PROBE
    if lagging and not m.context and not r.bcast_pending:
        send_append(r, m.from_)
    if not m.context:
        return
    acks = r.read_only.recv_ack(m.from_, m.context)
    if acks is None or r.trk.voters.vote_result(dict.fromkeys(acks, True)) != VoteResult.WON:
        return
    for status in r.read_only.advance(m.context):
        respond_to_read_index(r, status.request, status.index)


def handle_snapshot_status(r: Raft, m: Message, pr: Progress) -> None:
    if pr.state != ProgressState.SNAPSHOT:
        return
    if m.reject:
        pr.pending_snapshot = 0  # failed: probe from the match and retry later
    pr.become_probe()
    # Wait for an append response (success) or a heartbeat interval (failure) before
    # sending again.
    pr.msg_app_flow_paused = True


def send_heartbeat(r: Raft, to: int, context: bytes) -> None:
    # Never tell a follower to commit beyond what it is known to hold.
    commit = min(r.trk.progress[to].match, r.raft_log.committed)
    # ``index`` carries the send tick; the follower echoes it (lease bookkeeping).
    r.send(Message(type=MT.HEARTBEAT, to=to, commit=commit, index=r.ticks, context=context))


def bcast_heartbeat(r: Raft) -> None:
    context = r.read_only.last_pending_context() or b""
    for node_id, _ in r.trk.visit():
        if node_id != r.id:
            send_heartbeat(r, node_id, context)


def on_config_change(r: Raft, removed: bool) -> None:
    """The leader applied a new configuration."""
    if removed and r.config.step_down_on_removal:
        r.count("stepped_down.removed")
        r.become_follower(r.term, NONE)
        return
    if not r.trk.voters.incoming:
        return
    if maybe_commit(r):
        bcast_append(r)  # the new quorum may already hold more entries
    else:
        for node_id, _ in r.trk.visit():
            if node_id != r.id:
                maybe_send_append(r, node_id, send_if_empty=False)
    if r.lead_transferee != NONE and r.lead_transferee not in r.trk.voters.ids():
        abort_leader_transfer(r)


# --- ReadIndex --------------------------------------------------------------------------------


def committed_entry_in_current_term(r: Raft) -> bool:
    return r.raft_log.term(r.raft_log.committed) == r.term


def handle_read_index(r: Raft, m: Message) -> None:
    if not m.entries:
        r.count("dropped.malformed")
        return
    if r.bug("read_index_no_quorum"):
        respond_to_read_index(r, m, r.raft_log.committed)  # planted bug: stale reads
        return
    if not committed_entry_in_current_term(r):
        # A fresh leader does not know the latest commit index until an entry of its own
        # term commits (thesis §6.4 step 1): queue until then.
        r.pending_read_index.append(m)
        return
    send_read_index_response(r, m)


def send_read_index_response(r: Raft, m: Message) -> None:
    if r.trk.is_singleton():
        respond_to_read_index(r, m, r.raft_log.committed)  # we alone are the quorum
    elif r.config.read_only_option == ReadOnlyOption.LEASE_BASED and lease_valid(r):
        respond_to_read_index(r, m, r.raft_log.committed)
    elif r.read_only.add_request(r.raft_log.committed, m, r.id):
        # SAFE, or a lease that cannot be vouched for: confirm with a heartbeat round.
        r.read_round_pending = True  # one round per Ready for all new requests


# Ticks of slack for clock drift between leader and followers (see docs/raft.md).
LEASE_MARGIN_TICKS = 1


def lease_valid(r: Raft) -> bool:
    """Thesis §6.4.1: a follower that heard a heartbeat sent at tick s refuses to vote for
    anyone else until an election timeout after receiving it. If a quorum acknowledged
    heartbeats sent at or after s, no other leader can exist before s + election_ticks.

    Never during a leadership transfer: the transfer campaign bypasses that refusal.
    """
    if r.lead_transferee != NONE:
        return False

    def acked(voter: int) -> int | None:
        return r.ticks + 1 if voter == r.id else r.heartbeat_acks.get(voter)

    quorum_send = r.trk.voters.committed_index(acked)  # 1 + send tick; 0 = none yet
    if quorum_send == 0:
        return False
    return r.ticks < quorum_send - 1 + r.config.election_ticks - LEASE_MARGIN_TICKS


def bcast_heartbeat_with(r: Raft, context: bytes) -> None:
    for node_id, _ in r.trk.visit():
        if node_id != r.id:
            send_heartbeat(r, node_id, context)


def respond_to_read_index(r: Raft, request: Message, index: int) -> None:
    context = request.entries[0].data
    if request.from_ in (NONE, r.id):
        r.read_states.append(ReadState(index=index, context=context))
    else:
        r.send(Message(type=MT.READ_INDEX_RESP, to=request.from_, index=index,
                       entries=request.entries))


def release_pending_read_index(r: Raft) -> None:
    if not r.pending_read_index or not committed_entry_in_current_term(r):
        return
    pending, r.pending_read_index = r.pending_read_index, []
    for m in pending:
        send_read_index_response(r, m)


# --- leadership transfer ----------------------------------------------------------------------


def handle_transfer_leader(r: Raft, m: Message, pr: Progress) -> None:
    """``m.from_`` names the transfer target (thesis §3.10)."""
    target = m.from_
    if pr.is_learner:
        r.count("ignored.transfer_to_learner")
        return
    if r.lead_transferee != NONE:
        if r.lead_transferee == target:
            return  # already in progress
        abort_leader_transfer(r)
    if target == r.id:
        return
    r.election_elapsed = 0  # the transfer must finish within one election timeout
    r.lead_transferee = target
    if pr.match == r.raft_log.last_index():
        send_timeout_now(r, target)
    else:
        send_append(r, target)


def send_timeout_now(r: Raft, to: int) -> None:
    r.send(Message(type=MT.TIMEOUT_NOW, to=to))
