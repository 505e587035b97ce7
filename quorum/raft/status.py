"""``Status``: a read-only snapshot of a node for monitoring, tests and the API layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from quorum.raft.types import ConfState, StateRole

if TYPE_CHECKING:
    from quorum.raft.core import Raft


class PeerStatus(msgspec.Struct, frozen=True):
    """The leader's view of one member (only a leader reports peers)."""

    id: int
    match: int
    next: int
    state: str  # PROBE | REPLICATE | SNAPSHOT
    inflight: int
    recent_active: bool
    paused: bool
    is_learner: bool
    pending_snapshot: int = 0  # index of the snapshot being sent (SNAPSHOT state)


class Status(msgspec.Struct, frozen=True):
    id: int
    role: StateRole
    term: int
    vote: int
    lead: int
    commit: int
    applied: int
    first_index: int
    last_index: int
    conf_state: ConfState
    lead_transferee: int
    progress: tuple[PeerStatus, ...]
    # Dropped/rejected/ignored inputs by reason, e.g. "dropped.stale_term",
    # "dropped.unknown_peer", "dropped.malformed", "rejected.beyond_log", "proposals_dropped".
    counters: dict[str, int]


def status_of(r: Raft) -> Status:
    peers: tuple[PeerStatus, ...] = ()
    if r.role == StateRole.LEADER:
        peers = tuple(
            PeerStatus(
                id=node_id,
                match=pr.match,
                next=pr.next,
                state=pr.state.name,
                inflight=pr.inflights.count(),
                recent_active=pr.recent_active,
                paused=pr.is_paused(),
                is_learner=pr.is_learner,
                pending_snapshot=pr.pending_snapshot,
            )
            for node_id, pr in r.trk.visit()
        )
    log = r.raft_log
    return Status(
        id=r.id,
        role=r.role,
        term=r.term,
        vote=r.vote,
        lead=r.lead,
        commit=log.committed,
        applied=log.applied,
        first_index=log.first_index(),
        last_index=log.last_index(),
        conf_state=r.trk.conf_state(),
        lead_transferee=r.lead_transferee,
        progress=peers,
        counters=dict(sorted(r.counters.items())),
    )
