"""The translation from native requests to ``quorum.api.backend.Backend`` calls.

Key-value bodies are ``quorum.state`` commands already, so a write is handed to
``Backend.write`` as decoded, with the client's session and sequence number, and a read to
``Backend.read``; only the operations the state machine does not define (lease liveness,
cluster, maintenance, watches) are translated field by field.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from quorum.api.backend import Backend, Watch, WatchCreate, WatchFilter, WatchResponse
from quorum.api.backend import Member as BackendMember
from quorum.api.native import messages as m
from quorum.errors import UsageError
from quorum.state.commands import (
    RangeRequest,
    TxnRequest,
)

Handler = Callable[[Any, int, int, bool], Awaitable[m.ResponseBody]]


def _member(mem: BackendMember) -> m.Member:
    return m.Member(mem.id, mem.name, mem.peer_urls, mem.client_urls, mem.is_learner)


class BackendDispatcher:
    """Serves native requests from one Backend. Stateless apart from the handler table and
    the ``forwarded`` counter."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # A Raft-backed backend exposes its node core (``leader_id``, ``id``); a LocalBackend
        # has none and always answers as the leader. Duck-typed: the API layer does not
        # import the node runtime.
        self._core: Any = getattr(backend, "core", None)
        self.forwarded = 0  # writes and linearizable reads served while not the leader
        # The node's ReadIndex barrier, when the backend has one (a Raft node's RaftServer).
        # With it the connection serves a batch of linearizable reads after ONE barrier
        # (see ``read_barrier``); without it each read goes through Backend.read.
        self._barrier: Callable[[], Awaitable[int]] | None = getattr(
            getattr(backend, "server", None), "read_barrier", None
        )
        self.batches_reads = self._barrier is not None
        # A backend that takes writes with a callback waiter (ClusterBackend.submit_write):
        # the connection then answers a write from the waiter, with no coroutine or future.
        self._submit: Callable[[Any, int, int, Any], None] | None = getattr(
            backend, "submit_write", None)
        self.submits_writes = self._submit is not None
        self._handlers: dict[type, Handler] = {
            RangeRequest: self._read,
            TxnRequest: self._txn,
            m.LeaseKeepAliveReq: self._keepalive,
            m.LeaseTimeToLiveReq: self._ttl,
            m.LeaseListReq: self._leases,
            m.MemberListReq: self._member_list,
            m.MemberAddReq: self._member_add,
            m.MemberRemoveReq: self._member_remove,
            m.MemberUpdateReq: self._member_update,
            m.MemberPromoteReq: self._member_promote,
            m.StatusReq: self._status,
            m.MoveLeaderReq: self._move_leader,
            m.HashKVReq: self._hash_kv,
            m.HashReq: self._hash,
        }
        for cls in m.WRITE_BODIES:
            self._handlers.setdefault(cls, self._write)

    def handle(
        self, body: m.RequestBody, session: int, seq: int, serializable: bool = False
    ) -> Awaitable[m.ResponseBody]:
        handler = self._handlers.get(type(body))
        if handler is None:
            raise UsageError(f"not a unary request: {type(body).__name__}")
        return handler(body, session, seq, serializable)

    def _revision(self) -> int:
        return self.backend.header().revision

    def leader_hint(self) -> int:
        """The leader's member id when another node leads, else 0 (this node leads, no leader
        is known, or the backend is not replicated). Read on every answer: two attribute
        loads, no I/O."""
        core = self._core
        if core is None:
            return 0
        leader: int = core.leader_id
        return 0 if leader == core.id else leader

    # --- key-value -------------------------------------------------------------------------

    async def _write(self, body: Any, session: int, seq: int, _s: bool) -> Any:
        if self._core is not None and self.leader_hint():
            self.forwarded += 1  # Raft forwards the proposal to the leader: one more hop
        # a retried (session, seq) returns the recorded outcome, or raises the recorded error
        return await self.backend.write(body, session, seq)

    def submit_write(self, body: Any, session: int, seq: int, waiter: Any) -> None:
        """Start a write whose outcome goes to ``waiter`` (``resolve(response)`` or
        ``fail(exc)``, once). Only when ``submits_writes``; for the bodies of
        ``DIRECT_WRITES`` (their handler is ``_write``)."""
        if self._submit is None:
            raise UsageError("this backend has no callback writes")
        if self._core is not None and self.leader_hint():
            self.forwarded += 1  # Raft forwards the proposal to the leader: one more hop
        self._submit(body, session, seq, waiter)

    async def _read(self, body: Any, _session: int, _seq: int, serializable: bool) -> Any:
        if not serializable and self._core is not None and self.leader_hint():
            self.forwarded += 1  # the ReadIndex request travels to the leader and back
        return await self.backend.read(body, serializable)

    def _txn(self, body: TxnRequest, session: int, seq: int, serializable: bool) -> Any:
        if m.txn_is_read_only(body):
            return self._read(body, session, seq, serializable)
        return self._write(body, session, seq, serializable)

    async def read_barrier(self, reads: int) -> None:
        """Wait until local state reflects every write committed before this call (Raft
        thesis §6.4: ReadIndex). Reads that *arrived* before the call and are then served
        from local state are linearizable, exactly as if each had waited for a barrier of
        its own (which Backend.read does); ``reads`` is how many share this one. Only when
        ``batches_reads``."""
        if self._barrier is None:
            raise UsageError("this backend has no read barrier")
        if self.leader_hint():
            self.forwarded += reads
        await self._barrier()

    # --- leases ----------------------------------------------------------------------------

    async def _keepalive(self, body: m.LeaseKeepAliveReq, *_: Any) -> m.ResponseBody:
        ttl = await self.backend.lease_keepalive(body.lease_id)
        return m.LeaseKeepAliveResp(body.lease_id, ttl, self._revision())

    async def _ttl(self, body: m.LeaseTimeToLiveReq, *_: Any) -> m.ResponseBody:
        info = await self.backend.lease_time_to_live(body.lease_id, body.keys)
        return m.LeaseTimeToLiveResp(
            body.lease_id, info.ttl_s, info.granted_ttl_s, info.keys, self._revision()
        )

    async def _leases(self, _body: m.LeaseListReq, *_: Any) -> m.ResponseBody:
        return m.LeaseListResp(await self.backend.leases(), self._revision())

    # --- cluster ---------------------------------------------------------------------------

    async def _member_list(self, body: m.MemberListReq, *_: Any) -> m.ResponseBody:
        members = await self.backend.member_list(body.linearizable)
        return m.MemberListResp(tuple(_member(x) for x in members), self._revision())

    def _change(self, change: Any) -> m.ResponseBody:
        member = _member(change.member) if change.member is not None else None
        members = tuple(_member(x) for x in change.members)
        return m.MemberChangeResp(members, member, self._revision())

    async def _member_add(self, body: m.MemberAddReq, *_: Any) -> m.ResponseBody:
        return self._change(await self.backend.member_add(body.peer_urls, body.is_learner))

    async def _member_remove(self, body: m.MemberRemoveReq, *_: Any) -> m.ResponseBody:
        return self._change(await self.backend.member_remove(body.member_id))

    async def _member_update(self, body: m.MemberUpdateReq, *_: Any) -> m.ResponseBody:
        return self._change(await self.backend.member_update(body.member_id, body.peer_urls))

    async def _member_promote(self, body: m.MemberPromoteReq, *_: Any) -> m.ResponseBody:
        return self._change(await self.backend.member_promote(body.member_id))

    # --- maintenance -----------------------------------------------------------------------

    async def _status(self, _body: m.StatusReq, *_: Any) -> m.ResponseBody:
        st = await self.backend.status()
        return m.StatusResp(
            version=st.version,
            member_id=self.backend.member_id,
            leader_id=st.leader,
            raft_term=st.raft_term,
            raft_index=st.raft_index,
            raft_applied_index=st.raft_applied_index,
            db_size_bytes=st.db_size_bytes,
            is_learner=st.is_learner,
            revision=self._revision(),
            errors=st.errors,
            forwarded=self.forwarded,
            cluster_id=self.backend.cluster_id,
        )

    async def _move_leader(self, body: m.MoveLeaderReq, *_: Any) -> m.ResponseBody:
        await self.backend.move_leader(body.target_id)
        return m.MoveLeaderResp(self._revision())

    async def snapshot_chunks(self, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The backend's snapshot cut into pieces of at most ``chunk_bytes`` (so each frame
        stays under the frame limit however large the state is)."""
        size = max(1, min(chunk_bytes, 1 << 22))
        async for piece in self.backend.snapshot():
            for at in range(0, len(piece), size):
                yield piece[at : at + size]

    async def _hash_kv(self, body: m.HashKVReq, *_: Any) -> m.ResponseBody:
        h = await self.backend.hash_kv(body.revision)
        return m.HashKVResp(h.hash, h.compact_revision, h.revision)

    async def _hash(self, _body: m.HashReq, *_: Any) -> m.ResponseBody:
        return m.HashResp(await self.backend.hash(), self._revision())

    # --- watches ---------------------------------------------------------------------------

    def revision(self) -> int:
        return self._revision()

    async def open_watch(self, req: m.WatchCreateReq) -> tuple[Watch, int]:
        """Create the backend watcher; return it and its first revision. A request "from
        now" (start 0) is pinned to this node's next revision *before* the watcher exists,
        so the client learns exactly where the stream starts and can resume there."""
        # (a negative start goes to the backend as is: it rejects it with its typed error)
        start = req.start_revision if req.start_revision != 0 else self._revision() + 1
        filters = (WatchFilter.NOPUT,) * req.filter_put
        filters += (WatchFilter.NODELETE,) * req.filter_delete
        watcher = await self.backend.watch(
            WatchCreate(req.key, req.range_end, start, req.prev_kv, filters, req.progress_notify)
        )
        return watcher, start


def watch_body(resp: WatchResponse) -> m.ResponseBody:
    """The wire form of one watcher answer (events, progress notice or cancel)."""
    if resp.canceled:
        return m.WatchCanceled(resp.revision, resp.cancel_reason, resp.compact_revision)
    return m.WatchEvents(resp.revision, resp.events)
