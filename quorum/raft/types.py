"""Wire and storage types of the consensus core.

All are msgspec Structs (``array_like`` for compact, fast encoding). Fields are only ever added
at the end with defaults, so old encodings stay readable. Node ids are positive integers; 0 means
"none" (no vote, no leader).
"""

from __future__ import annotations

import enum

import msgspec

NONE = 0  # the "no node" id: no vote cast, no leader known


class EntryType(enum.IntEnum):
    NORMAL = 0  # application data (empty data = the leader's no-op of its term)
    CONF_CHANGE = 1  # data is an encoded ConfChange


class Entry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class MessageType(enum.IntEnum):
    # local messages: only ever produced and consumed inside one node
    HUP = 0  # start an election (campaign)
    BEAT = 1  # leader: send heartbeats now
    PROP = 2  # proposal; also forwarded from a follower to the leader
    CHECK_QUORUM = 3  # leader: check that a quorum was active within the last election timeout
    # peer messages
    APP = 4  # AppendEntries
    APP_RESP = 5
    VOTE = 6  # RequestVote
    VOTE_RESP = 7
    PRE_VOTE = 8
    PRE_VOTE_RESP = 9
    SNAP = 10  # InstallSnapshot (metadata; the runtime streams the data)
    HEARTBEAT = 11
    HEARTBEAT_RESP = 12
    UNREACHABLE = 13  # local: report_unreachable
    SNAP_STATUS = 14  # local: report_snapshot
    TRANSFER_LEADER = 15  # local, or forwarded from a follower to the leader
    TIMEOUT_NOW = 16  # leader -> transfer target: campaign at once
    READ_INDEX = 17  # local, or forwarded from a follower to the leader
    READ_INDEX_RESP = 18


LOCAL_MESSAGES = frozenset(
    {
        MessageType.HUP,
        MessageType.BEAT,
        MessageType.CHECK_QUORUM,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)

RESPONSE_MESSAGES = frozenset(
    {
        MessageType.APP_RESP,
        MessageType.VOTE_RESP,
        MessageType.PRE_VOTE_RESP,
        MessageType.HEARTBEAT_RESP,
        MessageType.UNREACHABLE,
        MessageType.SNAP_STATUS,
    }
)


class ConfState(msgspec.Struct, frozen=True, array_like=True):
    """A membership configuration. In a joint configuration ``voters_outgoing`` is non-empty."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()
    voters_outgoing: tuple[int, ...] = ()
    learners_next: tuple[int, ...] = ()  # voters of the outgoing config that become learners
    auto_leave: bool = False


class SnapshotMetadata(msgspec.Struct, frozen=True, array_like=True):
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """Metadata plus (optionally) the state-machine image. The core never looks at ``data``."""

    metadata: SnapshotMetadata = SnapshotMetadata()
    data: bytes = b""

    def is_empty(self) -> bool:
        return self.metadata.index == 0


class HardState(msgspec.Struct, frozen=True, array_like=True):
    """What must be durable before a node answers: term and vote must be fsynced."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def is_empty(self) -> bool:
        return self.term == 0 and self.vote == NONE and self.commit == 0


class Message(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """One Raft message. Which fields are meaningful depends on ``type`` (see docs/raft.md).

    - APP: ``index``/``log_term`` = previous entry, ``entries``, ``commit``.
    - APP_RESP: ``index`` = last matching index; on ``reject``, ``reject_hint`` is the
      follower's hint index and ``log_term`` the term at that hint (fast backtracking).
    - VOTE/PRE_VOTE: ``index``/``log_term`` = candidate's last entry; ``context`` may carry
      ``b"transfer"`` for a leadership-transfer election (bypasses leader stickiness).
    - HEARTBEAT: ``commit`` (min of follower match and leader commit), ``context`` = ReadIndex ctx,
      ``index`` = the leader's send tick, echoed in HEARTBEAT_RESP ``index`` (lease reads).
    - READ_INDEX / READ_INDEX_RESP: ``entries[0].data`` = request context, ``index`` = read index.
    """

    type: MessageType
    to: int = NONE
    from_: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0  # add (or promote to) voter
    REMOVE_NODE = 1
    ADD_LEARNER = 2  # add learner (or demote a voter to learner)
    # Record a member's addresses (in the conf change's context); changes no role and no
    # membership (etcd's ConfChangeUpdateNode). An address record that repeated the member's
    # role instead would undo a role change committed between its proposal and its commit.
    UPDATE_NODE = 3


class ConfChangeTransition(enum.IntEnum):
    AUTO = 0  # simple change if possible, else joint with automatic leave
    JOINT_IMPLICIT = 1  # joint, leave automatically
    JOINT_EXPLICIT = 2  # joint, leave by proposing an empty ConfChange


class ConfChangeSingle(msgspec.Struct, frozen=True, array_like=True):
    type: ConfChangeType
    node_id: int


class ConfChange(msgspec.Struct, frozen=True, array_like=True):
    """A membership change. No changes + joint config = leave the joint configuration."""

    changes: tuple[ConfChangeSingle, ...] = ()
    transition: ConfChangeTransition = ConfChangeTransition.AUTO
    context: bytes = b""

    def leave_joint(self) -> bool:
        return not self.changes

    def encode(self) -> bytes:
        return _CC_ENCODER.encode(self)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        return _CC_DECODER.decode(data)


_CC_ENCODER = msgspec.msgpack.Encoder()
_CC_DECODER = msgspec.msgpack.Decoder(ConfChange)


class StateRole(enum.IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


class SoftState(msgspec.Struct, frozen=True):
    """Volatile, informational state; never persisted."""

    leader_id: int = NONE
    role: StateRole = StateRole.FOLLOWER


class ReadState(msgspec.Struct, frozen=True):
    """A ReadIndex result: once ``applied >= index`` the read with ``context`` may be served."""

    index: int
    context: bytes


class Ready(msgspec.Struct):
    """A numbered batch of work handed out by ``RawNode.ready()``.

    The runtime MUST, in order: persist ``snapshot``, ``entries`` and ``hard_state`` (fsync iff
    ``must_sync``); then send ``messages``; then apply ``committed_entries``; then call
    ``advance(ready)``. ``early_messages`` may be sent at any time, before persistence (a
    leader's own appends and heartbeats, Raft thesis §10.2.1; pre-votes).
    """

    number: int
    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    read_states: list[ReadState] = msgspec.field(default_factory=list)
    entries: list[Entry] = msgspec.field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = msgspec.field(default_factory=list)
    messages: list[Message] = msgspec.field(default_factory=list)
    early_messages: list[Message] = msgspec.field(default_factory=list)
    must_sync: bool = False


# Size accounting shared by the core and storage: an entry costs its data plus a fixed overhead
# (so empty entries still count toward batch limits).
ENTRY_OVERHEAD_BYTES = 16


def entry_size(entry: Entry) -> int:
    return len(entry.data) + ENTRY_OVERHEAD_BYTES
