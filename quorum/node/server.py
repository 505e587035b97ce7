"""RaftServer: the asyncio driver of a NodeCore (production runtime).

One task runs the Ready loop; a timer feeds ticks; the peer transport feeds inbound messages.
fsync runs in a worker thread so the event loop keeps reading requests and messages meanwhile;
whatever arrives during an fsync becomes the next batch (group commit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from quorum.errors import DiskFullError, NodeStopped
from quorum.node.clock import Clock, SystemClock
from quorum.node.core import NodeCore
from quorum.node.ready import process_ready
from quorum.raft.types import ConfChange, ConfState, Message, Ready

log = logging.getLogger("quorum.node")


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
    ) -> None:
        self.core = core
        self.tick_s = tick_s
        self.clock = clock or SystemClock()
        self.fsync_in_thread = fsync_in_thread
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"quorum-fsync-{core.id}"
        )
        self._running = False
        self.on_tick: Callable[[], None] | None = None
        self.fatal_error: BaseException | None = None
        self.disk_full_retry_s = 1.0

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
        self._executor.shutdown(wait=True)

    def wake(self) -> None:
        self._wake.set()

    # --- inputs -----------------------------------------------------------------------------

    def receive(self, messages: list[Message]) -> None:
        self.core.receive(messages)
        self.wake()

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
                core.drain()
                while core.has_ready():
                    await process_ready(core, core.ready(), self._persist)
                    core.drain()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # storage failure: the node must stop (see docs)
            self.fatal_error = exc
            log.critical("node %d stopping after fatal error: %r", core.id, exc)
            self._running = False
            core.stop()

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
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self.core.persist, rd)
        else:
            self.core.persist(rd)
