"""Service registry: ephemeral registrations plus a live view of the members.

An instance registers ``<root><service>/<instance id>`` = its address under a lease it keeps
alive; if it dies the lease expires and the registration disappears by itself. Watchers keep
a local view of a service's members current through a watch of the service prefix.
"""

from __future__ import annotations

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import OwnedLease, PrefixMirror, as_bytes
from quorum.state.commands import prefix_end

REGISTRY_ROOT = b"/quorum/services/"


class Registration:
    """A live registration; ``deregister()`` removes it at once (else the lease's expiry
    does, ``ttl_s`` after the process stops renewing)."""

    def __init__(self, client: AsyncClient, key: bytes, lease: OwnedLease) -> None:
        self.client = client
        self.key = key
        self._lease = lease

    @property
    def lease_id(self) -> int:
        return self._lease.id

    async def deregister(self) -> None:
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
        self, service: str | bytes, instance_id: str | bytes, address: bytes, *, ttl_s: int = 10
    ) -> Registration:
        """Register (or re-register) an instance under a fresh lease kept alive here."""
        lease = OwnedLease(self.client, ttl_s)
        lease_id = await lease.ensure()
        key = self._prefix(service) + as_bytes(instance_id)
        await self.client.put(key, address, lease=lease_id)
        return Registration(self.client, key, lease)

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
