"""Service registry: ephemeral registrations plus a live view of the members.

An instance registers ``<root><service>/<instance id>`` = its address under a lease it keeps
alive; if it dies the lease expires and the registration disappears by itself. Watchers keep
a local view of a service's members current through a watch of the service prefix.
"""

from __future__ import annotations

import asyncio
import contextlib

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import OwnedLease, PrefixMirror, as_bytes
from quorum.errors import QuorumError
from quorum.state.commands import prefix_end

REGISTRY_ROOT = b"/quorum/services/"


class Registration:
    """A live registration; ``deregister()`` removes it at once (else the lease's expiry
    does, ``ttl_s`` after the process stops renewing).

    With ``heal=True`` a background task watches the lease: if it is lost while the process
    lives (a partition or pause longer than the TTL), the instance registers again under a
    new lease (``renewals`` counts these), until ``deregister()``.
    """

    def __init__(
        self, client: AsyncClient, key: bytes, address: bytes, ttl_s: int, heal: bool
    ) -> None:
        self.client = client
        self.key = key
        self.address = address
        self.ttl_s = ttl_s
        self.renewals = 0
        self._lease = OwnedLease(client, ttl_s)
        self._healer: asyncio.Task[None] | None = None
        self._heal = heal

    @property
    def lease_id(self) -> int:
        return self._lease.id

    async def register(self) -> Registration:
        lease_id = await self._lease.ensure()
        await self.client.put(self.key, self.address, lease=lease_id)
        if self._heal and self._healer is None:
            self._healer = asyncio.ensure_future(self._keep_registered())
        return self

    async def _keep_registered(self) -> None:
        while True:
            await self._lease.wait_lost()
            await self._register_again()
            self.renewals += 1

    async def _register_again(self) -> None:
        """Under a new lease; retried until the cluster answers."""
        while True:
            await self._lease.release()  # the old lease is gone (or never came): forget it
            self._lease = OwnedLease(self.client, self.ttl_s)
            try:
                lease_id = await self._lease.ensure()
                await self.client.put(self.key, self.address, lease=lease_id)
                return
            except QuorumError:
                await asyncio.sleep(min(1.0, self.ttl_s / 3))

    async def deregister(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._healer
            self._healer = None
        with contextlib.suppress(QuorumError):
            await self.client.delete(self.key)
        await self._lease.release()


class ServiceView(PrefixMirror):
    """The members of one service: ``members`` maps instance id -> address."""

    @property
    def members(self) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.items.items()}


class ServiceRegistry:
    def __init__(self, client: AsyncClient, root: bytes = REGISTRY_ROOT) -> None:
        self.client = client
        self.root = root

    def _prefix(self, service: str | bytes) -> bytes:
        return self.root + as_bytes(service) + b"/"

    async def register(
        self, service: str | bytes, instance_id: str | bytes, address: bytes, *,
        ttl_s: int = 10, heal: bool = False,
    ) -> Registration:
        """Register (or re-register) an instance under a fresh lease kept alive here;
        ``heal``: register again whenever that lease is lost (see :class:`Registration`)."""
        key = self._prefix(service) + as_bytes(instance_id)
        return await Registration(self.client, key, address, ttl_s, heal).register()

    async def instances(self, service: str | bytes) -> dict[str, bytes]:
        """The registered instances now (one linearizable read)."""
        prefix = self._prefix(service)
        resp = await self.client.range(prefix, prefix_end(prefix))
        return {kv.key[len(prefix) :].decode(): kv.value for kv in resp.kvs}

    async def watch(self, service: str | bytes) -> ServiceView:
        """A started view of the service's members, kept current until ``await view.stop()``."""
        view = ServiceView(self.client, self._prefix(service))
        await view.start()
        return view
