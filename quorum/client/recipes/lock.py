"""A distributed mutex with fencing tokens.

Each contender creates ``<prefix><lease id>`` attached to its lease; contenders are served in
the order of their keys' create revisions, each waiting only for the deletion of the key just
ahead of it. The holder's **fencing token** is its key's create revision: it is unique and
grows with every new holder, because a later holder's key is created after the earlier
holder's key (otherwise the later one would have been ahead in the queue).

Fencing, and why it is needed: a lock held through a lease ends when the lease expires,
whether or not the holder noticed (a GC pause, a SIGSTOP, a slow network). The old holder may
then still act on what it believes it owns. Every resource the lock protects must therefore
receive the token with each write and refuse any token lower than the highest it has seen
(see examples/fencing.py). With that rule a stale holder's writes are rejected; without it,
no lock service can prevent lost updates (TEST_SCENARIOS I.53).

The lock is never reported held unless its key still exists once the wait is over: if the
lease expired while waiting (the key vanished) ``acquire`` raises :class:`LockLost` instead
(etcd issue #11456, TEST_SCENARIOS I.54).
"""

from __future__ import annotations

import asyncio
import contextlib

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import OwnedLease, as_bytes, create_once, wait_predecessors
from quorum.client.txn import create_revision, delete
from quorum.errors import LockLost, QuorumError, UsageError
from quorum.state.commands import prefix_end

LOCK_ROOT = b"/quorum/locks/"


class Lock:
    """``async with Lock(client, "name"):`` or ``token = await lock.acquire()`` ... ``await
    lock.release()``. One Lock object is one contender; it is reusable after release.

    ``lease_id``: run under an existing lease (the caller keeps it alive); else a lease of
    ``ttl_s`` is granted and renewed in the background while the lock is wanted or held.
    """

    def __init__(
        self, client: AsyncClient, name: bytes | str, *, ttl_s: int = 10, lease_id: int = 0
    ) -> None:
        self.client = client
        self.prefix = LOCK_ROOT + as_bytes(name) + b"/"
        self._lease = OwnedLease(client, ttl_s, lease_id)
        self.key = b""
        self.token = 0  # fencing token while held, else 0

    async def acquire(self, timeout_s: float | None = None) -> int:
        """Wait for the lock and return the fencing token. Raises LockLost if the lease ended
        while waiting, TimeoutError after ``timeout_s`` (the place in line is given up)."""
        if self.token:
            raise UsageError("this Lock object already holds the lock")
        try:
            async with asyncio.timeout(timeout_s):
                return await self._acquire()
        except BaseException:
            await self._abandon()
            raise

    async def _acquire(self) -> int:
        lease_id = await self._lease.ensure()
        self.key = self.prefix + b"%016x" % lease_id
        mine = await create_once(self.client, self.key, b"", lease_id)
        end = prefix_end(self.prefix)
        await wait_predecessors(
            self.client, self.key, mine.create_revision, self.prefix, self.prefix, end
        )
        await self._confirm(mine.create_revision, lease_id)
        self.token = mine.create_revision
        return self.token

    async def _confirm(self, create_rev: int, lease_id: int) -> None:
        """The wait is over; prove the key is still ours before claiming the lock (a lease
        that expired while we waited deleted it)."""
        kv = await self.client.get(self.key)
        if kv is None or kv.create_revision != create_rev or kv.lease != lease_id:
            raise LockLost(f"lock {self.prefix!r}: our key vanished while waiting")

    @property
    def lease_lost(self) -> bool:
        """True once the lease this lock renews is known to be gone: the lock is lost even if
        ``token`` is still set. (A caller-supplied lease is watched by its caller.)"""
        return self._lease.lost

    async def is_held(self) -> bool:
        """Whether our key still exists at our token (a linearizable read). A True answer can
        be stale a moment later: protected resources must check the token themselves."""
        if not self.token:
            return False
        kv = await self.client.get(self.key)
        return kv is not None and kv.create_revision == self.token

    async def release(self) -> None:
        """Give the lock up (delete the key if it is still ours) and end our lease."""
        await self._abandon()

    async def _abandon(self) -> None:
        key, token = self.key, self.token
        self.token = 0
        with contextlib.suppress(QuorumError):
            if key and token:
                await self.client.txn([create_revision(key) == token], [delete(key)])
            elif key:
                await self.client.delete(key)
        await self._lease.release()

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
