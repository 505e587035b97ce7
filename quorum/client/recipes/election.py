"""Leader election: campaign, proclaim, leader, observe, resign.

Candidates queue exactly like lock contenders (``<prefix><lease id>`` keys ordered by create
revision); the leader is the candidate whose key has the lowest create revision, and its key's
value is the leader's proclamation. Leadership ends when the leader resigns or its lease
expires, so a leader paused past its TTL must not act on leadership without a check: use
``leadership_token`` (the key's create revision) as a fencing token, like a lock's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from quorum.client.aio import AsyncClient
from quorum.client.recipes._common import (
    OwnedLease,
    as_bytes,
    create_once,
    first_by_create,
    wait_predecessors,
)
from quorum.client.txn import create_revision, delete, put
from quorum.errors import LockLost, QuorumError, UsageError
from quorum.state.commands import KeyValue, prefix_end

ELECTION_ROOT = b"/quorum/elections/"


class Election:
    """One participant of the election ``name`` (observers need not campaign)."""

    def __init__(
        self, client: AsyncClient, name: bytes | str, *, ttl_s: int = 10, lease_id: int = 0
    ) -> None:
        self.client = client
        self.prefix = ELECTION_ROOT + as_bytes(name) + b"/"
        self._lease = OwnedLease(client, ttl_s, lease_id)
        self.key = b""
        self.leadership_token = 0  # create revision of our key while we lead

    async def campaign(self, value: bytes) -> int:
        """Wait until elected; return the leadership token. The value is published at once
        (followers see it only once we lead). Raises LockLost if our lease ended meanwhile."""
        if self.leadership_token:
            raise UsageError("already the leader")
        lease_id = await self._lease.ensure()
        self.key = self.prefix + b"%016x" % lease_id
        try:
            mine = await create_once(self.client, self.key, value, lease_id)
            if mine.value != value:  # re-campaign under the same lease: update the value
                await self._proclaim_at(mine.create_revision, value)
            await wait_predecessors(
                self.client, self.key, mine.create_revision, self.prefix, self.prefix,
                prefix_end(self.prefix),
            )
            kv = await self.client.get(self.key)
            if kv is None or kv.create_revision != mine.create_revision:
                raise LockLost(f"election {self.prefix!r}: our key vanished while waiting")
        except BaseException:
            await self.resign()
            raise
        self.leadership_token = mine.create_revision
        return self.leadership_token

    async def proclaim(self, value: bytes) -> None:
        """Publish a new value as the current leader. Raises LockLost if we no longer lead."""
        if not self.leadership_token:
            raise UsageError("not the leader")
        await self._proclaim_at(self.leadership_token, value)

    async def _proclaim_at(self, create_rev: int, value: bytes) -> None:
        resp = await self.client.txn(
            [create_revision(self.key) == create_rev],
            [put(self.key, value, lease=self._lease.id)],
        )
        if not resp.succeeded:
            self.leadership_token = 0
            raise LockLost(f"election {self.prefix!r}: leadership lost")

    async def resign(self) -> None:
        """Stop leading (or campaigning); the next candidate takes over."""
        key, token = self.key, self.leadership_token
        self.leadership_token = 0
        with contextlib.suppress(QuorumError):
            if key and token:
                await self.client.txn([create_revision(key) == token], [delete(key)])
            elif key:
                await self.client.delete(key)
        await self._lease.release()

    async def leader(self) -> KeyValue | None:
        """The current leader's key and value, or None if nobody leads."""
        return (await first_by_create(self.client, self.prefix))[0]

    async def observe(self) -> AsyncIterator[KeyValue | None]:
        """Yield the leader now and after every change of leader or of its value (None while
        nobody leads). Runs until the caller stops iterating."""
        current, revision = await first_by_create(self.client, self.prefix)
        yield current
        watcher = self.client.watch(
            self.prefix, prefix_end(self.prefix), start_revision=revision + 1
        )
        try:
            async for _batch in watcher:
                latest, _ = await first_by_create(self.client, self.prefix)
                if _identity(latest) != _identity(current):
                    current = latest
                    yield current
        finally:
            await watcher.cancel()


def _identity(kv: KeyValue | None) -> tuple[bytes, int] | None:
    return None if kv is None else (kv.key, kv.mod_revision)
