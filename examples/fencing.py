"""Fencing tokens: why a lock alone cannot protect a resource, and how the token does.

Run: ``.venv/bin/python examples/fencing.py``

1. Client A takes the lock (token tA) and then "pauses" (think GC pause or SIGSTOP): it stops
   renewing its lease. The lease expires; the lock service deletes A's lock key.
2. Client B takes the lock (token tB > tA) and writes to the storage service with tB.
3. A wakes up, still believing it holds the lock, and writes with tA. The storage service has
   already seen tB > tA, so it rejects A's write. Without the token check, A's stale write
   would silently overwrite B's (a lost update).

The storage service here is a plain object in the same process; in a real system it is a
separate service that stores the highest token it has accepted with its data.
"""

from __future__ import annotations

import asyncio

from quorum.api.local import LocalBackend
from quorum.api.native.server import serve_native
from quorum.client import AsyncClient
from quorum.client.recipes import Lock


class StaleToken(Exception):
    """A write carried a fencing token older than one already accepted."""


class FencedStorage:
    """A protected resource: it accepts a write only with a token >= the highest seen."""

    def __init__(self) -> None:
        self.highest_token = 0
        self.data: list[tuple[int, str]] = []

    def write(self, token: int, value: str) -> None:
        if token < self.highest_token:
            raise StaleToken(f"token {token} < {self.highest_token}: the writer lost the lock")
        self.highest_token = token
        self.data.append((token, value))


async def main() -> FencedStorage:
    backend = LocalBackend(lease_check_interval_s=0.1)
    await backend.start()
    server = await serve_native(backend, "127.0.0.1", 0)
    a = AsyncClient([server.endpoint])
    b = AsyncClient([server.endpoint])
    storage = FencedStorage()
    try:
        lease_a = (await a.lease_grant(1)).id  # A manages its own 1 s lease
        keeper_a = a.keep_alive(lease_a, 1)
        lock_a = Lock(a, "orders", lease_id=lease_a)
        token_a = await lock_a.acquire()
        print(f"A holds the lock with token {token_a}")
        storage.write(token_a, "A: first write")

        await keeper_a.stop()  # A pauses: no more renewals
        print("A pauses (stops renewing its lease)...")
        lock_b = Lock(b, "orders", ttl_s=10)
        token_b = await lock_b.acquire()  # returns once A's lease has expired
        print(f"B holds the lock with token {token_b}")
        storage.write(token_b, "B: write")

        print("A wakes up and writes with its old token...")
        try:
            storage.write(token_a, "A: stale write")
            print("A's stale write was ACCEPTED (this must not happen)")
        except StaleToken as exc:
            print(f"A's write was rejected: {exc}")
        print(f"A still thinks it holds the lock; the service says: {await lock_a.is_held()}")
        await lock_b.release()
        print("storage contents:", storage.data)
        return storage
    finally:
        await a.close()
        await b.close()
        await server.close()
        await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
