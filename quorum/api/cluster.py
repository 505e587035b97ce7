"""``ClusterBackend``: the Backend contract served by a Raft-replicated node.

Writes go through the log (``RaftServer.propose``) and return the state machine's result once
the entry is applied on this node; reads wait for a ReadIndex barrier unless serializable.
Watches, lease bookkeeping and maintenance reuse ``LocalBackend``'s machinery over the
replicated state machine. Leases expire only through committed commands proposed by the
leader, measured on the leader's clock, restarted in full when leadership moves (no expiry is
caused by a failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import quorum
from quorum.api.backend import (
    LeaseGrantInfo,
    Member,
    MemberChange,
    ReadRequest,
    ReadResponse,
    ResponseHeader,
    Status,
)
from quorum.api.compaction import compact_in_steps
from quorum.api.compactor import AutoCompactor, CompactionPolicy
from quorum.api.local import RECORD_OVERHEAD_BYTES, LocalBackend
from quorum.errors import (
    BadLeaderTransferee,
    LeaderChanged,
    LearnerNotReady,
    LeaseNotFound,
    MemberNotFound,
    MemberNotLearner,
    NotLeader,
    RequestTimeout,
    RequestTooLarge,
)
from quorum.node.clock import Clock
from quorum.node.core import Waiter
from quorum.node.envelope import MemberInfo
from quorum.node.kv import KvStateMachine
from quorum.node.server import RaftServer
from quorum.raft.types import (
    ConfChange,
    ConfChangeSingle,
    ConfChangeType,
    Ready,
    SoftState,
    StateRole,
)
from quorum.state import commands as sc

log = logging.getLogger("quorum.api.cluster")

_SLACK_BYTES = 4096  # envelope framing on top of the request's own payload


def url_host_port(url: str) -> str:
    """``http://h:p`` or ``h:p`` -> ``h:p``."""
    return url.split("://", 1)[-1].rstrip("/")


class ClusterBackend(LocalBackend):
    """A Backend over one node of a Raft cluster (see the module docstring)."""

    def __init__(
        self,
        server: RaftServer,
        kv: KvStateMachine,
        *,
        cluster_id: int,
        clock: Callable[[], float] = time.monotonic,
        max_request_bytes: int = (3 << 20) // 2,
        lease_check_interval_s: float = 0.5,
        progress_notify_interval_s: float = 600.0,
        leader_client: Callable[[int], Awaitable[Any]] | None = None,
        compaction: CompactionPolicy | None = None,
        compaction_clock: Clock | None = None,
        etcd_scheme: str = "http",
        peer_scheme: str = "http",
        client_scheme: str = "http",
    ) -> None:
        super().__init__(
            kv.store.config,
            clock=clock,
            cluster_id=cluster_id,
            member_id=server.core.id,
            lease_check_interval_s=lease_check_interval_s,
            progress_notify_interval_s=progress_notify_interval_s,
        )
        self._sm = kv.store  # serve the replicated state, not LocalBackend's own
        self._tracker.demote()  # only a leader measures lease time
        self.server = server
        self.core = server.core
        self.kv = kv
        self.max_request_bytes = max_request_bytes
        self.etcd_scheme = etcd_scheme  # of the etcd URLs in member lists
        self.peer_scheme = peer_scheme  # and of the peer URLs
        self.client_scheme = client_scheme  # and of the native client URLs
        # leader_id -> a native-protocol client connected to the leader: a follower relays
        # the calls only the leader can answer (lease keepalives, learner promotion)
        self.leader_client = leader_client
        kv.on_apply = self._after_apply
        self.core.on_ready_applied = self._after_batch
        previous = self.core.on_soft_state
        self.core.on_soft_state = lambda ss: self._on_soft_state(ss, previous)
        # automatic MVCC compaction (quorum.api.compactor); None = off
        self.compactor = (None if compaction is None
                          else self.make_compactor(compaction, compaction_clock or server.clock))

    async def start(self) -> None:
        await super().start()
        if self.compactor is not None:
            self._tasks.append(asyncio.create_task(self.compactor.run()))

    # --- identity -------------------------------------------------------------------------

    def header(self) -> ResponseHeader:
        return ResponseHeader(
            self._cluster_id, self.core.id, self._sm.revision, self.core.rn.raft.term
        )

    # --- key-value ------------------------------------------------------------------------

    async def _write_one(self, request: sc.Request, session_id: int = 0,
                         seq: int = 0) -> sc.Response:
        """One command through the log (``LocalBackend.write`` runs compactions in steps of
        these)."""
        data = sc.encode_envelope(sc.Envelope(request, session_id, seq))
        if len(data) > self.max_request_bytes + _SLACK_BYTES:
            raise RequestTooLarge()
        result: sc.Response = await self.server.propose(data)
        return result

    def submit_write(self, request: sc.Request, session_id: int, seq: int, waiter: Waiter) -> None:
        """``write`` for callers that take the outcome in a callback: the waiter gets the
        state machine's response or the error (the same ones ``write`` raises)."""
        data = sc.encode_envelope(sc.Envelope(request, session_id, seq))
        if len(data) > self.max_request_bytes + _SLACK_BYTES:
            waiter.fail(RequestTooLarge())
            return
        self.server.submit(data, waiter)

    async def _write_as_leader(self, request: sc.Request) -> sc.Response:
        """A lease decision measured on this leader's clock: appended only while this node
        leads, never forwarded (see NodeCore.propose)."""
        data = sc.encode_envelope(sc.Envelope(request))
        result: sc.Response = await self.server.propose(data, leader_only=True)
        return result

    async def read(self, request: ReadRequest, serializable: bool = False) -> ReadResponse:
        if not serializable:
            await self.server.read_barrier()
        if isinstance(request, sc.RangeRequest):
            return self._sm.range(request)
        return self._sm.read_txn(request)

    def _after_apply(self, request: sc.Request, result: sc.Response) -> None:
        """Runs on every node for every applied command (called by KvStateMachine). Watchers
        are woken once per applied batch instead (``_after_batch``): one wake-up per Ready."""
        if type(request) is sc.PutRequest:  # the common case: only the size estimate moves
            if self._db_size_estimate is not None:
                self._db_size_estimate += (len(request.key) + len(request.value)
                                           + RECORD_OVERHEAD_BYTES)
            return
        self._mirror_apply(request, result)

    def _after_batch(self, rd: Ready) -> None:
        if rd.committed_entries or rd.snapshot is not None:
            self._wake_ready()

    # --- automatic compaction -------------------------------------------------------------

    def make_compactor(self, policy: CompactionPolicy, clock: Clock,
                       planted_bugs: frozenset[str] = frozenset()) -> AutoCompactor:
        """An AutoCompactor over this node: it samples the local store on every node and
        proposes compactions as leader-only commands (see quorum.api.compactor)."""
        return AutoCompactor(
            policy, clock,
            revisions=lambda: (self._sm.revision, self._sm.compact_revision),
            is_leader=lambda: self.core.is_leader,
            compact=lambda revision: compact_in_steps(
                lambda r, _first: self._write_as_leader(r), sc.CompactionRequest(revision)),
            planted_bugs=planted_bugs,
        )

    # --- leases ---------------------------------------------------------------------------

    def _on_soft_state(self, ss: SoftState, previous: Callable[[SoftState], None] | None) -> None:
        if ss.role == StateRole.LEADER and not self._tracker.is_leader:
            infos = [self._sm.lease_info(i) for i in self._sm.lease_ids()]
            self._tracker.promote(self._clock(), [i for i in infos if i is not None])
        elif ss.role != StateRole.LEADER and self._tracker.is_leader:
            self._tracker.demote()
        if previous is not None:
            previous(ss)

    async def expire_leases(self) -> tuple[int, ...]:
        """Leader only: propose expiry of leases past their deadline, and due checkpoints."""
        if not self._tracker.is_leader:
            return ()
        now = self._clock()
        checkpoints = self._tracker.checkpoints(now)
        if checkpoints:
            with contextlib.suppress(Exception):
                await self._write_as_leader(sc.LeaseCheckpointRequest(tuple(checkpoints)))
        expired = tuple(self._tracker.expired(now))
        if not expired:
            return ()
        try:
            result = await self._write_as_leader(sc.LeaseExpireRequest(ids=expired))
        except (LeaderChanged, RequestTimeout, NotLeader) as exc:
            log.info("lease expiry not committed (%s); will retry", exc)
            return ()
        return result.expired if isinstance(result, sc.LeaseExpireResponse) else ()

    async def lease_keepalive(self, lease_id: int) -> int:
        if self._tracker.is_leader:
            # Confirm leadership first: a ReadIndex round, in which a majority acknowledges
            # this term after the call (etcd's LeaseRenew does the same, etcd issue 15247).
            # A leader cut off from its majority acts as leader until check quorum steps it
            # down (thesis §6.2), while a newer leader restarts TTLs at its promotion,
            # knowing nothing of renewals here: without the round it could promise a TTL
            # the real leader never grants. With it, any newer leader was promoted after
            # that round, hence after the call, so its deadline is at least call + TTL.
            await self.server.read_barrier()
            if not self._tracker.is_leader:  # deposed meanwhile: ask the new leader
                return await self._relay_keepalive(lease_id)
            ttl = self._tracker.keepalive(lease_id, self._clock())
            if self._tracker.clear_pending(lease_id):
                # The state holds a checkpoint with a shorter remaining TTL: commit its
                # clearing before promising the renewed TTL, or a failover in between would
                # restart the lease from the stale value (etcd waits for the same).
                due = tuple(self._tracker.checkpoints(self._clock()))
                await self._write_as_leader(sc.LeaseCheckpointRequest(due))
            return ttl
        return await self._relay_keepalive(lease_id)

    async def _relay_keepalive(self, lease_id: int) -> int:
        """A follower relays a renewal to the leader, which alone measures lease time."""
        leader = self.core.leader_id
        if self._sm.lease_info(lease_id) is None:
            raise LeaseNotFound()
        client = await self._leader(leader, "lease keepalive")
        relayed: int = await client.lease_keepalive_once(lease_id)
        return relayed

    async def _leader(self, leader: int, what: str) -> Any:
        if not leader or self.leader_client is None:
            raise NotLeader(f"{what} must reach the leader, which is unknown", leader_id=leader)
        return await self.leader_client(leader)

    async def lease_time_to_live(self, lease_id: int, keys: bool = False) -> LeaseGrantInfo:
        info = self._sm.lease_info(lease_id, keys=keys)
        if info is None:
            return LeaseGrantInfo(lease_id, -1, 0)
        remaining = self._tracker.remaining(lease_id, self._clock())
        if remaining is None:  # not the leader: the granted TTL is the best bound we know
            remaining = info.remaining_ttl or info.granted_ttl
        return LeaseGrantInfo(lease_id, max(0, int(remaining)), info.granted_ttl, info.keys)

    # --- cluster --------------------------------------------------------------------------

    def _to_member(self, m: MemberInfo) -> Member:
        # Every member is assumed to serve its ports as this one does (one TLS setting per
        # cluster): members carry addresses, not schemes.
        peers = (f"{self.peer_scheme}://{m.peer_url}",) if m.peer_url else ()
        etcd = (f"{self.etcd_scheme}://{m.etcd_url}",) if m.etcd_url else ()
        clients = ((f"{self.client_scheme}://{m.client_url}",) if m.client_url else ()) + etcd
        return Member(m.id, m.name or f"node{m.id}", peers, clients, m.is_learner, etcd)

    def _members(self) -> tuple[Member, ...]:
        return tuple(self._to_member(self.core.members[i]) for i in sorted(self.core.members))

    async def member_list(self, linearizable: bool = False) -> tuple[Member, ...]:
        if linearizable:
            await self.server.read_barrier()
        return self._members()

    async def _change(
        self, kind: ConfChangeType, member_id: int, info: MemberInfo | None = None
    ) -> MemberChange:
        cc = ConfChange((ConfChangeSingle(kind, member_id),))
        await self.server.change_membership(cc, (info,) if info else ())
        current = self.core.members.get(member_id)
        return MemberChange(self._to_member(current) if current else None, self._members())

    async def member_add(self, peer_urls: tuple[str, ...], is_learner: bool) -> MemberChange:
        member_id = secrets.randbits(63) or 1
        peer = url_host_port(peer_urls[0]) if peer_urls else ""
        info = MemberInfo(member_id, peer_url=peer, is_learner=is_learner)
        kind = ConfChangeType.ADD_LEARNER if is_learner else ConfChangeType.ADD_NODE
        change = await self._change(kind, member_id, info)
        if change.member is None:
            return MemberChange(self._to_member(info), change.members)
        return change

    async def member_remove(self, member_id: int) -> MemberChange:
        current = self.core.members.get(member_id)
        if current is None:
            raise MemberNotFound("etcdserver: member not found")
        result = await self._change(ConfChangeType.REMOVE_NODE, member_id)
        return MemberChange(self._to_member(current), result.members)

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> MemberChange:
        current = self.core.members.get(member_id)
        if current is None:
            raise MemberNotFound("etcdserver: member not found")
        peer = url_host_port(peer_urls[0]) if peer_urls else current.peer_url
        info = MemberInfo(current.id, current.name, peer, current.client_url, current.etcd_url,
                          current.is_learner)
        return await self._change(ConfChangeType.UPDATE_NODE, member_id, info)

    async def publish_member(self, info: MemberInfo) -> None:
        """Record a member's own addresses in the replicated member list. UPDATE_NODE names
        no role: a record naming the role seen here could commit after a promotion (or a
        demotion) and undo it (docs/node.md, Membership)."""
        await self._change(ConfChangeType.UPDATE_NODE, info.id, info)

    async def member_promote(self, member_id: int) -> MemberChange:
        current = self.core.members.get(member_id)
        if current is None:
            raise MemberNotFound("etcdserver: member not found")
        if not current.is_learner:
            raise MemberNotLearner("etcdserver: can only promote a learner member")
        if not self.core.is_leader:
            # only the leader knows how far the learner got: let it decide
            client = await self._leader(self.core.leader_id, "member promote")
            await client.member_promote(member_id)
            return MemberChange(self._to_member(self.core.members[member_id]), self._members())
        self._check_learner_ready(member_id)
        return await self._change(ConfChangeType.ADD_NODE, member_id)

    def _check_learner_ready(self, member_id: int) -> None:
        """A learner is promoted only once it holds at least 90% of the leader's log (as etcd
        does), so the promotion cannot stall commits while it catches up."""
        status = self.core.rn.status()
        progress = next((p for p in status.progress if p.id == member_id), None)
        if progress is None or progress.match < status.last_index * 0.9:
            raise LearnerNotReady(
                "etcdserver: can only promote a learner member which is in sync with leader"
            )

    # --- maintenance ----------------------------------------------------------------------

    async def status(self) -> Status:
        st = self.core.rn.status()
        return Status(
            version=quorum.__version__,
            db_size_bytes=self._db_size_bytes(),
            leader=self.core.leader_id,
            raft_index=st.last_index,
            raft_term=st.term,
            raft_applied_index=self.core.applied,
            errors=tuple(f"memberID:{self.core.id} alarm:{a.name}" for a in sorted(self._alarms)),
            is_learner=self.core.id in set(self.core.conf_state.learners),
        )

    async def move_leader(self, target_id: int) -> None:
        if target_id not in self.core.members or self.core.members[target_id].is_learner:
            raise BadLeaderTransferee("etcdserver: bad leader transferee")
        if not self.core.is_leader:
            raise NotLeader("move-leader must be sent to the leader", self.core.leader_id)
        self.core.transfer_leader(target_id)
        self.server.wake()
        deadline = self._clock() + self.server.tick_s * self.core.rn.raft.config.election_ticks * 3
        while self.core.leader_id != target_id:
            if self._clock() > deadline:
                raise RequestTimeout("leadership transfer did not complete")
            await asyncio.sleep(self.server.tick_s / 2)
