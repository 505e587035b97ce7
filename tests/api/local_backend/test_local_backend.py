"""LocalBackend against the Backend contract: writes, reads, exactly-once sessions, watches
(ordering, progress, cancel, compaction), lease time and expiry, maintenance."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from quorum.api.backend import Backend, Watch, WatchCreate, WatchResponse
from quorum.api.local import LocalBackend
from quorum.errors import (
    InvalidRevision,
    LeaseNotFound,
    NotSupported,
    RevisionCompacted,
    StaleSequence,
    TooManyOps,
)
from quorum.state import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseGrantResponse,
    PutRequest,
    RangeRequest,
    RangeResponse,
    SessionOpenRequest,
    SessionOpenResponse,
    StateMachine,
    TxnRequest,
    prefix_end,
)

STEP_S = 10.0


class ManualClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def run(body: Callable[[LocalBackend, ManualClock], Awaitable[None]]) -> None:
    async def main() -> None:
        clock = ManualClock()
        backend = LocalBackend(clock=clock)
        try:
            await asyncio.wait_for(body(backend, clock), 30)
        finally:
            await backend.close()

    asyncio.run(main())


async def take(watch: Watch, n: int) -> list[WatchResponse]:
    it = watch.__aiter__()
    return [await asyncio.wait_for(it.__anext__(), STEP_S) for _ in range(n)]


def test_implements_the_backend_protocol() -> None:
    assert isinstance(LocalBackend(), Backend)


def test_write_then_read_and_revisions() -> None:
    async def body(b: LocalBackend, _: ManualClock) -> None:
        r = await b.write(PutRequest(b"k", b"v1"))
        assert r.revision == 2 and b.header().revision == 2  # an empty store is at 1
        await b.write(PutRequest(b"k", b"v2"))
        got = await b.read(RangeRequest(b"k"))
        assert isinstance(got, RangeResponse) and got.kvs[0].value == b"v2"
        old = await b.read(RangeRequest(b"k", revision=2), serializable=True)
        assert isinstance(old, RangeResponse) and old.kvs[0].value == b"v1"
        txn = await b.read(TxnRequest(success=(RangeRequest(b"k"),)))
        assert txn.revision == 3
        with pytest.raises(TooManyOps):
            await b.write(TxnRequest(success=tuple(PutRequest(b"%d" % i) for i in range(200))))
        assert b.header().revision == 3  # the failed write changed nothing

    run(body)


def test_session_writes_apply_once() -> None:
    async def body(b: LocalBackend, _: ManualClock) -> None:
        opened = await b.write(SessionOpenRequest())
        assert isinstance(opened, SessionOpenResponse)
        sid = opened.session_id
        first = await b.write(PutRequest(b"once", b"1"), session_id=sid, seq=1)
        retry = await b.write(PutRequest(b"once", b"1"), session_id=sid, seq=1)
        assert first == retry  # the recorded outcome, not a second application
        got = await b.read(RangeRequest(b"once"))
        assert got.kvs[0].version == 1
        await b.write(PutRequest(b"once", b"2"), session_id=sid, seq=2)
        with pytest.raises(StaleSequence):
            await b.write(PutRequest(b"once", b"stale"), session_id=sid, seq=1)

    run(body)


def test_watch_delivers_in_order_with_progress_and_cancel() -> None:
    async def body(b: LocalBackend, _: ManualClock) -> None:
        w = await b.watch(WatchCreate(b"w/", prefix_end(b"w/"), prev_kv=True))
        await b.write(PutRequest(b"w/a", b"1"))
        await b.write(TxnRequest(success=(PutRequest(b"w/b", b"2"), PutRequest(b"w/c", b"3"))))
        await b.write(PutRequest(b"x", b"not watched"))
        await b.write(DeleteRangeRequest(b"w/a"))
        await w.request_progress()
        await w.cancel()
        got = await take(w, 5)
        assert [r.revision for r in got] == [2, 3, 5, 5, 5]
        assert [len(r.events) for r in got[:3]] == [1, 2, 1]  # the txn's two events together
        assert got[2].events[0].prev_kv is not None and got[2].events[0].prev_kv.value == b"1"
        assert got[3].progress and not got[3].events
        assert got[4].canceled
        assert [r async for r in w] == []  # the iteration ended with the canceled response

    run(body)


def test_watch_replays_history_and_reports_compaction() -> None:
    async def body(b: LocalBackend, _: ManualClock) -> None:
        for i in range(5):
            await b.write(PutRequest(b"h", b"%d" % i))
        replay = await b.watch(WatchCreate(b"h", start_revision=3))  # the puts: revisions 2..6
        got = await take(replay, 4)
        assert [r.events[0].kv.value for r in got] == [b"1", b"2", b"3", b"4"]
        await b.write(CompactionRequest(4))
        with pytest.raises(RevisionCompacted):
            await b.read(RangeRequest(b"h", revision=2))
        late = await b.watch(WatchCreate(b"h", start_revision=2))
        (gone,) = await take(late, 1)
        assert gone.canceled and gone.compact_revision == 4
        with pytest.raises(InvalidRevision):
            await b.watch(WatchCreate(b"h", start_revision=-1))

    run(body)


def test_lease_keepalive_and_expiry_follow_the_clock() -> None:
    async def body(b: LocalBackend, clock: ManualClock) -> None:
        grant = await b.write(LeaseGrantRequest(ttl=10))
        assert isinstance(grant, LeaseGrantResponse)
        await b.write(PutRequest(b"eph", b"v", lease=grant.id))
        clock.now += 8
        assert (await b.lease_time_to_live(grant.id)).ttl_s == 2
        assert await b.lease_keepalive(grant.id) == 10  # restarts the full TTL
        clock.now += 8
        assert await b.expire_leases() == ()
        info = await b.lease_time_to_live(grant.id, keys=True)
        assert (info.ttl_s, info.granted_ttl_s, info.keys) == (2, 10, (b"eph",))
        clock.now += 3
        assert await b.expire_leases() == (grant.id,)
        assert (await b.read(RangeRequest(b"eph"))).kvs == ()
        assert (await b.lease_time_to_live(grant.id)).ttl_s == -1
        assert await b.leases() == ()
        with pytest.raises(LeaseNotFound):
            await b.lease_keepalive(grant.id)

    run(body)


def test_background_task_expires_leases() -> None:
    async def main() -> None:
        clock = ManualClock()
        b = LocalBackend(clock=clock, lease_check_interval_s=0.01)
        await b.start()
        try:
            grant = await b.write(LeaseGrantRequest(ttl=1))
            clock.now += 2
            for _ in range(1000):
                if not await b.leases():
                    break
                await asyncio.sleep(0.01)
            assert await b.leases() == ()
            assert grant.id not in await b.leases()
        finally:
            await b.close()

    asyncio.run(main())


def test_maintenance_and_membership() -> None:
    async def body(b: LocalBackend, _: ManualClock) -> None:
        await b.write(PutRequest(b"m", b"1"))
        st = await b.status()
        assert st.leader == b.member_id and st.raft_applied_index == 1 and st.db_size_bytes > 0
        h = await b.hash_kv()
        assert (h.revision, h.compact_revision) == (2, 0)
        data = [chunk async for chunk in b.snapshot()]
        assert StateMachine.from_snapshot(data).state_hash() == await b.hash()
        members = await b.member_list()
        assert [m.id for m in members] == [b.member_id]
        with pytest.raises(NotSupported):
            await b.member_add(("http://127.0.0.1:2390",), is_learner=True)
        with pytest.raises(NotSupported):
            await b.move_leader(b.member_id + 1)
        await b.move_leader(b.member_id)  # already the leader: nothing to do

    run(body)


def test_db_size_estimate_grows_with_writes_and_is_remeasured_by_defragment() -> None:
    async def body(b: LocalBackend, _: ManualClock) -> None:
        await b.write(PutRequest(b"small", b"1"))
        before = (await b.status()).db_size_bytes
        await b.write(TxnRequest(success=(PutRequest(b"big", b"x" * 10_000),)))
        grown = (await b.status()).db_size_bytes
        assert grown >= before + 10_000
        await b.write(DeleteRangeRequest(b"big"))
        await b.write(CompactionRequest(b.header().revision))
        assert (await b.status()).db_size_bytes >= grown  # like a database file: no shrinking
        await b.defragment()
        assert (await b.status()).db_size_bytes < before + 10_000  # re-measured: history gone

    run(body)


def test_a_watch_whose_consumer_stops_is_freed() -> None:
    """A consumer that stops iterating before the final canceled response (a client gone,
    its pump task cancelled) leaves nothing behind: the state machine frees a canceled
    watcher only when its last response is drained, and nobody would drain it."""
    async def body(b: LocalBackend, _: ManualClock) -> None:
        w = await b.watch(WatchCreate(b"k"))
        await b.write(PutRequest(b"k", b"1"))
        got: list[WatchResponse] = []

        async def pump() -> None:
            async for resp in w:
                got.append(resp)

        task = asyncio.create_task(pump())
        while not got:
            await asyncio.sleep(0.01)
        await w.cancel()  # what a server does when the client goes away...
        task.cancel()  # ...before the pump read the canceled response
        with pytest.raises(asyncio.CancelledError):
            await task
        assert b._sm.watches.watcher_ids() == []
        await b.write(PutRequest(b"k", b"2"))  # nothing is buffered for it any more
        assert b._sm.watches.watcher_ids() == [] and not b._watches
        # a consumer that reads to the end frees it the ordinary way
        w2 = await b.watch(WatchCreate(b"k"))
        await w2.cancel()
        assert [r.canceled for r in await take(w2, 1)] == [True]
        assert b._sm.watches.watcher_ids() == [] and not b._watches

    run(body)
