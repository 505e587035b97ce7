"""The service contract both API surfaces (etcd v3 gRPC and the native protocol) call.

A :class:`Backend` is what a quorum server offers to its clients, independent of the wire
format. Two implementations exist:

* ``quorum.api.local.LocalBackend`` — one process, commands applied directly to a
  ``quorum.state`` state machine, no consensus (dev mode and tests);
* the Raft node runtime (``quorum.node``) — commands go through the replicated log.

The API layers are thin translations: they decode a request, call one Backend method, and
encode the answer (or translate the typed error) without knowing which implementation runs.

Commands and results are ``quorum.state.commands``' own types (``Request`` / ``Response``
unions, ``RangeRequest``, ``TxnRequest``, ``Event``, ...); this module adds only what the
state machine does not know about: response headers, cluster members, node status, lease
liveness, watch handles.

Errors (all from ``quorum.errors``; the object stays usable after every one of them):

* ``NoLeader`` / ``NotLeader`` (``ProposalDropped``): the request was not proposed; retry.
* ``LeaderChanged`` / ``RequestTimeout`` (``NodeError``): a write's outcome is unknown.
* ``NodeStopped``: the service is shutting down.
* ``StateError`` subclasses from the state machine (compacted / future revision, lease not
  found, too many txn ops, duplicate key, request too large, ...): nothing was changed.
* membership errors (member not found / exists, peer URL exists, not a learner, learner not
  ready) and "not supported" for operations a backend cannot perform.

Stability: fields are only ever added at the END of the Structs below, with defaults.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from typing import Protocol, TypeAlias, runtime_checkable

import msgspec

from quorum.state.commands import (
    Event,
    RangeRequest,
    RangeResponse,
    Request,
    Response,
    TxnRequest,
    TxnResponse,
    WatchFilter,
)
from quorum.state.watch import WatchRequest, WatchResponse

# The parameters of one watcher and what it delivers are quorum.state's own structs:
# ``WatchRequest(key, range_end, start_revision, prev_kv, filters, progress_notify, watch_id)``
# (start_revision 0 = from the next revision, < 0 rejected; watch_id 0 = backend picks) and
# ``WatchResponse(watch_id, revision, events, progress, canceled, compact_revision,
# cancel_reason)``. Their guarantees (ordered, unique, atomic per revision, reliable,
# bookmarkable progress, explicit compaction cancel) are documented in quorum.state.watch.
WatchCreate: TypeAlias = WatchRequest

# A read is a range, or a txn whose every operation (nested ones included) is a range.
ReadRequest: TypeAlias = RangeRequest | TxnRequest
ReadResponse: TypeAlias = RangeResponse | TxnResponse

__all__ = [
    "Alarm", "AlarmAction", "AlarmType", "Backend", "Event", "HashKV", "LeaseGrantInfo",
    "Member", "MemberChange", "ReadRequest", "ReadResponse", "ResponseHeader", "Status",
    "Watch", "WatchCreate", "WatchFilter", "WatchRequest", "WatchResponse",
]


class ResponseHeader(msgspec.Struct, frozen=True):
    """What every etcd response carries: who answered and at which point of history."""

    cluster_id: int
    member_id: int
    revision: int  # the store revision the answer reflects
    raft_term: int


class Member(msgspec.Struct, frozen=True):
    """One cluster member as reported to clients."""

    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False
    # URLs of the member's etcd gRPC API. The etcd surface reports these as clientURLs when
    # given (etcd clients that sync endpoints from MemberList must see only gRPC endpoints),
    # else client_urls.
    etcd_urls: tuple[str, ...] = ()


class MemberChange(msgspec.Struct, frozen=True):
    """The result of a membership request: the member concerned and the new member list."""

    member: Member | None
    members: tuple[Member, ...]


class AlarmType(enum.IntEnum):
    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


class AlarmAction(enum.IntEnum):
    GET = 0
    ACTIVATE = 1
    DEACTIVATE = 2


class Alarm(msgspec.Struct, frozen=True):
    member_id: int
    alarm: AlarmType


class Status(msgspec.Struct, frozen=True):
    """A node's view of itself (etcd's StatusResponse, minus the header)."""

    version: str  # quorum's version
    db_size_bytes: int  # bytes the state would take in a snapshot (estimate allowed)
    leader: int  # member id of the known leader, 0 if none
    raft_index: int  # last log index
    raft_term: int
    raft_applied_index: int
    errors: tuple[str, ...] = ()
    db_size_in_use_bytes: int = 0
    is_learner: bool = False


class HashKV(msgspec.Struct, frozen=True):
    """Digest of the key space's history up to ``revision`` (see quorum.state's hash)."""

    hash: int  # fits in uint32, like etcd's
    compact_revision: int
    revision: int  # the revision hashed (the current one when asked for 0)


class LeaseGrantInfo(msgspec.Struct, frozen=True):
    """A live lease as the serving node sees it."""

    id: int
    ttl_s: int  # remaining seconds (-1 if the lease does not exist)
    granted_ttl_s: int
    keys: tuple[bytes, ...] = ()  # attached keys, only when asked for


@runtime_checkable
class Watch(Protocol):
    """A live watcher. Iterate it to receive responses; the iteration ends after a canceled
    response (sent on cancel(), compaction, slow-consumer eviction or backend shutdown)."""

    @property
    def watch_id(self) -> int: ...

    def __aiter__(self) -> AsyncIterator[WatchResponse]: ...

    async def cancel(self) -> None:
        """Stop the watcher. Idempotent; the iterator then yields a final canceled response."""

    async def request_progress(self) -> None:
        """Ask for a progress response; it is ordered with the events (bookmarkable)."""


@runtime_checkable
class Backend(Protocol):
    """The operations a quorum server offers clients. All methods may be called concurrently
    from one event loop. Errors are listed in the module docstring."""

    # --- identity (for response headers) ------------------------------------------------
    @property
    def cluster_id(self) -> int: ...

    @property
    def member_id(self) -> int: ...

    def header(self) -> ResponseHeader:
        """Identity plus the current applied revision and raft term (no I/O)."""
        ...

    # --- key-value ------------------------------------------------------------------------
    async def write(self, request: Request, session_id: int = 0, seq: int = 0) -> Response:
        """Apply one state-machine command through consensus; return the state's response once
        it is applied locally (for the node: durable on a majority, then applied).

        A non-zero ``session_id`` (from a ``SessionOpenRequest`` write) with a growing ``seq``
        makes the write exactly-once: a retry with the same ``seq`` returns the recorded
        outcome. A failed command raises the StateError the state machine recorded.
        """
        ...

    async def read(self, request: ReadRequest, serializable: bool = False) -> ReadResponse:
        """Execute a read (range, or a txn that only reads). Linearizable by default
        (ReadIndex barrier, then wait until applied); ``serializable=True`` answers from local
        state, possibly stale."""
        ...

    async def watch(self, req: WatchCreate) -> Watch:
        """Create a watcher. Raises a StateError for an invalid request (negative revision,
        range end before key); a compacted start revision is reported as the watcher's first
        (canceled) response instead, like etcd does."""
        ...

    # --- leases (grant / revoke / checkpoint are commands for write()) ----------------------
    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease on the leader; return its TTL in seconds. Raises LeaseNotFound."""
        ...

    async def lease_time_to_live(self, lease_id: int, keys: bool = False) -> LeaseGrantInfo:
        """Remaining and granted TTL; ``ttl_s == -1`` when the lease does not exist."""
        ...

    async def leases(self) -> tuple[int, ...]:
        """The ids of every live lease, ascending."""
        ...

    # --- cluster ----------------------------------------------------------------------------
    async def member_list(self, linearizable: bool = False) -> tuple[Member, ...]: ...

    async def member_add(self, peer_urls: tuple[str, ...], is_learner: bool) -> MemberChange: ...

    async def member_remove(self, member_id: int) -> MemberChange: ...

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> MemberChange: ...

    async def member_promote(self, member_id: int) -> MemberChange: ...

    # --- maintenance ------------------------------------------------------------------------
    async def status(self) -> Status:
        """The node's status. Monitoring polls it: it must not walk the whole state (an
        estimated ``db_size_bytes`` is fine)."""
        ...

    async def hash_kv(self, revision: int = 0) -> HashKV:
        """Digest of the MVCC history up to ``revision`` (0 = current). Raises the state's
        compacted / future revision errors."""
        ...

    async def hash(self) -> int:
        """Digest of the whole local state (cheap consistency check between replicas)."""
        ...

    def snapshot(self) -> AsyncIterator[bytes]:
        """Stream a point-in-time snapshot of the state (quorum.state's snapshot format)."""
        ...

    async def move_leader(self, target_id: int) -> None:
        """Transfer leadership to ``target_id`` and wait until it took over."""
        ...

    async def defragment(self) -> None:
        """Release unused space (may be a no-op for in-memory state)."""
        ...

    async def alarms(
        self, action: AlarmAction = AlarmAction.GET, member_id: int = 0,
        alarm: AlarmType = AlarmType.NONE,
    ) -> tuple[Alarm, ...]:
        """Get, activate or deactivate alarms; return the alarms now raised."""
        ...
