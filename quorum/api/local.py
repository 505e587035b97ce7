"""``LocalBackend``: the Backend contract served by one process, without consensus.

Commands are applied directly to a ``quorum.state`` StateMachine, one log index per write,
in call order, so the results are exactly what a single-node cluster would return. It is
meant for dev mode (``python -m quorum.api.etcd``) and for the API tests; nothing is durable.

Leases: the state machine never reads a clock. As the Raft leader's runtime does, this
backend keeps a ``LeaseTracker`` fed with its clock (injectable, for tests), renews leases on
keepalive and *proposes* expiry (a ``LeaseExpireRequest`` write) for leases whose deadline
passed, from a background task started by :meth:`start` (or on demand with
:meth:`expire_leases`).

Watches: the state machine's watch hub is pull-based; each watcher here waits on an event
that every applied write, progress request and cancel sets, then drains the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import quorum
from quorum.api.backend import (
    Alarm,
    AlarmAction,
    AlarmType,
    HashKV,
    LeaseGrantInfo,
    Member,
    MemberChange,
    ReadRequest,
    ReadResponse,
    ResponseHeader,
    Status,
    WatchCreate,
    WatchResponse,
)
from quorum.api.compaction import compact_in_steps, is_whole
from quorum.errors import LeaseNotFound, NotSupported, UsageError, WatchNotFound
from quorum.state import commands as sc
from quorum.state.config import StateConfig
from quorum.state.lease_tracker import LeaseTracker
from quorum.state.machine import StateMachine

DEFAULT_CLUSTER_ID = 0x51A1_C0DE  # fixed, so headers are stable across dev restarts
DEFAULT_MEMBER_ID = 0x1
RAFT_TERM = 1  # one node, never re-elected


RECORD_OVERHEAD_BYTES = 24  # revisions, version, lease of one stored record (estimate)


def written_bytes(request: sc.Request, result: sc.Response) -> int:
    """Approximate bytes an applied write added to the stored history."""
    if isinstance(request, sc.PutRequest):
        return len(request.key) + len(request.value) + RECORD_OVERHEAD_BYTES
    if isinstance(request, sc.DeleteRangeRequest) and isinstance(result, sc.DeleteRangeResponse):
        return result.deleted * (len(request.key) + RECORD_OVERHEAD_BYTES)  # tombstones
    if isinstance(request, sc.TxnRequest) and isinstance(result, sc.TxnResponse):
        branch = request.success if result.succeeded else request.failure
        return sum(written_bytes(op, res) for op, res in zip(branch, result.responses))
    return 0


class LocalWatch:
    """A watcher of a LocalBackend: iterate for responses; ends after a canceled one."""

    def __init__(self, backend: LocalBackend, watch_id: int) -> None:
        self._backend = backend
        self._id = watch_id
        self.wakeup = asyncio.Event()
        self.wakeup.set()  # a compacted start or a replay may be queued already
        self._done = False

    @property
    def watch_id(self) -> int:
        return self._id

    def __aiter__(self) -> AsyncIterator[WatchResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[WatchResponse]:
        try:
            while not self._done:
                await self.wakeup.wait()
                self.wakeup.clear()
                batch = self._backend._drain(self._id)
                for resp in batch:
                    if resp.canceled:
                        self._done = True  # before yielding: the consumer may stop right here
                        yield resp
                        return
                    yield resp
                if batch:
                    # A lagging watcher catches up from history in bounded steps: drain again
                    # until a drain comes back empty (cheap for a watcher that is up to date).
                    self.wakeup.set()
        finally:
            if not self._done:  # the consumer stopped before the end (cancelled, closed)
                self._done = True
                self._backend._abandon(self._id)

    async def cancel(self) -> None:
        if not self._done:
            self._backend._cancel_watch(self._id)

    async def request_progress(self) -> None:
        if not self._done:
            self._backend._request_progress(self._id)


class LocalBackend:
    """An in-process Backend (see the module docstring). Single event loop; not thread-safe.

    ``clock`` returns monotonic seconds (injectable so tests control lease expiry).

    ``quorum.api.cluster.ClusterBackend`` subclasses this class to reuse its watch, lease and
    maintenance machinery over the replicated state machine; it relies on ``_sm``,
    ``_tracker``, ``_clock``, ``_cluster_id``, ``_alarms``, ``_after_apply`` and
    ``_db_size_bytes``, so those names and meanings are part of this class's contract.
    """

    def __init__(
        self,
        config: StateConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        cluster_id: int = DEFAULT_CLUSTER_ID,
        member_id: int = DEFAULT_MEMBER_ID,
        name: str = "default",
        client_urls: tuple[str, ...] = (),
        peer_urls: tuple[str, ...] = ("http://127.0.0.1:2380",),
        lease_check_interval_s: float = 0.5,
        progress_notify_interval_s: float = 600.0,
    ) -> None:
        self._sm = StateMachine(config or StateConfig())
        self._clock = clock
        self._tracker = LeaseTracker()
        self._tracker.promote(clock(), [])
        self._cluster_id = cluster_id
        self._member = Member(member_id, name, peer_urls, client_urls, False)
        self._applied_index = 0
        self._watches: dict[int, LocalWatch] = {}
        self._alarms: set[AlarmType] = set()
        self._lease_check_interval_s = lease_check_interval_s
        self._progress_notify_interval_s = progress_notify_interval_s
        self._tasks: list[asyncio.Task[None]] = []
        self._db_size_estimate: int | None = None  # None: measure on first use

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the lease-expiry and watch-progress background tasks."""
        self._tasks.append(asyncio.create_task(self._lease_loop()))
        self._tasks.append(asyncio.create_task(self._progress_loop()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for watch_id in list(self._watches):
            self._cancel_watch(watch_id)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self._lease_check_interval_s)
            await self.expire_leases()

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self._progress_notify_interval_s)
            self.progress_tick()

    def advertise_client_urls(self, client_urls: tuple[str, ...]) -> None:
        """Set the client URLs member_list reports (known once the API server is bound)."""
        m = self._member
        self._member = Member(m.id, m.name, m.peer_urls, tuple(client_urls), m.is_learner)

    # --- identity -------------------------------------------------------------------------
    @property
    def cluster_id(self) -> int:
        return self._cluster_id

    @property
    def member_id(self) -> int:
        return self._member.id

    @property
    def state_machine(self) -> StateMachine:
        """The state machine (tests compare hashes and inspect state through it)."""
        return self._sm

    def header(self) -> ResponseHeader:
        return ResponseHeader(self._cluster_id, self._member.id, self._sm.revision, RAFT_TERM)

    # --- key-value ------------------------------------------------------------------------
    async def write(self, request: sc.Request, session_id: int = 0, seq: int = 0) -> sc.Response:
        if is_whole(request):  # a large compaction must not hold the loop: in steps
            assert isinstance(request, sc.CompactionRequest)
            return await compact_in_steps(
                lambda r, first: self._write_one(r, *((session_id, seq) if first else (0, 0))),
                request)
        return await self._write_one(request, session_id, seq)

    async def _write_one(self, request: sc.Request, session_id: int = 0,
                         seq: int = 0) -> sc.Response:
        self._applied_index += 1
        result = self._sm.apply(self._applied_index, sc.Envelope(request, session_id, seq))
        self._after_apply(request, result)
        return result

    def _after_apply(self, request: sc.Request, result: sc.Response) -> None:
        self._mirror_apply(request, result)
        self._wake_ready()

    def _mirror_apply(self, request: sc.Request, result: sc.Response) -> None:
        """Follow an applied command in the size estimate and the lease tracker."""
        if self._db_size_estimate is not None:
            self._db_size_estimate += written_bytes(request, result)
        # The leader's lease bookkeeping follows committed commands (thesis-style: the log
        # decides, the tracker only measures time).
        now = self._clock()
        if isinstance(result, sc.LeaseGrantResponse):
            self._tracker.granted(result.id, result.ttl, now)
        elif isinstance(request, sc.LeaseRevokeRequest):
            self._tracker.revoked(request.id)
        elif isinstance(result, sc.LeaseExpireResponse):
            for lease_id in result.expired:
                self._tracker.revoked(lease_id)
        elif isinstance(request, sc.LeaseCheckpointRequest):
            for checkpoint in request.checkpoints:
                self._tracker.checkpoint_applied(checkpoint)

    async def read(self, request: ReadRequest, serializable: bool = False) -> ReadResponse:
        # One process, applied == committed: every read is linearizable here.
        if isinstance(request, sc.RangeRequest):
            return self._sm.range(request)
        return self._sm.read_txn(request)

    # --- watches --------------------------------------------------------------------------
    async def watch(self, req: WatchCreate) -> LocalWatch:
        watch_id = self._sm.watch(req)
        handle = LocalWatch(self, watch_id)
        self._watches[watch_id] = handle
        return handle

    def _drain(self, watch_id: int) -> list[WatchResponse]:
        try:
            out = self._sm.drain_watch(watch_id)
        except WatchNotFound:
            out = [WatchResponse(watch_id, self._sm.revision, canceled=True)]
        if out and out[-1].canceled:
            self._watches.pop(watch_id, None)
        return out

    def _cancel_watch(self, watch_id: int) -> None:
        with contextlib.suppress(WatchNotFound):
            self._sm.cancel_watch(watch_id)
        self._wake(watch_id)

    def _abandon(self, watch_id: int) -> None:
        """Forget a watcher nobody will read again (its consumer stopped iterating, or never
        started): the state machine frees a canceled watcher only once its last response is
        drained, so without this every vanished client left one behind for good."""
        self._watches.pop(watch_id, None)
        with contextlib.suppress(WatchNotFound):
            self._sm.cancel_watch(watch_id)
            self._sm.drain_watch(watch_id)  # a canceled watcher skips catch-up: cheap

    def _request_progress(self, watch_id: int) -> None:
        with contextlib.suppress(WatchNotFound):
            self._sm.watches.request_progress(watch_id)
        self._wake(watch_id)

    def progress_tick(self) -> None:
        """Periodic progress notifications for idle ``progress_notify`` watchers."""
        self._sm.watches.progress_tick()
        self._wake_ready()

    def _wake(self, watch_id: int) -> None:
        handle = self._watches.get(watch_id)
        if handle is not None:
            handle.wakeup.set()

    def _wake_ready(self) -> None:
        for watch_id in self._sm.watches.ready():
            self._wake(watch_id)

    # --- leases ---------------------------------------------------------------------------
    async def expire_leases(self) -> tuple[int, ...]:
        """Propose due lease checkpoints and the expiry of every lease whose deadline passed
        (what the leader's runtime does each tick); return the ids expired."""
        now = self._clock()
        checkpoints = self._tracker.checkpoints(now)
        if checkpoints:
            await self.write(sc.LeaseCheckpointRequest(checkpoints=tuple(checkpoints)))
        expired = tuple(self._tracker.expired(now))
        if not expired:
            return ()
        result = await self.write(sc.LeaseExpireRequest(ids=expired))
        assert isinstance(result, sc.LeaseExpireResponse)
        return result.expired

    async def lease_keepalive(self, lease_id: int) -> int:
        if self._sm.lease_info(lease_id) is None:
            raise LeaseNotFound()
        return self._tracker.keepalive(lease_id, self._clock())

    async def lease_time_to_live(self, lease_id: int, keys: bool = False) -> LeaseGrantInfo:
        info = self._sm.lease_info(lease_id, keys=keys)
        if info is None:
            return LeaseGrantInfo(lease_id, -1, 0)
        remaining = self._tracker.remaining(lease_id, self._clock())
        ttl = info.granted_ttl if remaining is None else remaining
        return LeaseGrantInfo(lease_id, ttl, info.granted_ttl, info.keys)

    async def leases(self) -> tuple[int, ...]:
        return self._sm.lease_ids()

    # --- cluster --------------------------------------------------------------------------
    async def member_list(self, linearizable: bool = False) -> tuple[Member, ...]:
        return (self._member,)

    async def member_add(self, peer_urls: tuple[str, ...], is_learner: bool) -> MemberChange:
        raise NotSupported("local backend: a single in-process member; run a cluster to add members")

    async def member_remove(self, member_id: int) -> MemberChange:
        raise NotSupported("local backend: a single in-process member cannot be removed")

    async def member_update(self, member_id: int, peer_urls: tuple[str, ...]) -> MemberChange:
        if member_id != self._member.id:
            raise NotSupported("local backend: only the local member exists")
        m = self._member
        self._member = Member(m.id, m.name, tuple(peer_urls), m.client_urls, m.is_learner)
        return MemberChange(None, (self._member,))

    async def member_promote(self, member_id: int) -> MemberChange:
        raise NotSupported("local backend: there are no learners to promote")

    # --- maintenance ----------------------------------------------------------------------
    async def status(self) -> Status:
        return Status(
            version=quorum.__version__,
            db_size_bytes=self._db_size_bytes(),
            leader=self._member.id,
            raft_index=self._applied_index,
            raft_term=RAFT_TERM,
            raft_applied_index=self._applied_index,
            errors=tuple(f"memberID:{self._member.id} alarm:{a.name}" for a in sorted(self._alarms)),
        )

    def _db_size_bytes(self) -> int:
        """An estimate of the bytes a durable copy of the state takes, kept in O(1) per
        status call: measured once (encoding a snapshot, O(state)) on first use and after
        :meth:`defragment`, then grown by what every applied write adds. Like a database
        file, it does not shrink on delete or compaction until a defragment. (Encoding a
        snapshot per call would stall the event loop for seconds on a large state: a
        monitoring loop polling Status must not delay a node's heartbeats.)"""
        if self._db_size_estimate is None:
            self._db_size_estimate = self._measure_db_size()
        return self._db_size_estimate

    def _measure_db_size(self) -> int:
        return sum(len(chunk) for chunk in self._sm.snapshot())

    async def hash_kv(self, revision: int = 0) -> HashKV:
        digest, compact, hashed = self._sm.hash_kv(revision)
        return HashKV(digest, compact, hashed)

    async def hash(self) -> int:
        return self._sm.state_hash()

    async def snapshot(self) -> AsyncIterator[bytes]:
        for chunk in self._sm.snapshot():
            yield chunk
            await asyncio.sleep(0)  # let other requests run between chunks

    async def move_leader(self, target_id: int) -> None:
        if target_id != self._member.id:
            raise NotSupported("local backend: no other member to hand leadership to")

    async def defragment(self) -> None:
        # In-memory state has nothing to reclaim; re-measure the size estimate (as etcd's
        # defragment shrinks the database file to what is in use).
        self._db_size_estimate = self._measure_db_size()

    async def alarms(
        self, action: AlarmAction = AlarmAction.GET, member_id: int = 0,
        alarm: AlarmType = AlarmType.NONE,
    ) -> tuple[Alarm, ...]:
        if member_id not in (0, self._member.id):
            raise UsageError(f"unknown member {member_id:x}")
        if action == AlarmAction.ACTIVATE and alarm != AlarmType.NONE:
            self._alarms.add(alarm)
        elif action == AlarmAction.DEACTIVATE:
            self._alarms.discard(alarm)
        return tuple(Alarm(self._member.id, a) for a in sorted(self._alarms))
