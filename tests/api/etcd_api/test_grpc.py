"""quorum's etcd gRPC surface in-process, through its own stubs: error codes and texts for bad
input, watch streams (several watchers, ids, cancel, progress, fragments, compaction), leases,
Lock and Election services, maintenance. Each test runs a fresh LocalBackend and server, once
on each gRPC engine (quorum's own h2 server, the default, and grpcio's grpc.aio)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from quorum.api.backend import Watch, WatchCreate
from quorum.api.etcd import snapshot_file
from quorum.api.etcd.concurrency import Contention
from quorum.api.etcd.config import EtcdApiConfig
from quorum.api.etcd.gen import etcd_election_pb2 as epb
from quorum.api.etcd.gen import etcd_election_pb2_grpc as erpc
from quorum.api.etcd.gen import etcd_lock_pb2 as lpb
from quorum.api.etcd.gen import etcd_lock_pb2_grpc as lrpc
from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.etcd.server import serve_etcd
from quorum.api.local import LocalBackend
from quorum.state import LeaseRevokeRequest, PutRequest, RangeRequest, StateConfig, StateMachine

STEP_S = 10.0  # generous bound on any single awaited step (never a timing assertion)
ENGINE = ["h2"]  # set per test by the fixture below


@pytest.fixture(autouse=True, params=["h2", "grpcio"])
def engine(request: pytest.FixtureRequest) -> str:
    ENGINE[0] = request.param
    return str(request.param)


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    port: int
    backend: LocalBackend
    clock: ManualClock
    channel: grpc.aio.Channel
    kv: rpc.KVStub
    watch: rpc.WatchStub
    lease: rpc.LeaseStub
    cluster: rpc.ClusterStub
    maint: rpc.MaintenanceStub
    auth: rpc.AuthStub
    lock: lrpc.LockStub
    election: erpc.ElectionStub


@contextlib.asynccontextmanager
async def env(
    config: EtcdApiConfig | None = None, backend_cls: type[LocalBackend] = LocalBackend
) -> AsyncIterator[Env]:
    clock = ManualClock()
    backend = backend_cls(clock=clock)  # no background tasks: tests drive lease expiry
    server, port = await serve_etcd(backend, "127.0.0.1", 0, config, engine=ENGINE[0])
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 << 20)]
    )
    try:
        yield Env(
            port, backend, clock, channel, rpc.KVStub(channel), rpc.WatchStub(channel),
            rpc.LeaseStub(channel), rpc.ClusterStub(channel), rpc.MaintenanceStub(channel),
            rpc.AuthStub(channel), lrpc.LockStub(channel), erpc.ElectionStub(channel),
        )
    finally:
        await channel.close()
        await server.stop(None)
        await backend.close()


def run(
    body: Callable[[Env], Awaitable[None]], config: EtcdApiConfig | None = None,
    backend_cls: type[LocalBackend] = LocalBackend,
) -> None:
    async def main() -> None:
        async with env(config, backend_cls) as e:
            await asyncio.wait_for(body(e), 60)

    asyncio.run(main())


async def put(e: Env, key: bytes, value: bytes = b"v", lease: int = 0) -> pb.PutResponse:
    return await e.kv.Put(pb.PutRequest(key=key, value=value, lease=lease))


async def grant(e: Env, ttl: int) -> int:
    return int((await e.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=ttl))).ID)


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode, text: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == code, err.value
    assert text in (err.value.details() or ""), err.value.details()


async def still_serving(e: Env) -> None:
    await put(e, b"alive", b"yes")
    got = await e.kv.Range(pb.RangeRequest(key=b"alive"))
    assert got.kvs[0].value == b"yes"


# --- KV and headers -------------------------------------------------------------------------


def test_headers_and_kv_roundtrip() -> None:
    async def body(e: Env) -> None:
        r1 = await put(e, b"k", b"1")
        assert (r1.header.cluster_id, r1.header.member_id) == (e.backend.cluster_id, 1)
        # an empty store is at revision 1, as etcd's: the first write gets 2
        assert r1.header.revision == 2 and r1.header.raft_term == 1
        r2 = await e.kv.Put(pb.PutRequest(key=b"k", value=b"2", prev_kv=True))
        assert r2.header.revision == 3 and r2.prev_kv.value == b"1"
        rng = await e.kv.Range(pb.RangeRequest(key=b"k", revision=2, serializable=True))
        # as in etcd, the header names the store's current revision, not the one read
        assert rng.kvs[0].value == b"1" and rng.header.revision == 3
        dr = await e.kv.DeleteRange(pb.DeleteRangeRequest(key=b"k", prev_kv=True))
        assert dr.deleted == 1 and dr.prev_kvs[0].value == b"2" and dr.header.revision == 4

    run(body)


def test_nested_txn_and_range_compare() -> None:
    async def body(e: Env) -> None:
        for k in (b"r/a", b"r/b"):
            await put(e, k, b"x")
        every_version_1 = pb.Compare(
            key=b"r/", range_end=b"r0", target=pb.Compare.VERSION, result=pb.Compare.EQUAL,
            version=1,
        )
        inner = pb.TxnRequest(
            compare=[pb.Compare(key=b"r/a", target=pb.Compare.VALUE, value=b"x")],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=b"r/c", value=b"nested"))],
        )
        res = await e.kv.Txn(
            pb.TxnRequest(
                compare=[every_version_1],
                success=[pb.RequestOp(request_txn=inner),
                         pb.RequestOp(request_range=pb.RangeRequest(key=b"r/c"))],
            )
        )
        assert res.succeeded
        assert res.responses[0].response_txn.succeeded
        assert res.responses[1].response_range.kvs[0].value == b"nested"
        counted = await e.kv.Range(
            pb.RangeRequest(key=b"r/", range_end=b"r0", count_only=True, limit=1)
        )
        assert counted.count == 3 and not counted.kvs  # count ignores the limit
        keys = await e.kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", keys_only=True,
                                                sort_order=pb.RangeRequest.DESCEND))
        assert [(kv.key, kv.value) for kv in keys.kvs] == [(b"r/c", b""), (b"r/b", b""), (b"r/a", b"")]
        newer = await e.kv.Range(pb.RangeRequest(key=b"r/", range_end=b"r0", min_mod_revision=4))
        assert [kv.key for kv in newer.kvs] == [b"r/c"]
        read_only = await e.kv.Txn(
            pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"r/a"))])
        )
        assert read_only.header.revision == res.header.revision  # a read bumps nothing

    run(body)


# --- bad input: right code and text, and the server keeps serving -----------------------------


def test_bad_kv_requests() -> None:
    async def body(e: Env) -> None:
        C = grpc.StatusCode
        await expect_error(put(e, b""), C.INVALID_ARGUMENT, "etcdserver: key is not provided")
        await expect_error(
            e.kv.Range(pb.RangeRequest(key=b"b", range_end=b"a")), C.INVALID_ARGUMENT,
            "range end sorts before the key",
        )
        await expect_error(
            e.kv.Range(pb.RangeRequest(key=b"a", revision=99)), C.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision",
        )
        too_many = pb.TxnRequest(
            success=[pb.RequestOp(request_put=pb.PutRequest(key=b"t%d" % i)) for i in range(129)]
        )
        await expect_error(
            e.kv.Txn(too_many), C.INVALID_ARGUMENT, "etcdserver: too many operations in txn request"
        )
        dup = pb.TxnRequest(
            success=[pb.RequestOp(request_put=pb.PutRequest(key=b"d")),
                     pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"d"))]
        )
        await expect_error(
            e.kv.Txn(dup), C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"
        )
        await expect_error(
            put(e, b"k", lease=12345), C.NOT_FOUND, "etcdserver: requested lease not found"
        )
        big = b"x" * (1536 * 1024 + 1)
        await expect_error(put(e, b"big", big), C.INVALID_ARGUMENT, "etcdserver: request is too large")
        huge = b"x" * (3 << 20)  # beyond the gRPC limit (request limit + 512 KiB), like etcd
        await expect_error(put(e, b"huge", huge), C.RESOURCE_EXHAUSTED, "")
        await expect_error(
            e.kv.Compact(pb.CompactionRequest(revision=1000)), C.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision is a future revision",
        )
        assert e.backend.state_machine.revision == 1  # nothing above changed the empty store
        await still_serving(e)

    run(body)


def test_bad_lease_requests() -> None:
    async def body(e: Env) -> None:
        C = grpc.StatusCode
        await expect_error(
            e.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=77)), C.NOT_FOUND,
            "etcdserver: requested lease not found",
        )
        await expect_error(e.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=0)), C.INVALID_ARGUMENT, "TTL")
        await expect_error(
            e.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=10**12)), C.OUT_OF_RANGE,
            "etcdserver: too large lease TTL",
        )
        lease = await grant(e, 10)
        await expect_error(
            e.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=5, ID=lease)), C.FAILED_PRECONDITION,
            "etcdserver: lease already exists",
        )
        await still_serving(e)

    run(body)


def test_auth_and_unsupported_membership_answer_unimplemented() -> None:
    async def body(e: Env) -> None:
        C = grpc.StatusCode
        await expect_error(e.auth.AuthEnable(pb.AuthEnableRequest()), C.UNIMPLEMENTED,
                           "authentication is not supported")
        await expect_error(e.auth.UserList(pb.AuthUserListRequest()), C.UNIMPLEMENTED,
                           "authentication is not supported")
        await expect_error(
            e.cluster.MemberAdd(pb.MemberAddRequest(peerURLs=["http://127.0.0.1:2390"])),
            C.UNIMPLEMENTED, "local backend",
        )
        await expect_error(e.maint.MoveLeader(pb.MoveLeaderRequest(targetID=9)), C.UNIMPLEMENTED, "")
        await still_serving(e)

    run(body)


# --- watch streams ----------------------------------------------------------------------------


class Stream:
    """A Watch RPC driven by the test: send() requests, next() responses."""

    def __init__(self, e: Env) -> None:
        self._requests: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        self._call = e.watch.Watch(self._iter())

    async def _iter(self) -> AsyncIterator[pb.WatchRequest]:
        while (req := await self._requests.get()) is not None:
            yield req

    async def create(self, key: bytes, **kw: Any) -> None:
        await self._requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, **kw)))

    async def cancel(self, watch_id: int) -> None:
        await self._requests.put(
            pb.WatchRequest(cancel_request=pb.WatchCancelRequest(watch_id=watch_id))
        )

    async def progress(self) -> None:
        await self._requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

    async def next(self) -> pb.WatchResponse:
        return await asyncio.wait_for(self._call.read(), STEP_S)

    def close(self) -> None:
        self._call.cancel()


def test_watch_stream_several_watchers_ids_cancel_progress() -> None:
    async def body(e: Env) -> None:
        s = Stream(e)
        await s.progress()  # nothing watched yet: a stream-wide progress mark
        first = await s.next()
        assert first.watch_id == -1 and not first.events and first.header.revision == 1
        await s.create(b"a")
        await s.create(b"b", watch_id=7)
        await s.create(b"c")
        created = [await s.next() for _ in range(3)]
        assert [(c.created, c.watch_id) for c in created] == [(True, 0), (True, 7), (True, 1)]
        await s.create(b"d", watch_id=7)
        dup = await s.next()
        assert dup.created and dup.canceled and dup.watch_id == -1
        assert "duplicate watch ID" in dup.cancel_reason
        await put(e, b"b", b"1")
        await put(e, b"a", b"2")
        ev_b, ev_a = await s.next(), await s.next()
        assert (ev_b.watch_id, ev_b.events[0].kv.value, ev_b.header.revision) == (7, b"1", 2)
        assert (ev_a.watch_id, ev_a.events[0].kv.value, ev_a.header.revision) == (0, b"2", 3)
        await s.cancel(0)
        canceled = await s.next()
        assert canceled.watch_id == 0 and canceled.canceled
        await put(e, b"a", b"ignored")  # watcher 0 is gone: nothing may arrive for it
        await s.progress()
        marks = {(await s.next()).watch_id for _ in range(2)}
        assert marks == {7, 1}  # one progress mark per remaining watcher
        s.close()

    run(body)


def test_watch_negative_and_compacted_start() -> None:
    async def body(e: Env) -> None:
        for i in range(4):  # revisions 2..5
            await put(e, b"k", b"%d" % i)
        await e.kv.Compact(pb.CompactionRequest(revision=4))
        # HashKV refuses the compact revision itself, as etcd 3.4; the one above answers
        await expect_error(e.maint.HashKV(pb.HashKVRequest(revision=4)),
                           grpc.StatusCode.OUT_OF_RANGE,
                           "etcdserver: mvcc: required revision has been compacted")
        above = await e.maint.HashKV(pb.HashKVRequest(revision=5))
        assert above.compact_revision == 4 and above.header.revision == 5
        s = Stream(e)
        await s.create(b"k", start_revision=-1)
        bad = await s.next()
        assert bad.created and bad.canceled and bad.watch_id == -1
        assert "negative" in bad.cancel_reason
        await s.create(b"z", range_end=b"a")
        backwards = await s.next()
        assert backwards.created and backwards.canceled and "range end" in backwards.cancel_reason
        await s.create(b"k", start_revision=2)
        created = await s.next()
        assert created.created and not created.canceled
        gone = await s.next()
        assert gone.canceled and gone.compact_revision == 4 and gone.watch_id == created.watch_id
        await s.create(b"k", start_revision=4, prev_kv=True)
        await s.next()
        replay = await s.next()
        assert [ev.kv.value for ev in replay.events] == [b"2"]
        # the version before revision 4 was compacted away: etcd then sends no prev_kv
        assert not replay.events[0].HasField("prev_kv")
        s.close()
        await still_serving(e)

    run(body)


def test_watch_fragments_large_revisions() -> None:
    config = EtcdApiConfig(watch_fragment_bytes=1000)

    async def body(e: Env) -> None:
        s = Stream(e)
        await s.create(b"f/", range_end=b"f0", fragment=True)
        await s.create(b"f/", range_end=b"f0")
        await s.next(), await s.next()
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"f/%02d" % i, value=b"x" * 300))
               for i in range(10)]
        await e.kv.Txn(pb.TxnRequest(success=ops))
        pieces: dict[int, list[pb.WatchResponse]] = {0: [], 1: []}
        while not pieces[1] or not pieces[0] or pieces[0][-1].fragment:
            r = await s.next()
            pieces[r.watch_id].append(r)
        fragmented, whole = pieces[0], pieces[1]
        assert len(whole) == 1 and not whole[0].fragment and len(whole[0].events) == 10
        assert len(fragmented) > 1
        assert [p.fragment for p in fragmented] == [True] * (len(fragmented) - 1) + [False]
        assert all(p.ByteSize() < 2000 for p in fragmented)
        joined = [ev for p in fragmented for ev in p.events]
        assert joined == list(whole[0].events)
        assert {p.header.revision for p in fragmented} == {2}
        s.close()

    run(body, config)


# --- leases -----------------------------------------------------------------------------------


def test_lease_keepalive_stream_ttl_and_expiry() -> None:
    async def body(e: Env) -> None:
        lease = await grant(e, 5)
        await put(e, b"lk", b"v", lease=lease)

        async def keepalives() -> AsyncIterator[pb.LeaseKeepAliveRequest]:
            yield pb.LeaseKeepAliveRequest(ID=lease)
            yield pb.LeaseKeepAliveRequest(ID=4242)

        replies = [r async for r in e.lease.LeaseKeepAlive(keepalives())]
        assert [(r.ID, r.TTL) for r in replies] == [(lease, 5), (4242, 0)]
        ttl = await e.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease, keys=True))
        assert (ttl.TTL, ttl.grantedTTL, list(ttl.keys)) == (5, 5, [b"lk"])
        leases = await e.lease.LeaseLeases(pb.LeaseLeasesRequest())
        assert [x.ID for x in leases.leases] == [lease]
        e.clock.now += 3
        assert await e.backend.expire_leases() == ()  # not yet
        ttl = await e.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease))
        assert ttl.TTL == 2
        e.clock.now += 3
        assert await e.backend.expire_leases() == (lease,)
        assert not (await e.kv.Range(pb.RangeRequest(key=b"lk"))).kvs
        gone = await e.lease.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease))
        assert gone.TTL == -1

    run(body)


# --- Lock and Election services ------------------------------------------------------------


def test_lock_service_orders_waiters() -> None:
    async def body(e: Env) -> None:
        first = await e.lock.Lock(lpb.LockRequest(name=b"L", lease=await grant(e, 30)))
        assert first.key.startswith(b"L/")  # first write ever: revision 1 has no predecessor
        second_lease = await grant(e, 30)
        waiter = asyncio.ensure_future(e.lock.Lock(lpb.LockRequest(name=b"L", lease=second_lease)))
        await asyncio.sleep(0.3)
        assert not waiter.done()
        await e.lock.Unlock(lpb.UnlockRequest(key=first.key))
        second = await asyncio.wait_for(waiter, STEP_S)
        assert second.key == b"L/%x" % second_lease
        third_lease = await grant(e, 30)
        waiter = asyncio.ensure_future(e.lock.Lock(lpb.LockRequest(name=b"L", lease=third_lease)))
        await asyncio.sleep(0.3)
        await e.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=second_lease))  # holder's lease ends
        third = await asyncio.wait_for(waiter, STEP_S)
        assert third.key == b"L/%x" % third_lease

    run(body)


def test_lock_not_granted_when_waiters_lease_expired_while_waiting() -> None:
    """etcd #11456: a waiter whose lease (and so its key) vanished must not get the lock."""

    async def body(e: Env) -> None:
        holder = await e.lock.Lock(lpb.LockRequest(name=b"M", lease=await grant(e, 30)))
        waiter_lease = await grant(e, 30)
        waiter = asyncio.ensure_future(e.lock.Lock(lpb.LockRequest(name=b"M", lease=waiter_lease)))
        await asyncio.sleep(0.3)
        await e.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=waiter_lease))
        await e.lock.Unlock(lpb.UnlockRequest(key=holder.key))
        await expect_error(waiter, grpc.StatusCode.FAILED_PRECONDITION, "session is expired")

    run(body)


def test_planted_bug_without_owner_check_grants_a_dead_lock() -> None:
    """The check above can fail: without it, the waiter reports a lock it does not hold."""
    async def main() -> bool:
        backend = LocalBackend(clock=ManualClock())
        c = Contention(backend, verify_owner_after_wait=False)
        holder_lease = await c.ensure_lease(0)
        await c.acquire(b"N/", holder_lease, b"", "expired")
        waiter_lease = await c.ensure_lease(0)
        waiter = asyncio.ensure_future(c.acquire(b"N/", waiter_lease, b"", "expired"))
        await asyncio.sleep(0.1)
        await backend.write(LeaseRevokeRequest(id=waiter_lease))
        await c.delete(b"N/%x" % holder_lease)
        key, _ = await asyncio.wait_for(waiter, STEP_S)
        still_there = await c.backend.read(RangeRequest(key=key))
        return not still_there.kvs  # reported acquired, yet its key is gone

    assert asyncio.run(main()) is True


def test_election_campaign_leader_observe_proclaim_resign() -> None:
    async def body(e: Env) -> None:
        name = b"E"
        await expect_error(e.election.Leader(epb.LeaderRequest(name=name)),
                           grpc.StatusCode.NOT_FOUND, "election: no leader")
        alice = await e.election.Campaign(
            epb.CampaignRequest(name=name, lease=await grant(e, 30), value=b"alice")
        )
        observe = e.election.Observe(epb.LeaderRequest(name=name))
        seen = [(await asyncio.wait_for(observe.read(), STEP_S)).kv.value]
        bob_task = asyncio.ensure_future(
            e.election.Campaign(epb.CampaignRequest(name=name, lease=await grant(e, 30), value=b"bob"))
        )
        await asyncio.sleep(0.3)
        assert not bob_task.done()
        await e.election.Proclaim(epb.ProclaimRequest(leader=alice.leader, value=b"alice2"))
        seen.append((await asyncio.wait_for(observe.read(), STEP_S)).kv.value)
        leader = await e.election.Leader(epb.LeaderRequest(name=name))
        assert leader.kv.value == b"alice2"
        await e.election.Resign(epb.ResignRequest(leader=alice.leader))
        bob = await asyncio.wait_for(bob_task, STEP_S)
        seen.append((await asyncio.wait_for(observe.read(), STEP_S)).kv.value)
        assert seen == [b"alice", b"alice2", b"bob"]
        assert bob.leader.rev > alice.leader.rev  # leadership revisions work as fencing tokens
        await expect_error(
            e.election.Proclaim(epb.ProclaimRequest(leader=alice.leader, value=b"stale")),
            grpc.StatusCode.FAILED_PRECONDITION, "election: not leader",
        )
        observe.cancel()

    run(body)


# --- maintenance ----------------------------------------------------------------------------


def test_status_hash_snapshot_alarm() -> None:
    async def body(e: Env) -> None:
        await put(e, b"s/a", b"1")
        await put(e, b"s/b", b"2")
        st = await e.maint.Status(pb.StatusRequest())
        assert (st.leader, st.raftTerm, st.version) == (1, 1, "3.4.0")
        assert st.raftAppliedIndex == st.raftIndex == 2 and st.dbSize > 0
        h1 = await e.maint.HashKV(pb.HashKVRequest(revision=0))
        assert h1.header.revision == 3 and h1.compact_revision == -1  # never compacted, as etcd
        assert (await e.maint.HashKV(pb.HashKVRequest(revision=2))).hash != h1.hash
        chunks = [c async for c in e.maint.Snapshot(pb.SnapshotRequest())]
        assert chunks[-1].remaining_bytes == 0
        assert all(a.remaining_bytes > b.remaining_bytes for a, b in itertools.pairwise(chunks))
        data = b"".join(c.blob for c in chunks)
        restored = StateMachine.from_snapshot([snapshot_file.unwrap(data)])
        assert restored.state_hash() == e.backend.state_machine.state_hash()
        act = await e.maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE))
        assert [(a.memberID, a.alarm) for a in act.alarms] == [(1, pb.NOSPACE)]
        assert (await e.maint.Status(pb.StatusRequest())).errors == ["memberID:1 alarm:NOSPACE"]
        off = await e.maint.Alarm(pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, alarm=pb.NOSPACE))
        assert list(off.alarms) == []
        members = await e.cluster.MemberList(pb.MemberListRequest())
        assert [m.ID for m in members.members] == [1]

    run(body)


def test_progress_notify_watchers_get_periodic_marks_when_idle() -> None:
    async def body(e: Env) -> None:
        s = Stream(e)
        await s.create(b"pn", progress_notify=True)
        await s.create(b"quiet")  # did not ask for notifications
        await s.next(), await s.next()
        await put(e, b"other", b"x")
        e.backend.progress_tick()  # what the backend's timer does every interval
        mark = await s.next()
        assert mark.watch_id == 0 and not mark.events and mark.header.revision == 2
        await put(e, b"pn", b"1")
        event = await s.next()
        assert event.watch_id == 0 and event.events[0].kv.value == b"1"
        s.close()

    run(body)


def test_garbage_on_the_port_does_not_disturb_the_server() -> None:
    async def body(e: Env) -> None:
        for junk in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", bytes(range(256)) * 8):
            reader, writer = await asyncio.open_connection("127.0.0.1", e.port)
            writer.write(junk)
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(reader.read(1024), STEP_S)  # the server answers or closes
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await still_serving(e)

    run(body)


def test_a_lock_caller_that_gives_up_leaves_no_key_behind() -> None:
    """A waiter whose call is cancelled (deadline) withdraws its key; otherwise everyone queued
    behind it would wait for a lease that may live on."""

    async def body(e: Env) -> None:
        holder = await e.lock.Lock(lpb.LockRequest(name=b"G", lease=await grant(e, 30)))
        quitter_lease = await grant(e, 30)
        await expect_error(
            e.lock.Lock(lpb.LockRequest(name=b"G", lease=quitter_lease), timeout=0.5),
            grpc.StatusCode.DEADLINE_EXCEEDED, "",
        )
        quitter_key = b"G/%x" % quitter_lease
        for _ in range(100):  # the server notices the cancellation asynchronously
            if not (await e.kv.Range(pb.RangeRequest(key=quitter_key))).kvs:
                break
            await asyncio.sleep(0.05)
        assert not (await e.kv.Range(pb.RangeRequest(key=quitter_key))).kvs
        last_lease = await grant(e, 30)
        waiter = asyncio.ensure_future(e.lock.Lock(lpb.LockRequest(name=b"G", lease=last_lease)))
        await e.lock.Unlock(lpb.UnlockRequest(key=holder.key))
        assert (await asyncio.wait_for(waiter, STEP_S)).key == b"G/%x" % last_lease

    run(body)


def watch_history_violations(responses: list[pb.WatchResponse], txn_sizes: dict[int, int]) -> list[str]:
    """Ordered, unique and atomic delivery as a client sees it: revisions strictly increase
    from one complete response to the next (fragments of one revision are joined first), and
    every revision carries all of its events. Returns the violations found."""
    bad: list[str] = []
    joined: list[tuple[int, list[Any]]] = []
    pending: list[Any] = []
    for r in responses:
        pending.extend(r.events)
        if not r.fragment:
            if pending:
                joined.append((pending[0].kv.mod_revision, pending))
            pending = []
    last = 0
    for rev, events in joined:
        if {ev.kv.mod_revision for ev in events} != {rev}:
            bad.append(f"response mixes revisions {sorted({ev.kv.mod_revision for ev in events})}")
        if rev <= last:
            bad.append(f"revision {rev} after {last}: reordered, duplicated or split")
        if len(events) != txn_sizes.get(rev, 0):
            bad.append(f"revision {rev}: {len(events)} events, wrote {txn_sizes.get(rev, 0)}")
        last = rev
    return bad


async def _concurrent_txns_seen_by_a_watcher(e: Env, fragment: bool) -> list[str]:
    s = Stream(e)
    await s.create(b"atom/", range_end=b"atom0", fragment=fragment)
    await s.next()
    sizes: dict[int, int] = {}

    async def writer(w: int) -> None:
        for i in range(15):
            n = 1 + (w + i) % 4
            ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"atom/%d/%d" % (w, k), value=b"x" * 200))
                   for k in range(n)]
            res = await e.kv.Txn(pb.TxnRequest(success=ops))
            sizes[res.header.revision] = n

    await asyncio.gather(*(writer(w) for w in range(4)))
    responses = []
    total = sum(sizes.values())
    while sum(len(r.events) for r in responses) < total:
        responses.append(await s.next())
    s.close()
    return watch_history_violations(responses, sizes)


def test_watch_delivery_is_ordered_unique_and_atomic_under_concurrent_txns() -> None:
    async def body(e: Env) -> None:
        assert await _concurrent_txns_seen_by_a_watcher(e, fragment=False) == []
        assert await _concurrent_txns_seen_by_a_watcher(e, fragment=True) == []

    run(body, EtcdApiConfig(watch_fragment_bytes=600))


def test_planted_split_txn_bug_is_caught_through_the_etcd_surface() -> None:
    async def body(e: Env) -> None:
        e.backend._sm = StateMachine(split_txn_events_bug=True)  # planted: hub splits txns
        violations = await _concurrent_txns_seen_by_a_watcher(e, fragment=False)
        assert any("split" in v for v in violations), violations

    run(body)


def test_a_slow_watch_consumer_is_canceled_with_a_reason_never_skipped() -> None:
    """A client that stops reading backs the stream up into the state machine's bounded
    watcher buffer; the watcher is then canceled with the revision to resume from, and every
    event before that revision was delivered (TEST_SCENARIOS H.51)."""
    config = EtcdApiConfig(watch_send_queue=4)

    async def body(e: Env) -> None:
        e.backend._sm = StateMachine(StateConfig(watch_buffer_events=20))
        s = Stream(e)
        await s.create(b"slow/", range_end=b"slow0")
        await s.next()
        writes = 300
        for i in range(writes):  # ~6 MB: beyond what gRPC flow control and queues hold
            await put(e, b"slow/%03d" % i, b"x" * 20_000)
        revisions, last = [], None
        while True:
            last = await s.next()
            if last.canceled:
                break
            revisions.extend(ev.kv.mod_revision for ev in last.events)
        assert "slow watcher" in last.cancel_reason
        resume_from = int(last.cancel_reason.rsplit(" ", 1)[1])
        assert revisions == list(range(2, resume_from))  # in order, no gap, no duplicate
        assert resume_from <= writes + 1  # the last write's revision: canceled before the end
        s.close()
        await still_serving(e)

    run(body, config)


class _WriteDuringWatchCreate(LocalBackend):
    """A backend whose watch set-up yields, letting a write land in between (a Raft node may
    apply entries while a watch is being created)."""

    async def watch(self, req: WatchCreate) -> Watch:
        await self.write(PutRequest(b"race", b"during-create"))
        return await super().watch(req)


def test_a_write_during_watch_creation_is_not_missed() -> None:
    async def body(e: Env) -> None:
        s = Stream(e)
        await s.create(b"race")
        created = await s.next()
        assert created.created and created.header.revision == 1  # the empty store's
        first = await s.next()  # the created header said "after revision 1": rev 2 follows
        assert [ev.kv.value for ev in first.events] == [b"during-create"]
        s.close()

    run(body, backend_cls=_WriteDuringWatchCreate)
