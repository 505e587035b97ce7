"""A second, independent etcd v3 client (aetcd, from PyPI) against quorum's etcd API.

aetcd ships its own generated etcd stubs, so it exercises quorum's .proto files against
independently generated code (field numbers, oneofs, enums, streams).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from .servers import EtcdServer

aetcd = pytest.importorskip("aetcd", reason="aetcd is a test extra: pip install -e '.[test]'")

WAIT_S = 10.0


def run(server: EtcdServer, body: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aetcd.Client(host="127.0.0.1", port=server.port, timeout=10) as client:
            await asyncio.wait_for(body(client), 30)

    asyncio.run(main())


def test_kv_put_get_range_delete(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        await c.put(b"a/1", b"one")
        await c.put(b"a/2", b"two")
        await c.put(b"b/1", b"other")
        got = await c.get(b"a/1")
        assert got.value == b"one" and got.version == 1 and got.create_revision > 0
        assert await c.get(b"a/none") is None
        prefix = await c.get_prefix(b"a/")
        assert [kv.key for kv in prefix] == [b"a/1", b"a/2"]
        rng = await c.get_range(b"a/1", b"b/2")
        assert [kv.value for kv in rng] == [b"one", b"two", b"other"]
        deleted = await c.delete(b"a/1", prev_kv=True)
        assert deleted.deleted == 1 and deleted.prev_kv.value == b"one"
        assert (await c.delete_prefix(b"a/")).deleted == 1
        assert await c.get(b"a/2") is None

    run(etcd_server, body)


def test_txn_compare_and_swap(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        t = c.transactions
        await c.put(b"cas/k", b"v1")
        ok, responses = await c.transaction(
            compare=[t.value(b"cas/k") == b"v1", t.version(b"cas/k") > 0],
            success=[t.put(b"cas/k", b"v2"), t.get(b"cas/k")],
            failure=[t.put(b"cas/k", b"lost")],
        )
        assert ok is True
        assert responses[1][0][0] == b"v2"  # the read after the put sees the put (one revision)
        ok, _ = await c.transaction(
            compare=[t.value(b"cas/k") == b"v1"],
            success=[t.put(b"cas/k", b"never")],
            failure=[],
        )
        assert ok is False
        assert (await c.get(b"cas/k")).value == b"v2"
        assert await c.replace(b"cas/k", b"v2", b"v3") is True
        assert await c.replace(b"cas/k", b"v2", b"v4") is False

    run(etcd_server, body)


def test_watch_events_in_order_with_prev_kv(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        watch = await c.watch_prefix(b"wa/", prev_kv=True)
        await c.put(b"wa/x", b"1")
        await c.put(b"wa/x", b"2")
        await c.delete(b"wa/x")
        seen = []
        async for ev in watch:
            # aetcd wraps even an absent prev_kv (empty submessage), so compare values only
            seen.append((ev.kind, ev.kv.key, ev.kv.value, ev.prev_kv.value if ev.prev_kv else b""))
            if len(seen) == 3:
                break
        await watch.cancel()
        assert seen == [
            ("PUT", b"wa/x", b"1", b""),
            ("PUT", b"wa/x", b"2", b"1"),
            ("DELETE", b"wa/x", b"", b"2"),
        ]

    run(etcd_server, body)


def test_watch_from_past_revision_and_once(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        await c.put(b"wp/k", b"first")
        rev = (await c.get(b"wp/k")).mod_revision
        await c.put(b"wp/k", b"second")
        watch = await c.watch(b"wp/k", start_revision=rev)
        values = []
        async for ev in watch:
            values.append(ev.kv.value)
            if len(values) == 2:
                break
        await watch.cancel()
        assert values == [b"first", b"second"]
        waiter = asyncio.create_task(c.watch_once(b"wp/once", timeout=WAIT_S))
        await asyncio.sleep(0.3)
        await c.put(b"wp/once", b"now")
        ev = await waiter
        assert ev.kv.value == b"now"

    run(etcd_server, body)


def test_lease_grant_info_refresh_revoke(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        lease = await c.lease(100)
        assert lease.ttl == 100 and lease.id > 0
        await c.put(b"ls/k", b"v", lease=lease)
        assert await lease.keys() == [b"ls/k"]
        assert await lease.granted_ttl() == 100
        assert 0 < await lease.remaining_ttl() <= 100
        reply = await lease.refresh()
        assert lease.id == reply.ID and reply.TTL == 100
        await lease.revoke()
        assert await c.get(b"ls/k") is None
        info = await c.get_lease_info(lease.id)
        assert info.TTL == -1

    run(etcd_server, body)


def test_lease_expiry_and_unknown_lease(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        lease = await c.lease(1)
        await c.put(b"lx/k", b"v", lease=lease)
        deadline = time.monotonic() + WAIT_S
        while await c.get(b"lx/k") is not None:
            assert time.monotonic() < deadline, "lease did not expire"
            await asyncio.sleep(0.1)
        reply = await c.refresh_lease(lease.id)
        assert reply.TTL == 0  # an expired lease answers keepalive with TTL 0, as etcd does
        with pytest.raises(aetcd.exceptions.ClientError) as err:
            await c.put(b"lx/k", b"v", lease=0x7FFF_FFFF)
        assert "etcdserver: requested lease not found" in str(err.value.__cause__ or err.value)

    run(etcd_server, body)


def test_lock_mutual_exclusion(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        first = c.lock(b"lock/a", ttl=10)
        second = c.lock(b"lock/a", ttl=10)
        assert await first.acquire(timeout=5)
        assert await first.is_acquired()
        assert not await second.acquire(timeout=1)  # held by first
        await first.release()
        assert await second.acquire(timeout=5)
        await second.release()

    run(etcd_server, body)


def test_members_status_hash_alarms(etcd_server: EtcdServer) -> None:
    async def body(c: Any) -> None:
        await c.put(b"status/k", b"v")  # a write, so the raft index is past 0 however run
        members = [m async for m in c.members()]
        assert [m.id for m in members] == [1]
        assert members[0].client_urls == [f"http://{etcd_server.endpoint}"]
        status = await c.status()
        assert status.leader.id == 1 and status.version == "3.4.0"
        assert status.raft_term == 1 and status.raft_index >= 1
        assert isinstance(await c.hash(), int)
        assert [a async for a in c.list_alarms()] == []
        await c.defragment()

    run(etcd_server, body)


def test_compact_then_old_revision_is_gone(tmp_path: Any) -> None:
    from .servers import start_server, stop_server

    server = start_server(tmp_path)  # compaction is global: a server of its own
    try:
        async def body(c: Any) -> None:
            for i in range(4):
                await c.put(b"cp/k", str(i).encode())
            rev = (await c.get(b"cp/k")).mod_revision
            await c.compact(rev)
            with pytest.raises(aetcd.exceptions.RevisionCompactedError) as err:
                watch = await c.watch(b"cp/k", start_revision=rev - 1)
                async for _ in watch:
                    pass
            assert err.value.compacted_revision == rev

        run(server, body)
    finally:
        stop_server(server)
