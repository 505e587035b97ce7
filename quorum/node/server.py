"""RaftServer: the asyncio driver of a NodeCore (production runtime).

One task runs the Ready loop; a timer feeds ticks; the peer transport feeds inbound messages.
fsync runs in a worker thread so the event loop keeps reading requests and messages meanwhile;
whatever arrives during an fsync becomes the next batch (group commit).

Automatic snapshots stay off the event loop too: the loop only captures the state (pointer
copies), a snapshot thread encodes it, and the persist thread writes it between two Readies
(it appends a WAL marker, so it must not overlap a persist); the loop then compacts the log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from quorum.errors import DiskFullError, NodeStopped, SnapshotOutOfDate
from quorum.node.clock import Clock, SystemClock
from quorum.node.core import NodeCore, SnapshotJob, Waiter
from quorum.node.persister import Persister
from quorum.node.ready import process_ready
from quorum.raft.types import ConfChange, ConfState, Message, MessageType, Ready

log = logging.getLogger("quorum.node")

# A peer that forwarded a proposal to us within this long is waiting for commit notices (its
# own writes are answered when it applies them), so they are sent to it at once, not lazily
# (quorum.node.peers). Long enough to cover a forwarded write's commit under load.
FORWARDER_WINDOW_S = 1.0


class FutureWaiter:
    """Adapts an asyncio future to NodeCore's Waiter (first outcome wins)."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut

    def resolve(self, value: Any) -> None:
        if not self.fut.done():
            self.fut.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)


class PeerSender(Protocol):
    def send(self, messages: list[Message]) -> None: ...


class RaftServer:
    """Drives one NodeCore from an asyncio event loop.

    ``core`` must have been built with ``send`` = ``self.send_messages`` (or a function that
    forwards to the transport); see quorum.node.cluster for the production wiring.
    """

    def __init__(
        self,
        core: NodeCore,
        *,
        tick_s: float = 0.1,
        clock: Clock | None = None,
        fsync_in_thread: bool = True,
        background_snapshots: bool = True,
    ) -> None:
        self.core = core
        self.tick_s = tick_s
        self.clock = clock or SystemClock()
        self.fsync_in_thread = fsync_in_thread
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # Storage writes (persist, snapshot files) run in order on one dedicated thread.
        self._persister = Persister(f"quorum-persist-{core.id}")
        self._running = False
        self.on_tick: Callable[[], None] | None = None
        self.fatal_error: BaseException | None = None
        self.disk_full_retry_s = 1.0
        # Snapshot encoding gets its own thread: a long encode must not hold up the fsyncs.
        self._snapshot_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"quorum-snapshot-{core.id}"
        )
        self._encoded: tuple[SnapshotJob, bytes] | None = None  # waiting to be written
        self._forwarded_at: dict[int, float] = {}  # peer -> clock time of its last proposal
        if background_snapshots:
            core.start_background_snapshot = self._start_snapshot

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        self._tasks = [
            asyncio.create_task(self._ready_loop(), name=f"ready-{self.core.id}"),
            asyncio.create_task(self._ticker(), name=f"ticker-{self.core.id}"),
        ]
        self.wake()

    async def stop(self) -> None:
        self._running = False
        self.core.stop()
        self.wake()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        self._persister.close()
        # An encode still running is abandoned (its result is dropped by _snapshot_encoded);
        # nothing of it was written, so the previous snapshot and the WAL stay as they were.
        self._snapshot_executor.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    # --- inputs -----------------------------------------------------------------------------

    def receive(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.type == MessageType.PROP:  # a follower forwarded a write to us
                self._forwarded_at[msg.from_] = self.clock.monotonic()
        self.core.receive(messages)
        self.wake()

    def forwarded_recently(self, peer: int) -> bool:
        """True if ``peer`` forwarded a proposal to us within FORWARDER_WINDOW_S: it answers
        its clients only once it learns the commit, so its commit notices must not wait."""
        at = self._forwarded_at.get(peer)
        return at is not None and self.clock.monotonic() - at < FORWARDER_WINDOW_S

    def _future(self) -> asyncio.Future[Any]:
        if not self._running:
            raise NodeStopped("node is not running")
        return asyncio.get_running_loop().create_future()

    async def propose(self, payload: bytes, *, leader_only: bool = False) -> Any:
        """Replicate ``payload`` and return the state machine's result once applied here
        (``leader_only``: see NodeCore.propose)."""
        fut = self._future()
        self.core.propose(payload, FutureWaiter(fut), leader_only=leader_only)
        self.wake()
        return await fut

    def submit(self, payload: bytes, waiter: Waiter) -> None:
        """``propose`` without a future or a coroutine: the waiter gets the result (or the
        error) straight from the Ready loop when the entry is applied here. For callers
        that answer from a callback (the native protocol's writes)."""
        if not self._running:
            waiter.fail(NodeStopped("node is not running"))
            return
        self.core.propose(payload, waiter)
        self.wake()

    async def read_barrier(self) -> int:
        """Wait until local state reflects every write committed before the call (ReadIndex)."""
        fut = self._future()
        self.core.read(FutureWaiter(fut))
        self.wake()
        result: int = await fut
        return result

    async def change_membership(self, change: ConfChange, members: tuple[Any, ...] = ()) -> ConfState:
        fut = self._future()
        self.core.propose_conf_change(change, FutureWaiter(fut), members)
        self.wake()
        result: ConfState = await fut
        return result

    # --- loops ------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while self._running:
            await self.clock.sleep(self.tick_s)
            self.core.tick()
            if self.on_tick is not None:
                self.on_tick()
            self.wake()

    async def _ready_loop(self) -> None:
        core = self.core
        try:
            while self._running:
                await self._wake.wait()
                self._wake.clear()
                await self._cycle()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # storage failure: the node must stop (see docs)
            self.fatal_error = exc
            log.critical("node %d stopping after fatal error: %r", core.id, exc)
            self._running = False
            core.stop()

    # --- snapshots off the event loop ----------------------------------------------------------

    def _start_snapshot(self, job: SnapshotJob) -> None:
        """NodeCore captured ``job`` (on the loop); encode it in the snapshot thread."""
        loop = asyncio.get_running_loop()
        fut = self._snapshot_executor.submit(_encode_off_loop, job)

        def done(f: concurrent.futures.Future[bytes]) -> None:  # runs in the snapshot thread
            with contextlib.suppress(RuntimeError):  # the loop closed: the node has stopped
                loop.call_soon_threadsafe(self._snapshot_encoded, job, f)

        fut.add_done_callback(done)

    def _snapshot_encoded(self, job: SnapshotJob, fut: concurrent.futures.Future[bytes]) -> None:
        if not self._running or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # a bug in a state machine's snapshot: keep serving, retry later
            log.error("node %d: encoding the snapshot at %d failed: %r", self.core.id,
                      job.index, exc)
            self.core.finish_snapshot(job, written=False)
            return
        self._encoded = (job, fut.result())
        self.wake()

    async def _install_snapshot(self, job: SnapshotJob, data: bytes) -> None:
        """Write the encoded snapshot in the persist thread (between two Readies, so it never
        overlaps a persist), then compact on the loop. A snapshot made stale by one installed
        from the leader meanwhile, or a full disk, abandons this one (the next is due after
        ``snapshot_entries`` more entries); any other storage error is fatal, as in persist."""
        self._encoded = None
        written = True
        try:
            # As for persist: the thread only when the write syncs (with fsync off the storage
            # is memory, where a write is quick and must not race the loop's reads)
            if self.fsync_in_thread and self.core.fsync:
                await self._persister.run(self.core.write_snapshot, job, data)
            else:
                self.core.write_snapshot(job, data)
        except SnapshotOutOfDate:
            written = False
        except DiskFullError as exc:
            log.warning("node %d: snapshot at %d not written: %s", self.core.id, job.index, exc)
            written = False
        self.core.finish_snapshot(job, written)

    async def _cycle(self) -> None:
        """Process Readies until none is left. An encoded snapshot is written between two
        Readies (never inside one), even when load keeps a Ready always waiting."""
        core = self.core
        core.drain()
        while True:
            if self._encoded is not None:
                await self._install_snapshot(*self._encoded)
                core.drain()
            if not core.has_ready():
                return
            await process_ready(core, core.ready(), self._persist)
            core.drain()

    async def _persist(self, rd: Ready) -> None:
        """Persist a Ready; while the disk is full, keep retrying the same Ready (nothing of
        it was written) and refuse new writes. Any other storage error is fatal."""
        while True:
            try:
                await self._persist_once(rd)
            except DiskFullError as exc:
                if not self.core.disk_full:
                    log.error("node %d: disk full (%s); refusing writes until space frees",
                              self.core.id, exc)
                    self.core.on_disk_full()
                await asyncio.sleep(self.disk_full_retry_s)
                continue
            if self.core.disk_full:
                log.warning("node %d: disk space is back; accepting writes", self.core.id)
                self.core.disk_full = False
            return

    async def _persist_once(self, rd: Ready) -> None:
        if rd.must_sync and self.core.fsync and self.fsync_in_thread:
            await self._persister.run(self.core.persist, rd)
        else:
            self.core.persist(rd)


# While a snapshot is encoded in its thread, the event loop thread waits for the GIL at most
# this long when it wants it back (the default switch interval is 5 ms: up to 5 ms added to
# every request the loop handles during the encode). Process-wide, so set by the first
# running encode and restored by the last one (several nodes may share a process).
ENCODE_SWITCH_INTERVAL_S = 0.0005
_encodes_running = 0
_encodes_lock = threading.Lock()
_saved_switch_interval = 0.0


def _encode_off_loop(job: SnapshotJob) -> bytes:
    global _encodes_running, _saved_switch_interval
    with _encodes_lock:
        if _encodes_running == 0:
            _saved_switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_switch_interval, ENCODE_SWITCH_INTERVAL_S))
        _encodes_running += 1
    try:
        return job.encode(_yield_gil)
    finally:
        with _encodes_lock:
            _encodes_running -= 1
            if _encodes_running == 0:
                sys.setswitchinterval(_saved_switch_interval)


def _yield_gil() -> None:
    """Called by the snapshot thread between state chunks: sleeping releases the GIL, so the
    event loop thread runs at least once per chunk instead of once per switch interval."""
    time.sleep(0)
