"""Deterministic, compact text forms of entries, messages, Readies and Status.

Used by the interaction scripts (their expected outputs are these texts) and for debugging.
Formats: entry ``term/index "data"`` (conf changes as ``conf(v2 l3 r1)``); message
``from->to TYPE term=T [log=LT/I] [index=I] [commit=C] [reject hint=I/T] [entries=[..]] ...``.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from quorum.raft.status import Status
from quorum.raft.types import (
    ConfChange,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
    Snapshot,
)

_CC_LETTER = {
    ConfChangeType.ADD_NODE: "v",
    ConfChangeType.REMOVE_NODE: "r",
    ConfChangeType.ADD_LEARNER: "l",
    ConfChangeType.UPDATE_NODE: "u",
}
_TRANSITION = {
    ConfChangeTransition.AUTO: "",
    ConfChangeTransition.JOINT_IMPLICIT: " implicit",
    ConfChangeTransition.JOINT_EXPLICIT: " explicit",
}
_LOG_POINT_TYPES = frozenset({MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE})
# Heartbeats carry the leader's send tick in ``index`` (lease bookkeeping): not shown, so the
# texts do not depend on how long a script ticked.
_TICK_STAMPED = frozenset({MessageType.HEARTBEAT, MessageType.HEARTBEAT_RESP})


def describe_conf_change(cc: ConfChange) -> str:
    if cc.leave_joint():
        return "conf(leave)"
    changes = " ".join(f"{_CC_LETTER[c.type]}{c.node_id}" for c in cc.changes)
    return f"conf({changes}{_TRANSITION[cc.transition]})"


def describe_entry(entry: Entry) -> str:
    if entry.type == EntryType.CONF_CHANGE:
        try:
            body = describe_conf_change(ConfChange.decode(entry.data))
        except msgspec.DecodeError:
            body = "conf(?)"
        return f"{entry.term}/{entry.index} {body}"
    return f"{entry.term}/{entry.index} {_quote(entry.data)}"


def describe_entries(entries: Iterable[Entry]) -> str:
    return "[" + ", ".join(describe_entry(e) for e in entries) + "]"


def describe_conf_state(cs: ConfState) -> str:
    text = "voters=(" + " ".join(map(str, cs.voters)) + ")"
    if cs.voters_outgoing:
        text += "&&(" + " ".join(map(str, cs.voters_outgoing)) + ")"
    if cs.learners:
        text += " learners=(" + " ".join(map(str, cs.learners)) + ")"
    if cs.learners_next:
        text += " learners_next=(" + " ".join(map(str, cs.learners_next)) + ")"
    if cs.auto_leave:
        text += " autoleave"
    return text


def describe_snapshot(s: Snapshot) -> str:
    meta = s.metadata
    return f"snap={meta.term}/{meta.index} {describe_conf_state(meta.conf_state)}"


def describe_message(m: Message) -> str:
    parts = [f"{m.from_}->{m.to} {m.type.name} term={m.term}"]
    if m.type in _LOG_POINT_TYPES:
        parts.append(f"log={m.log_term}/{m.index}")
    elif m.index and m.type not in _TICK_STAMPED:
        parts.append(f"index={m.index}")
    if m.commit:
        parts.append(f"commit={m.commit}")
    if m.reject and m.type == MessageType.APP_RESP:
        parts.append(f"reject hint={m.reject_hint}/{m.log_term}")
    elif m.reject:
        parts.append("reject")
    if m.entries:
        parts.append("entries=" + describe_entries(m.entries))
    if m.context:
        parts.append(f"ctx={_quote(m.context)}")
    if m.snapshot is not None:
        parts.append(describe_snapshot(m.snapshot))
    return " ".join(parts)


def describe_ready(rd: Ready) -> str:
    lines: list[str] = []
    if rd.soft_state is not None:
        lines.append(f"lead={rd.soft_state.leader_id} role={rd.soft_state.role.name}")
    if rd.hard_state is not None:
        hs = rd.hard_state
        lines.append(f"HardState term={hs.term} vote={hs.vote} commit={hs.commit}")
    if rd.entries:
        lines.append("Entries: " + describe_entries(rd.entries))
    if rd.snapshot is not None:
        lines.append("Snapshot: " + describe_snapshot(rd.snapshot))
    if rd.committed_entries:
        lines.append("Committed: " + describe_entries(rd.committed_entries))
    for rs in rd.read_states:
        lines.append(f"ReadState index={rs.index} ctx={_quote(rs.context)}")
    for m in rd.early_messages:
        lines.append("early " + describe_message(m))
    for m in rd.messages:
        lines.append("msg " + describe_message(m))
    if rd.must_sync:
        lines.append("must_sync")
    return "\n".join(lines)


def describe_status(st: Status) -> str:
    lines = [
        f"id={st.id} role={st.role.name} term={st.term} vote={st.vote} lead={st.lead} "
        f"commit={st.commit} applied={st.applied} log=[{st.first_index},{st.last_index}]",
        describe_conf_state(st.conf_state),
    ]
    if st.lead_transferee:
        lines.append(f"transferee={st.lead_transferee}")
    for p in st.progress:
        flags = " learner" if p.is_learner else ""
        flags += " paused" if p.paused else ""
        flags += "" if p.recent_active else " inactive"
        flags += f" pending_snapshot={p.pending_snapshot}" if p.pending_snapshot else ""
        lines.append(
            f"  {p.id}: {p.state} match={p.match} next={p.next} inflight={p.inflight}{flags}"
        )
    if st.counters:
        lines.append(" ".join(f"{k}={v}" for k, v in st.counters.items()))
    return "\n".join(lines)


def _quote(data: bytes) -> str:
    try:
        return '"' + data.decode("ascii") + '"'
    except UnicodeDecodeError:
        return "0x" + data.hex()
