"""Gateway checks for messages from peers: anything malformed is dropped (and counted)."""

from __future__ import annotations

from quorum.raft.types import LOCAL_MESSAGES, ConfState, EntryType, Message, MessageType

MT = MessageType
_VALID_TYPES = frozenset(MessageType)
_TERMLESS = frozenset({MT.PROP, MT.READ_INDEX})  # forwarded requests carry no term
_ONE_ENTRY = frozenset({MT.READ_INDEX, MT.READ_INDEX_RESP})
_LOG_POINT = frozenset({MT.APP, MT.VOTE, MT.PRE_VOTE})


def malformed_reason(m: object, self_id: int) -> str | None:
    """None if ``m`` may be stepped, else the counter reason to drop it under."""
    if not isinstance(m, Message) or m.type not in _VALID_TYPES:
        return "malformed"
    if m.type in LOCAL_MESSAGES:
        return "local_type"
    if m.to != self_id:
        return "misaddressed"
    if min(m.from_, m.term, m.log_term, m.index, m.commit, m.reject_hint) < 0 or m.from_ == 0:
        return "malformed"
    if m.term == 0 and m.type not in _TERMLESS:
        return "malformed"
    if m.type in _LOG_POINT and m.log_term > m.term:
        return "malformed"
    return _entries_reason(m) or _snapshot_reason(m)


def _entries_reason(m: Message) -> str | None:
    if m.type in _ONE_ENTRY and len(m.entries) != 1:
        return "malformed"
    if m.type == MT.PROP and not m.entries:
        return "malformed"
    if any(e.type not in (EntryType.NORMAL, EntryType.CONF_CHANGE) for e in m.entries):
        return "malformed"
    if m.type != MT.APP:
        return None
    previous_term = m.log_term
    for offset, entry in enumerate(m.entries):
        # Entries follow the previous index contiguously, with non-decreasing terms that
        # never exceed the sender's term (log matching, §5.3).
        if entry.index != m.index + 1 + offset:
            return "malformed"
        if entry.term < previous_term or entry.term > m.term:
            return "malformed"
        previous_term = entry.term
    return None


def _snapshot_reason(m: Message) -> str | None:
    if m.type != MT.SNAP:
        return None
    snap = m.snapshot
    if snap is None or snap.is_empty() or snap.metadata.term > m.term:
        return "malformed"
    return _conf_state_reason(snap.metadata.conf_state)


def _conf_state_reason(cs: ConfState) -> str | None:
    """A ConfState is well formed if every id is positive, nobody is both voter and learner,
    ``learners_next`` are outgoing voters, and only a joint config has auto_leave."""
    voters, outgoing = set(cs.voters), set(cs.voters_outgoing)
    learners, learners_next = set(cs.learners), set(cs.learners_next)
    ids = voters | outgoing | learners | learners_next
    if not voters or min(ids) <= 0:
        return "malformed"
    if learners & (voters | outgoing) or learners_next & (voters | learners):
        return "malformed"
    if not learners_next <= outgoing or (cs.auto_leave and not outgoing):
        return "malformed"
    return None
