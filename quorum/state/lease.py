"""The replicated lease table: granted TTLs, checkpointed remaining TTLs, attached keys.

The state machine never reads a clock. Expiry is decided by the leader's runtime (with
:class:`quorum.state.lease_tracker.LeaseTracker`) and arrives as a committed command.
"""

from __future__ import annotations

import zlib

import msgspec


class Lease:
    """One granted lease. ``remaining_ttl`` is the last checkpointed remaining TTL (0 = none);
    a new leader restarts the lease from it instead of the full TTL (long leases)."""

    __slots__ = ("id", "keys", "remaining_ttl", "ttl")

    def __init__(self, lease_id: int, ttl: int, remaining_ttl: int = 0) -> None:
        self.id = lease_id
        self.ttl = ttl
        self.remaining_ttl = remaining_ttl
        self.keys: set[bytes] = set()


class LeaseInfo(msgspec.Struct, frozen=True):
    """What the state knows of a lease; the runtime adds the remaining TTL its tracker knows."""

    id: int
    granted_ttl: int
    remaining_ttl: int  # checkpointed remaining TTL, 0 if never checkpointed
    keys: tuple[bytes, ...] = ()


class LeaseTable:
    """Live leases by id. Ids picked by the store count up from 1, skipping ids in use."""

    __slots__ = ("leases", "next_id")

    def __init__(self) -> None:
        self.leases: dict[int, Lease] = {}
        self.next_id = 1

    def pick_id(self) -> int:
        while self.next_id in self.leases:
            self.next_id += 1
        picked = self.next_id
        self.next_id += 1
        return picked

    def grant(self, lease_id: int, ttl: int) -> Lease:
        lease = Lease(lease_id, ttl)
        self.leases[lease_id] = lease
        return lease

    def attach(self, lease_id: int, key: bytes) -> None:
        if lease_id:
            self.leases[lease_id].keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self.leases.get(lease_id) if lease_id else None
        if lease is not None:
            lease.keys.discard(key)

    def info(self, lease_id: int, with_keys: bool) -> LeaseInfo | None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return None
        keys = tuple(sorted(lease.keys)) if with_keys else ()
        return LeaseInfo(lease.id, lease.ttl, lease.remaining_ttl, keys)

    def ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.leases))

    def digest(self) -> int:
        """Order-independent digest of ids, TTLs, checkpoints and attached keys."""
        crc = zlib.crc32(b"%d" % self.next_id)
        for lease_id in sorted(self.leases):
            lease = self.leases[lease_id]
            crc = zlib.crc32(b"%d:%d:%d" % (lease.id, lease.ttl, lease.remaining_ttl), crc)
            for key in sorted(lease.keys):
                crc = zlib.crc32(key, crc)
        return crc
