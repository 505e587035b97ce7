"""A lease shared by several recipes of one process (etcd's concurrency.Session).

    async with LeaseSession(client, ttl_s=10) as session:
        lock = Lock(client, "jobs", lease_id=session.lease_id)
        election = Election(client, "leader", lease_id=session.lease_id)

Everything attached to the session's lease ends together when the process stops renewing
(crash, pause past the TTL) or when the session closes (the lease is revoked).
"""

from __future__ import annotations

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import OwnedLease
from quorum.errors import UsageError


class LeaseSession:
    """One lease, granted on ``open()`` and renewed in the background until ``close()``."""

    def __init__(self, client: AsyncClient, ttl_s: int = 10) -> None:
        self._lease = OwnedLease(client, ttl_s)

    @property
    def lease_id(self) -> int:
        if not self._lease.id:
            raise UsageError("the session is not open")
        return self._lease.id

    @property
    def lost(self) -> bool:
        """True once the renewal found the lease gone: every recipe on it has lost its hold."""
        return self._lease.lost

    async def open(self) -> LeaseSession:
        await self._lease.ensure()
        return self

    async def close(self) -> None:
        """Stop renewing and revoke the lease (its keys are deleted at once)."""
        await self._lease.release()

    async def __aenter__(self) -> LeaseSession:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
