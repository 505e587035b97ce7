"""Every client call against serve_native(LocalBackend) on loopback."""

from __future__ import annotations

import asyncio

import pytest

from quorum.client import txn as t
from quorum.errors import (
    FrameTooLarge,
    FutureRevision,
    KeyNotFound,
    LeaseNotFound,
    NotSupported,
    RequestTooLarge,
    RevisionCompacted,
)
from quorum.state.commands import (
    DeleteRangeResponse,
    PutResponse,
    RangeResponse,
    SortOrder,
    SortTarget,
)

from .helpers import run, serving


def test_put_get_delete() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            r1 = await c.put(b"a", b"1")
            r2 = await c.put(b"a", b"2", prev_kv=True)
            assert r2.revision == r1.revision + 1
            assert r2.prev_kv is not None and r2.prev_kv.value == b"1"
            kv = await c.get(b"a")
            assert kv is not None and (kv.value, kv.version) == (b"2", 2)
            assert kv.create_revision == r1.revision and kv.mod_revision == r2.revision
            old = await c.get(b"a", revision=r1.revision)
            assert old is not None and old.value == b"1"
            assert await c.get(b"missing") is None
            d = await c.delete(b"a", prev_kv=True)
            assert d.deleted == 1 and d.prev_kvs[0].value == b"2"
            assert await c.get(b"a") is None

    run(body())


def test_range_options() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            for i, name in enumerate([b"p/c", b"p/a", b"p/b", b"q"]):
                await c.put(name, b"v%d" % i)
            everything = await c.range(b"p/", prefix=True)
            assert [kv.key for kv in everything.kvs] == [b"p/a", b"p/b", b"p/c"]
            limited = await c.range(b"p/", prefix=True, limit=2)
            assert len(limited.kvs) == 2 and limited.more and limited.count == 3
            by_create = await c.range(
                b"p/", prefix=True, sort_order=SortOrder.DESCEND, sort_target=SortTarget.CREATE
            )
            assert [kv.key for kv in by_create.kvs] == [b"p/b", b"p/a", b"p/c"]
            keys = await c.range(b"p/", prefix=True, keys_only=True)
            assert all(kv.value == b"" for kv in keys.kvs) and len(keys.kvs) == 3
            counted = await c.range(b"p/", prefix=True, count_only=True)
            assert counted.count == 3 and not counted.kvs
            stale_ok = await c.range(b"q", serializable=True)
            assert stale_ok.kvs[0].value == b"v3"
            span = await c.range(b"p/b", b"q")
            assert [kv.key for kv in span.kvs] == [b"p/b", b"p/c"]
            gp = await c.get_prefix(b"p/")
            assert gp.count == 3
            gone = await c.delete(b"p/", prefix=True)
            assert gone.deleted == 3

    run(body())


def test_txn_compare_then_else() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            created = await c.txn([t.version(b"k") == 0], [t.put(b"k", b"first")], [t.get(b"k")])
            assert created.succeeded and isinstance(created.responses[0], PutResponse)
            again = await c.txn([t.version(b"k") == 0], [t.put(b"k", b"second")], [t.get(b"k")])
            assert not again.succeeded
            got = again.responses[0]
            assert isinstance(got, RangeResponse) and got.kvs[0].value == b"first"
            cas = await c.txn(
                [t.value(b"k") == b"first", t.mod_revision(b"k") < 100],
                [t.put(b"k", b"third"), t.delete(b"other"), t.txn([], [t.get(b"k")])],
            )
            assert cas.succeeded and isinstance(cas.responses[1], DeleteRangeResponse)
            # a read-only txn is served as a read: no new revision
            ro = await c.txn([t.create_revision(b"k") != 0], [t.get(b"k")])
            assert ro.succeeded and ro.revision == cas.revision
            with pytest.raises(TypeError):
                t.value(b"k") == 3  # noqa: B015  (VALUE compares take bytes)

    run(body())


def test_fluent_txn_builder() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            await c.put(b"n", b"1")
            ok = await c.transaction().compare(t.value(b"n") == b"1").then(
                t.put(b"n", b"2")
            ).else_(t.get(b"n")).commit()
            assert ok.succeeded
            miss = await c.transaction().compare(t.value(b"n") == b"1").then(
                t.put(b"n", b"3")
            ).else_(t.get(b"n")).commit()
            assert not miss.succeeded
            got = miss.responses[0]
            assert isinstance(got, RangeResponse) and got.kvs[0].value == b"2"

    run(body())


def test_compact_and_revision_errors() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            revs = [(await c.put(b"k", b"%d" % i)).revision for i in range(5)]
            await c.compact(revs[3])
            with pytest.raises(RevisionCompacted) as info:
                await c.get(b"k", revision=revs[1])
            assert info.value.compact_revision == revs[3]
            with pytest.raises(FutureRevision):
                await c.get(b"k", revision=revs[-1] + 100)
            kv = await c.get(b"k", revision=revs[3])
            assert kv is not None and kv.value == b"3"

    run(body())


def test_ignore_value_on_missing_key_is_a_typed_error() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            with pytest.raises(KeyNotFound):
                await c.put(b"nope", b"", ignore_value=True)
            # the client stays usable after a typed error
            await c.put(b"yes", b"1")
            assert (await c.get(b"yes")) is not None

    run(body())


def test_leases() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            grant = await c.lease_grant(30)
            assert grant.ttl == 30 and grant.id > 0
            await c.put(b"eph", b"x", lease=grant.id)
            ttl = await c.lease_time_to_live(grant.id, keys=True)
            assert ttl.granted_ttl_s == 30 and ttl.keys == (b"eph",) and 0 < ttl.ttl_s <= 30
            assert await c.lease_keepalive_once(grant.id) == 30
            assert grant.id in await c.lease_list()
            await c.lease_revoke(grant.id)
            assert await c.get(b"eph") is None
            assert (await c.lease_time_to_live(grant.id)).ttl_s == -1
            with pytest.raises(LeaseNotFound):
                await c.lease_keepalive_once(grant.id)
            assert grant.id not in await c.lease_list()

    run(body())


def test_lease_expiry_through_backend_clock() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            short = await c.lease_grant(5)
            long = await c.lease_grant(60)
            await c.put(b"s", b"", lease=short.id)
            await c.put(b"l", b"", lease=long.id)
            assert await env.expire(6) == (short.id,)
            assert await c.get(b"s") is None and await c.get(b"l") is not None

    run(body())


def test_keepalive_helper_renews_and_reports_loss() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            grant = await c.lease_grant(1)  # renewed every ~0.33 s of real time
            keeper = c.keep_alive(grant.id, 1)
            env.clock.advance(0.8)
            seen = keeper.renewals
            while keeper.renewals < seen + 2:  # the 2nd certainly ran at the advanced time
                await asyncio.sleep(0.01)
            env.clock.advance(0.8)  # 1.6 s after the grant, but < 1 s after the renewal
            assert await env.backend.expire_leases() == ()
            await c.lease_revoke(grant.id)
            await asyncio.wait_for(keeper.lost.wait(), 5)
            assert isinstance(keeper.error, LeaseNotFound)
            await keeper.stop()

    run(body())


def test_cluster_and_maintenance_calls() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            put = await c.put(b"x", b"1")
            members = await c.member_list()
            assert len(members) == 1 and members[0].member_id == env.backend.member_id
            status = await c.status()
            assert status.leader_id == env.backend.member_id and status.revision == put.revision
            hkv = await c.hash_kv()
            assert hkv.revision == status.revision
            assert await c.hash() == await env.backend.hash()
            blob = await c.snapshot()
            assert blob
            with pytest.raises(NotSupported):
                await c.move_leader(42)
            for call in (
                c.member_add(["http://10.0.0.9:2380"]),
                c.member_remove(99),
                c.member_update(99, ["http://10.0.0.9:2380"]),
                c.member_promote(99),
            ):
                with pytest.raises(Exception) as info:
                    await call
                assert type(info.value).__module__ == "quorum.errors"

    run(body())


def test_oversized_request_fails_fast_and_keeps_the_connection() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client(timeout_s=5)
            await c.put(b"small", b"1")
            with pytest.raises(RequestTooLarge):
                await c.put(b"huge", b"x" * (5 * 1024 * 1024))  # above the 4 MiB frame limit
            with pytest.raises(RequestTooLarge):
                await c.put(b"big", b"x" * (2 * 1024 * 1024))  # above the state's 1.5 MiB
            assert c.failovers == 0 and (await c.get(b"small")) is not None

    run(body())


def test_oversized_answer_is_a_typed_error_not_a_dropped_connection() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client(timeout_s=5)
            for i in range(3):
                await c.put(b"big/%d" % i, b"x" * (1400 * 1024))  # 4.1 MiB in all
            with pytest.raises(FrameTooLarge):
                await c.range(b"big/", prefix=True)
            page = await c.range(b"big/", prefix=True, limit=2)
            assert len(page.kvs) == 2 and page.more and c.failovers == 0

    run(body())


def test_snapshot_streams_in_chunks_beyond_the_frame_limit() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            for i in range(4):
                await c.put(b"snap/%d" % i, bytes([i]) * (1400 * 1024))  # ~5.5 MiB of state
            chunks = [chunk async for chunk in c.snapshot_stream(chunk_bytes=512 * 1024)]
            assert len(chunks) > 10 and all(len(x) <= 512 * 1024 for x in chunks)
            expected = b"".join([piece async for piece in env.backend.snapshot()])
            assert b"".join(chunks) == expected and len(expected) > 4 * 1024 * 1024
            assert await c.snapshot() == expected  # the whole thing in one call

    run(body())
