"""A readers-writer lock with fencing tokens.

Readers create ``<prefix>r/<lease>``, writers ``<prefix>w/<lease>``; everyone is ordered by
create revision. A reader waits for every *writer* created before it; a writer waits for
every key created before it. So readers share, writers exclude everyone, and nobody starves
(FIFO by create revision). Tokens are the keys' create revisions, as for :class:`Lock`.
"""

from __future__ import annotations

import contextlib

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import OwnedLease, as_bytes, create_once, wait_predecessors
from quorum.client.txn import create_revision, delete
from quorum.errors import LockLost, QuorumError, UsageError
from quorum.state.commands import prefix_end

RWLOCK_ROOT = b"/quorum/rwlocks/"


class RWLock:
    """One participant of the readers-writer lock ``name``; ``read_lock()``/``write_lock()``
    return the token; ``release()`` ends whichever is held."""

    def __init__(
        self, client: AsyncClient, name: bytes | str, *, ttl_s: int = 10, lease_id: int = 0
    ) -> None:
        self.client = client
        self.prefix = RWLOCK_ROOT + as_bytes(name) + b"/"
        self._lease = OwnedLease(client, ttl_s, lease_id)
        self.key = b""
        self.token = 0

    async def read_lock(self) -> int:
        """Share the lock with other readers; waits for earlier writers."""
        writers = self.prefix + b"w/"
        return await self._lock(b"r/", writers, prefix_end(writers))

    async def write_lock(self) -> int:
        """Hold the lock alone; waits for every earlier reader and writer."""
        return await self._lock(b"w/", self.prefix, prefix_end(self.prefix))

    async def _lock(self, kind: bytes, pred_start: bytes, pred_end: bytes) -> int:
        if self.token:
            raise UsageError("this RWLock object already holds the lock")
        try:
            lease_id = await self._lease.ensure()
            self.key = self.prefix + kind + b"%016x" % lease_id
            mine = await create_once(self.client, self.key, b"", lease_id)
            await wait_predecessors(
                self.client, self.key, mine.create_revision, self.prefix, pred_start, pred_end
            )
            kv = await self.client.get(self.key)
            if kv is None or kv.create_revision != mine.create_revision:
                raise LockLost(f"rwlock {self.prefix!r}: our key vanished while waiting")
        except BaseException:
            await self.release()
            raise
        self.token = mine.create_revision
        return self.token

    async def release(self) -> None:
        key, token = self.key, self.token
        self.token = 0
        with contextlib.suppress(QuorumError):
            if key and token:
                await self.client.txn([create_revision(key) == token], [delete(key)])
            elif key:
                await self.client.delete(key)
        self.key = b""
        await self._lease.release()
