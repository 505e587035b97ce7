"""Barriers.

:class:`Barrier`: one party raises the barrier (creates a key), others ``wait()`` until it is
released (the key deleted). :class:`DoubleBarrier`: ``count`` parties ``enter()``; nobody
proceeds until all have entered; on ``leave()`` nobody proceeds until all have left.
Both are built on watches that start at the revision of the read they follow, so no change
between "look" and "wait" is missed.
"""

from __future__ import annotations

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import OwnedLease, as_bytes
from quorum.client.txn import create_revision, get, put
from quorum.state.commands import EventType, RangeResponse, prefix_end

BARRIER_ROOT = b"/quorum/barriers/"


class Barrier:
    def __init__(self, client: AsyncClient, name: bytes | str) -> None:
        self.client = client
        self.key = BARRIER_ROOT + as_bytes(name)

    async def hold(self) -> None:
        """Raise the barrier (idempotent)."""
        await self.client.txn([create_revision(self.key) == 0], [put(self.key, b"")])

    async def release(self) -> None:
        """Lower the barrier: every waiter proceeds."""
        await self.client.delete(self.key)

    async def wait(self) -> None:
        """Return once the barrier is not held (at once if it is not held now)."""
        resp = await self.client.range(self.key)
        if not resp.kvs:
            return
        watcher = self.client.watch(self.key, start_revision=resp.revision + 1, filter_put=True)
        try:
            async for batch in watcher:
                if any(e.type is EventType.DELETE for e in batch.events):
                    return
        finally:
            await watcher.cancel()


class DoubleBarrier:
    """``count`` parties meet on entry and on exit. Each party's key lives under its own lease,
    so a party that dies stops counting once its lease expires."""

    def __init__(
        self, client: AsyncClient, name: bytes | str, count: int, *, ttl_s: int = 10
    ) -> None:
        self.client = client
        self.prefix = BARRIER_ROOT + as_bytes(name) + b"/"
        self.waiters = self.prefix + b"waiters/"
        self.ready_key = self.prefix + b"ready"
        self.count = count
        self._lease = OwnedLease(client, ttl_s)
        self.key = b""

    async def enter(self) -> None:
        """Join; return once ``count`` parties have joined."""
        lease_id = await self._lease.ensure()
        self.key = self.waiters + b"%016x" % lease_id
        resp = await self.client.txn(
            [],
            [put(self.key, b"", lease=lease_id), get(self.waiters, prefix=True, count_only=True),
             get(self.ready_key)],
        )
        counted, ready = resp.responses[1], resp.responses[2]
        assert isinstance(counted, RangeResponse) and isinstance(ready, RangeResponse)
        if ready.kvs:
            return
        if counted.count >= self.count:
            await self.client.put(self.ready_key, b"")
            return
        watcher = self.client.watch(self.ready_key, start_revision=resp.revision + 1)
        try:
            async for batch in watcher:
                if any(e.type is EventType.PUT for e in batch.events):
                    return
        finally:
            await watcher.cancel()

    async def leave(self) -> None:
        """Leave; return once every party has left (the barrier is then reusable)."""
        await self.client.delete(self.key)
        await self._lease.release()
        while True:
            resp = await self.client.range(self.waiters, prefix_end(self.waiters), count_only=True)
            if resp.count == 0:
                await self.client.delete(self.ready_key)
                return
            watcher = self.client.watch(
                self.waiters, prefix_end(self.waiters), start_revision=resp.revision + 1,
                filter_put=True,
            )
            try:
                async for _batch in watcher:
                    break
            finally:
                await watcher.cancel()
