"""Hypothesis strategies for Raft messages and transport frames."""

from __future__ import annotations

from hypothesis import strategies as st

from quorum.raft.types import (
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from quorum.transport.codec import (
    Frame,
    Hello,
    HelloAck,
    MessageBatch,
    Ping,
    Pong,
    Reject,
    SnapshotAck,
    SnapshotChunk,
    StreamKind,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=2**40)
node_ids = st.integers(min_value=1, max_value=2**63 - 1)
ids = st.lists(st.integers(min_value=1, max_value=1000), max_size=4).map(tuple)

entries = st.builds(
    Entry, term=small, index=small, type=st.sampled_from(EntryType), data=st.binary(max_size=64)
)
conf_states = st.builds(
    ConfState,
    voters=ids,
    learners=ids,
    voters_outgoing=ids,
    learners_next=ids,
    auto_leave=st.booleans(),
)
snapshots = st.builds(
    Snapshot,
    metadata=st.builds(SnapshotMetadata, index=small, term=small, conf_state=conf_states),
    data=st.binary(max_size=64),
)
messages = st.builds(
    Message,
    type=st.sampled_from(MessageType),
    to=small,
    from_=small,
    term=u64,
    log_term=small,
    index=small,
    entries=st.lists(entries, max_size=4).map(tuple),
    commit=small,
    snapshot=st.none() | snapshots,
    reject=st.booleans(),
    reject_hint=small,
    context=st.binary(max_size=16),
)
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Hello, cluster_id=u64, from_id=node_ids, to_id=node_ids, protocol_version=small,
              kind=st.sampled_from(StreamKind)),
    st.builds(HelloAck, member_id=node_ids),
    st.builds(Reject, reason=st.text(max_size=40)),
    st.builds(MessageBatch, messages=st.lists(messages, max_size=6)),
    st.builds(
        SnapshotChunk,
        snapshot_id=small,
        offset=small,
        data=st.binary(max_size=256),
        last=st.booleans(),
        message=st.none() | messages,
    ),
    st.builds(SnapshotAck, snapshot_id=small, ok=st.booleans(), reason=st.text(max_size=20)),
    st.builds(Ping, nonce=small),
    st.builds(Pong, nonce=small),
)
