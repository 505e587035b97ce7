"""quorum.raft: a pure, deterministic Raft consensus core (sans-I/O). See docs/raft.md."""

from quorum.raft.config import PLANTED_BUGS, Config, ReadOnlyOption
from quorum.raft.memory_storage import MemoryStorage
from quorum.raft.rawnode import RawNode, bootstrap_snapshot
from quorum.raft.status import PeerStatus, Status
from quorum.raft.storage import LogStorage
from quorum.raft.types import (
    NONE,
    ConfChange,
    ConfChangeSingle,
    ConfChangeTransition,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Snapshot,
    SnapshotMetadata,
    SoftState,
    StateRole,
)

__all__ = [
    "NONE",
    "PLANTED_BUGS",
    "Config",
    "ConfChange",
    "ConfChangeSingle",
    "ConfChangeTransition",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "LogStorage",
    "MemoryStorage",
    "Message",
    "MessageType",
    "PeerStatus",
    "RawNode",
    "ReadOnlyOption",
    "ReadState",
    "Ready",
    "Snapshot",
    "SnapshotMetadata",
    "SoftState",
    "StateRole",
    "Status",
    "bootstrap_snapshot",
]
