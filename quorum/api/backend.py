"""The service contract both API surfaces (etcd v3 gRPC and the native protocol) call.

A :class:`Backend` is what a quorum server offers to its clients, independent of the wire
format. Two implementations exist:

* ``quorum.api.local.LocalBackend`` — one process, commands applied directly to a
  ``quorum.state`` state machine, no consensus (dev mode and tests);
* the Raft node runtime (``quorum.node``) — commands go through the replicated log.

The API layers are thin translations: they decode a request, call one Backend method, and
encode the answer (or translate the typed error) without knowing which implementation runs.

Commands and results are ``quorum.state``'s own types (the state machine's command structs and
their result structs); this module adds only what the state machine does not know about:
response headers, cluster members, node status, lease liveness, watch handles.

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
from typing import Any, Protocol, TypeAlias, runtime_checkable

import msgspec

# The state machine's types (quorum.state). A write command is any command the state machine
# applies through the log (put, delete range, txn, compact, lease grant / revoke / checkpoint,
# session open / close); a read request is a range or a txn whose operations only read.
# Results are the matching quorum.state result structs. These aliases name them for the
# signatures below; they are narrowed to the quorum.state unions once those are importable.
Command: TypeAlias = Any
CommandResult: TypeAlias = Any
ReadRequest: TypeAlias = Any
ReadResult: TypeAlias = Any
Event: TypeAlias = Any  # quorum.state's watch event (PUT/DELETE, kv, prev_kv)


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


class WatchFilter(enum.IntEnum):
    NOPUT = 0  # do not deliver PUT events
    NODELETE = 1  # do not deliver DELETE events


class WatchCreate(msgspec.Struct, frozen=True):
    """Parameters of one watcher (etcd's WatchCreateRequest without transport details)."""

    key: bytes
    range_end: bytes = b""  # b"" = the single key; b"\\0" = every key >= key
    start_revision: int = 0  # 0 = from the next revision; < 0 is rejected
    prev_kv: bool = False
    filters: tuple[WatchFilter, ...] = ()
    progress_notify: bool = False  # periodic empty responses when idle
    watch_id: int = 0  # 0 = let the backend choose (unique per backend)


class WatchResponse(msgspec.Struct, frozen=True):
    """One batch a watcher delivers. Guarantees (quorum.state's watch hub):

    * events are in revision order, never duplicated, and all events of one revision are in
      the same response (atomic);
    * ``progress`` responses carry no events and mean every event <= ``revision`` has been
      delivered;
    * ``canceled`` is the last response; ``compact_revision`` > 0 says the start revision
      was compacted (the client must restart from ``compact_revision``);
    """

    watch_id: int
    revision: int  # the store revision this response reflects (header revision)
    events: tuple[Event, ...] = ()
    progress: bool = False
    canceled: bool = False
    compact_revision: int = 0
    cancel_reason: str = ""


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
    async def write(self, cmd: Command) -> CommandResult:
        """Apply one state-machine command through consensus; return the state's result once
        it is applied locally (for the node: durable on a majority, then applied)."""
        ...

    async def read(self, req: ReadRequest, serializable: bool = False) -> ReadResult:
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
    async def status(self) -> Status: ...

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
