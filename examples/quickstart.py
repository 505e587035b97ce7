"""A tour of the client against an in-process server: KV, txn, watch, lease, lock, election.

Run: ``.venv/bin/python examples/quickstart.py``
(Against a running cluster, skip the server part and pass its client endpoints.)
"""

from __future__ import annotations

import asyncio

from quorum.api.local import LocalBackend
from quorum.api.native.server import serve_native
from quorum.client import AsyncClient
from quorum.client import txn as t
from quorum.client.recipes import Election, Lock


async def main() -> None:
    backend = LocalBackend()
    server = await serve_native(backend, "127.0.0.1", 0)
    async with AsyncClient([server.endpoint]) as c:
        put = await c.put(b"greeting", b"hello")
        print("put at revision", put.revision, "->", await c.get(b"greeting"))

        resp = await c.txn(
            [t.value(b"greeting") == b"hello"],
            [t.put(b"greeting", b"hello again")],
            [t.get(b"greeting")],
        )
        print("compare-and-swap succeeded:", resp.succeeded)

        watcher = c.watch(b"jobs/", prefix=True)
        await watcher.start()
        for i in range(3):
            await c.put(b"jobs/%d" % i, b"queued")
        seen = 0
        async for event in watcher.events():
            print("watch:", event.type.name, event.kv.key, event.kv.value)
            seen += 1
            if seen == 3:
                break
        await watcher.cancel()

        lease = await c.lease_grant(10)
        await c.put(b"ephemeral", b"gone with the lease", lease=lease.id)
        await c.lease_revoke(lease.id)
        print("after revoke:", await c.get(b"ephemeral"))

        async with Lock(c, "report") as token:
            print("holding the lock; fencing token", token)

        election = Election(c, "scheduler")
        await election.campaign(b"node-a")
        print("leader:", (await election.leader()).value)  # type: ignore[union-attr]
        await election.resign()
    await server.close()
    await backend.close()


if __name__ == "__main__":
    asyncio.run(main())
