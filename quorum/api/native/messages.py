"""Wire types of the native client protocol (msgspec Structs, msgpack, array-like).

Every frame from a client is a :class:`Request` envelope; every frame from the server is a
:class:`Response` envelope. Both carry the client-chosen request ``id``; answers may arrive in
any order. The key-value bodies *are* ``quorum.state``'s command and result structs, so a
request is decoded once and handed to the backend as is, and a result is encoded once.

A watch is identified by the id of the request that created it: the server answers the
create with :class:`WatchCreated` and then pushes :class:`WatchEvents` under the same id until
:class:`WatchCanceled`. The client registers the id before sending, so no mapping and no race
between the create answer and the first events exist.

Writes carry ``session``/``seq`` in the envelope: the state machine records the outcome of the
last ``seq`` of every session, so a client that retries a write after a lost answer reuses the
pair and the write is applied once (Raft thesis §6.3). A session has at most one write in
flight (the client keeps a pool of sessions to pipeline writes).

Versioning: fields are only added at the end with defaults and tags are never reused, so
old and new peers keep understanding each other; a body an old server does not know fails to
decode and closes that connection (the client retries elsewhere until its deadline).
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from quorum.state.commands import (
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    Event,
    KeyValue,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SessionCloseRequest,
    SessionCloseResponse,
    SessionOpenRequest,
    SessionOpenResponse,
    TxnRequest,
    TxnResponse,
)

__all__ = [
    "CompactionRequest", "CompactionResponse", "DeleteRangeRequest", "DeleteRangeResponse",
    "Event", "KeyValue", "LeaseGrantRequest", "LeaseGrantResponse", "LeaseRevokeRequest",
    "LeaseRevokeResponse", "PutRequest", "PutResponse", "RangeRequest", "RangeResponse",
    "SessionCloseRequest", "SessionCloseResponse", "SessionOpenRequest", "SessionOpenResponse",
    "TxnRequest", "TxnResponse",
]


class _Msg(msgspec.Struct, frozen=True, array_like=True, omit_defaults=True):
    """Base of the protocol's own bodies (string tags distinct from quorum.state's)."""


# --- requests the state machine does not define ---------------------------------------------


class LeaseKeepAliveReq(_Msg, frozen=True, tag="n.ka"):
    lease_id: int


class LeaseTimeToLiveReq(_Msg, frozen=True, tag="n.ttl"):
    lease_id: int
    keys: bool = False


class LeaseListReq(_Msg, frozen=True, tag="n.leases"):
    pass


class MemberListReq(_Msg, frozen=True, tag="n.members"):
    linearizable: bool = False


class MemberAddReq(_Msg, frozen=True, tag="n.member_add"):
    peer_urls: tuple[str, ...]
    is_learner: bool = False


class MemberRemoveReq(_Msg, frozen=True, tag="n.member_remove"):
    member_id: int


class MemberUpdateReq(_Msg, frozen=True, tag="n.member_update"):
    member_id: int
    peer_urls: tuple[str, ...]


class MemberPromoteReq(_Msg, frozen=True, tag="n.member_promote"):
    member_id: int


class StatusReq(_Msg, frozen=True, tag="n.status"):
    pass


class MoveLeaderReq(_Msg, frozen=True, tag="n.move_leader"):
    target_id: int


class SnapshotReq(_Msg, frozen=True, tag="n.snapshot"):
    """Streamed: ``SnapshotChunk`` frames under the request id, then ``SnapshotResp``."""

    chunk_bytes: int = 1 << 20


class HashKVReq(_Msg, frozen=True, tag="n.hash_kv"):
    revision: int = 0


class HashReq(_Msg, frozen=True, tag="n.hash"):
    pass


class WatchCreateReq(_Msg, frozen=True, tag="n.watch"):
    key: bytes
    range_end: bytes = b""
    start_revision: int = 0  # 0: from the next revision
    prev_kv: bool = False
    progress_notify: bool = False
    filter_put: bool = False  # drop PUT events
    filter_delete: bool = False  # drop DELETE events


class WatchCancelReq(_Msg, frozen=True, tag="n.unwatch"):
    watch_id: int


class WatchProgressReq(_Msg, frozen=True, tag="n.progress"):
    """Ask every watch of this connection for a progress notification."""


RequestBody: TypeAlias = (
    RangeRequest
    | PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactionRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | SessionOpenRequest
    | SessionCloseRequest
    | LeaseKeepAliveReq
    | LeaseTimeToLiveReq
    | LeaseListReq
    | MemberListReq
    | MemberAddReq
    | MemberRemoveReq
    | MemberUpdateReq
    | MemberPromoteReq
    | StatusReq
    | MoveLeaderReq
    | SnapshotReq
    | HashKVReq
    | HashReq
    | WatchCreateReq
    | WatchCancelReq
    | WatchProgressReq
)

WRITE_BODIES = (
    PutRequest,
    DeleteRangeRequest,
    TxnRequest,
    CompactionRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    SessionOpenRequest,
    SessionCloseRequest,
)


def txn_is_read_only(txn: TxnRequest) -> bool:
    """True if no branch of ``txn`` (nested txns included) writes: it can skip the log."""
    for op in (*txn.success, *txn.failure):
        if isinstance(op, TxnRequest):
            if not txn_is_read_only(op):
                return False
        elif not isinstance(op, RangeRequest):
            return False
    return True


class Request(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """``serializable`` applies to reads only: answer from local, possibly stale, state."""

    id: int
    body: RequestBody
    session: int = 0
    seq: int = 0
    serializable: bool = False


# --- answers the state machine does not define ----------------------------------------------


class LeaseKeepAliveResp(_Msg, frozen=True, tag="n.ka"):
    lease_id: int
    ttl_s: int
    revision: int = 0


class LeaseTimeToLiveResp(_Msg, frozen=True, tag="n.ttl"):
    lease_id: int
    ttl_s: int  # remaining; -1 if the lease does not exist
    granted_ttl_s: int = 0
    keys: tuple[bytes, ...] = ()
    revision: int = 0


class LeaseListResp(_Msg, frozen=True, tag="n.leases"):
    lease_ids: tuple[int, ...] = ()
    revision: int = 0


class Member(msgspec.Struct, frozen=True, array_like=True):
    member_id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False


class MemberListResp(_Msg, frozen=True, tag="n.members"):
    members: tuple[Member, ...] = ()
    revision: int = 0


class MemberChangeResp(_Msg, frozen=True, tag="n.member_change"):
    """Answer of member add/remove/update/promote: the member list after the change."""

    members: tuple[Member, ...] = ()
    member: Member | None = None
    revision: int = 0


class StatusResp(_Msg, frozen=True, tag="n.status"):
    version: str = ""
    member_id: int = 0
    leader_id: int = 0
    raft_term: int = 0
    raft_index: int = 0
    raft_applied_index: int = 0
    db_size_bytes: int = 0
    is_learner: bool = False
    revision: int = 0
    errors: tuple[str, ...] = ()
    # writes and linearizable reads this node served while another node led (each one took
    # an extra hop to the leader); a client that prefers the leader keeps it near zero
    forwarded: int = 0
    cluster_id: int = 0  # 0 from a release before ids were derived (then: LEGACY_CLUSTER_ID)


class MoveLeaderResp(_Msg, frozen=True, tag="n.move_leader"):
    revision: int = 0


class SnapshotChunk(_Msg, frozen=True, tag="n.snapshot_chunk"):
    blob: bytes


class SnapshotResp(_Msg, frozen=True, tag="n.snapshot"):
    """The end of a snapshot stream (``blob`` empty: the data came in the chunks)."""

    blob: bytes = b""
    revision: int = 0


class HashKVResp(_Msg, frozen=True, tag="n.hash_kv"):
    hash: int = 0
    compact_revision: int = 0
    revision: int = 0


class HashResp(_Msg, frozen=True, tag="n.hash"):
    hash: int = 0
    revision: int = 0


class WatchCreated(_Msg, frozen=True, tag="n.watch"):
    """``revision`` + 1 is the first revision the watch delivers (its resume point)."""

    revision: int = 0


class WatchEvents(_Msg, frozen=True, tag="n.events"):
    """Events of one or more whole revisions, in order; no events = a progress notice meaning
    every event up to ``revision`` was delivered."""

    revision: int
    events: tuple[Event, ...] = ()


class WatchCanceled(_Msg, frozen=True, tag="n.unwatch"):
    revision: int = 0
    reason: str = ""
    compact_revision: int = 0  # > 0: the start revision was compacted away


class WatchProgressResp(_Msg, frozen=True, tag="n.progress"):
    revision: int = 0


class ErrorResp(_Msg, frozen=True, tag="n.error"):
    """A typed failure. ``code`` is the class name in ``quorum.errors``; ``detail`` its numeric
    field (compact or current revision); ``leader_id``/``leader_endpoint`` hint where to retry
    after NotLeader-type errors."""

    code: str
    message: str = ""
    detail: int = 0
    leader_id: int = 0
    leader_endpoint: str = ""


ResponseBody: TypeAlias = (
    RangeResponse
    | PutResponse
    | DeleteRangeResponse
    | TxnResponse
    | CompactionResponse
    | LeaseGrantResponse
    | LeaseRevokeResponse
    | SessionOpenResponse
    | SessionCloseResponse
    | LeaseKeepAliveResp
    | LeaseTimeToLiveResp
    | LeaseListResp
    | MemberListResp
    | MemberChangeResp
    | StatusResp
    | MoveLeaderResp
    | SnapshotResp
    | SnapshotChunk
    | HashKVResp
    | HashResp
    | WatchCreated
    | WatchEvents
    | WatchCanceled
    | WatchProgressResp
    | ErrorResp
)


class Response(msgspec.Struct, frozen=True, array_like=True, gc=False, omit_defaults=True):
    """``leader``: set by a node that is not the leader, to the leader's member id (0: this
    node leads, or no leader is known). A client that sent a write or a linearizable read
    here learns where to send the next ones without the extra hop (omitted when 0, so a
    leader's answers are as small as before and older clients ignore the field)."""

    id: int
    body: ResponseBody
    leader: int = 0
