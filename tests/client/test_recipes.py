"""Recipes over the native protocol: lock (mutual exclusion, fencing, lease expiry while
waiting), election, rwlock, barriers, service registry, config watcher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quorum.client import txn as t
from quorum.client.recipes import (
    Barrier,
    ConfigWatcher,
    DoubleBarrier,
    Election,
    Lock,
    RWLock,
    ServiceRegistry,
)
from quorum.client.recipes.lock import Lock as LockImpl
from quorum.errors import LockLost

from .helpers import Env, run, serving


async def settle() -> None:
    """Let every task that can run, run (watch events, keepalives)."""
    for _ in range(20):
        await asyncio.sleep(0.005)


def test_lock_mutual_exclusion_with_several_clients() -> None:
    async def body() -> None:
        async with serving() as env:
            clients = [env.client() for _ in range(4)]
            inside = 0
            max_inside = 0
            tokens: list[int] = []

            async def worker(i: int) -> None:
                nonlocal inside, max_inside
                for _ in range(3):
                    async with Lock(clients[i], "m", ttl_s=60) as token:
                        inside += 1
                        max_inside = max(max_inside, inside)
                        tokens.append(token)
                        await asyncio.sleep(0.002)
                        inside -= 1

            await asyncio.gather(*(worker(i) for i in range(4)))
            assert max_inside == 1
            assert len(tokens) == 12
            assert tokens == sorted(tokens) and len(set(tokens)) == 12  # fencing grows
            left = await clients[0].range(b"/quorum/locks/m/", prefix=True, count_only=True)
            assert left.count == 0

    run(body())


def test_fencing_token_is_the_key_revision_and_increases() -> None:
    async def body() -> None:
        async with serving() as env:
            a, b = env.client(), env.client()
            lock_a, lock_b = Lock(a, "f", ttl_s=60), Lock(b, "f", ttl_s=60)
            t1 = await lock_a.acquire()
            kv = await a.get(lock_a.key)
            assert kv is not None and kv.create_revision == t1
            waiting = asyncio.ensure_future(lock_b.acquire())
            await settle()
            assert not waiting.done()  # b waits while a holds
            await lock_a.release()
            t2 = await waiting
            assert t2 > t1 and await lock_b.is_held() and not await lock_a.is_held()
            await lock_b.release()

    run(body())


def test_waiter_whose_lease_expired_is_never_told_it_holds_the_lock() -> None:
    async def body() -> None:
        async with serving() as env:
            holder, waiter = env.client(), env.client()
            lock_h = Lock(holder, "x", ttl_s=600)
            lock_w = Lock(waiter, "x", ttl_s=10)
            await lock_h.acquire()
            waiting = asyncio.ensure_future(lock_w.acquire())
            await settle()
            assert not waiting.done()
            expired = await env.expire(11)  # the waiter's lease ends while it waits
            assert len(expired) == 1
            await lock_h.release()
            with pytest.raises(LockLost):
                await waiting
            assert lock_w.token == 0

    run(body())


async def _vanish_together(env: Env, lock_cls: type[LockImpl]) -> BaseException | int:
    """The waiter's key and the holder's key vanish at one revision (holder first in the
    txn): the wait for the predecessor ends, but the waiter's key is gone too."""
    holder, waiter = env.client(), env.client()
    lock_h, lock_w = lock_cls(holder, "y", ttl_s=600), lock_cls(waiter, "y", ttl_s=600)
    await lock_h.acquire()
    waiting = asyncio.ensure_future(lock_w.acquire())
    await settle()
    while not lock_w.key:
        await settle()
    await holder.txn([], [t.delete(lock_h.key), t.delete(lock_w.key)])
    try:
        return await waiting
    except LockLost as exc:
        return exc


def test_lock_rechecks_its_key_after_the_wait() -> None:
    async def body() -> None:
        async with serving() as env:
            outcome = await _vanish_together(env, Lock)
            assert isinstance(outcome, LockLost)

    run(body())


def test_planted_bug_lock_without_recheck_reports_a_lock_it_does_not_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both guards removed (the own-key check while waiting and the re-check after it):
    the waiter then claims a lock whose key is gone."""
    from quorum.client.recipes import lock as lock_module
    from quorum.state.commands import RangeRequest

    class NoRecheck(Lock):
        async def _confirm(self, create_rev: int, lease_id: int) -> None:
            return None

    async def naive_wait(
        client: Any, my_key: bytes, my_rev: int, prefix: bytes, start: bytes, end: bytes
    ) -> None:
        if my_rev <= 1:
            return  # max_create_revision 0 would mean "unbounded"
        while (await client.call(RangeRequest(start, end, max_create_revision=my_rev - 1))).kvs:
            await asyncio.sleep(0.005)

    monkeypatch.setattr(lock_module, "wait_predecessors", naive_wait)

    async def body() -> None:
        async with serving() as env:
            outcome = await _vanish_together(env, NoRecheck)
            assert isinstance(outcome, int)  # "held", with no key behind it: the bug shows

    run(body())


def test_election_campaign_observe_proclaim_resign() -> None:
    async def body() -> None:
        async with serving() as env:
            c1, c2, watcher = env.client(), env.client(), env.client()
            e1, e2 = Election(c1, "svc", ttl_s=60), Election(c2, "svc", ttl_s=60)
            observer = Election(watcher, "svc")
            seen: list[bytes | None] = []
            changes = asyncio.Event()

            async def observe() -> None:
                async for leader in observer.observe():
                    seen.append(None if leader is None else leader.value)
                    changes.set()

            obs_task = asyncio.ensure_future(observe())
            await settle()
            assert await observer.leader() is None
            await e1.campaign(b"one")
            second = asyncio.ensure_future(e2.campaign(b"two"))
            await settle()
            assert not second.done()
            await e1.proclaim(b"one-v2")
            leader = await observer.leader()
            assert leader is not None and leader.value == b"one-v2"
            await e1.resign()
            await second
            with pytest.raises(LockLost):
                await e1._proclaim_at(1, b"stale")  # no longer our key
            await settle()
            assert seen[0] is None and seen[-1] == b"two" and b"one-v2" in seen
            await e2.resign()
            obs_task.cancel()

    run(body())


def test_rwlock_readers_share_writers_exclude() -> None:
    async def body() -> None:
        async with serving() as env:
            r1, r2, w = (RWLock(env.client(), "rw", ttl_s=60) for _ in range(3))
            await r1.read_lock()
            await r2.read_lock()  # readers share
            writing = asyncio.ensure_future(w.write_lock())
            await settle()
            assert not writing.done()
            late_reader = RWLock(env.client(), "rw", ttl_s=60)
            reading = asyncio.ensure_future(late_reader.read_lock())
            await settle()
            assert not reading.done()  # queued behind the writer: no writer starvation
            await r1.release()
            await settle()
            assert not writing.done()
            await r2.release()
            await writing
            await settle()
            assert not reading.done()
            await w.release()
            await reading
            await late_reader.release()

    run(body())


def test_barrier_and_double_barrier() -> None:
    async def body() -> None:
        async with serving() as env:
            b_owner = Barrier(env.client(), "gate")
            await b_owner.hold()
            waiters = [asyncio.ensure_future(Barrier(env.client(), "gate").wait()) for _ in range(3)]
            await settle()
            assert not any(w.done() for w in waiters)
            await b_owner.release()
            await asyncio.gather(*waiters)
            await Barrier(env.client(), "gate").wait()  # not held: returns at once

            parties = [DoubleBarrier(env.client(), "meet", 3, ttl_s=60) for _ in range(3)]
            first_two = [asyncio.ensure_future(p.enter()) for p in parties[:2]]
            await settle()
            assert not any(f.done() for f in first_two)
            await parties[2].enter()
            await asyncio.gather(*first_two)
            leaving = [asyncio.ensure_future(p.leave()) for p in parties[:2]]
            await settle()
            assert not any(f.done() for f in leaving)
            await parties[2].leave()
            await asyncio.gather(*leaving)

    run(body())


def test_service_registry_membership_follows_leases() -> None:
    async def body() -> None:
        async with serving() as env:
            reg = ServiceRegistry(env.client())
            view = await reg.watch("api")
            a = await ServiceRegistry(env.client()).register("api", "a", b"10.0.0.1:80", ttl_s=600)
            b = await ServiceRegistry(env.client()).register("api", "b", b"10.0.0.2:80", ttl_s=5)
            await view.wait_for(lambda items: len(items) == 2, timeout_s=5)
            assert view.members == {"a": b"10.0.0.1:80", "b": b"10.0.0.2:80"}
            assert await reg.instances("api") == view.members
            await b._lease.release()  # the instance stops renewing; b's lease still runs
            await env.expire(6)  # ...and now expires: the registration disappears
            await view.wait_for(lambda items: set(items) == {b"a"}, timeout_s=5)
            await a.deregister()
            await view.wait_for(lambda items: not items, timeout_s=5)
            await view.stop()

    run(body())


def test_config_watcher_keeps_a_local_dict_current() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            await c.put(b"/cfg/timeout", b"5")
            await c.put(b"/cfg/retries", b"3")
            async with ConfigWatcher(env.client(), "/cfg/") as cfg:
                assert cfg.snapshot() == {b"timeout": b"5", b"retries": b"3"}
                put = await c.put(b"/cfg/timeout", b"7")
                await c.delete(b"/cfg/retries")
                last = await c.put(b"/cfg/new", b"x")
                await cfg.wait_revision(last.revision, timeout_s=5)
                assert cfg.snapshot() == {b"timeout": b"7", b"new": b"x"}
                assert cfg.get("timeout") == b"7" and put.revision < cfg.revision + 1

    run(body())


async def _config_across_compaction(env: Env) -> tuple[dict[bytes, bytes], int]:
    """Follow /cfg2/ while the server is down, history changes and is compacted."""
    from quorum.api.native.server import serve_native
    from quorum.client import AsyncClient
    from quorum.state.commands import CompactionRequest, DeleteRangeRequest, PutRequest

    port = env.server.port
    follower = AsyncClient([env.endpoint], timeout_s=10, retry_backoff_s=0.02)
    env.clients.append(follower)
    await env.client().put(b"/cfg2/a", b"1")
    cfg = ConfigWatcher(follower, "/cfg2/")
    await cfg.start()
    await env.server.close()
    await env.backend.write(PutRequest(b"/cfg2/b", b"2"))
    await env.backend.write(DeleteRangeRequest(b"/cfg2/a"))
    last = await env.backend.write(PutRequest(b"/cfg2/c", b"3"))
    await env.backend.write(CompactionRequest(last.revision))
    env.server = await serve_native(env.backend, "127.0.0.1", port)
    try:
        await cfg.wait_for(lambda items: items == {b"b": b"2", b"c": b"3"}, timeout_s=5)
        return cfg.snapshot(), cfg.resyncs
    finally:
        await cfg.stop()


def test_config_watcher_resyncs_after_its_history_was_compacted() -> None:
    async def body() -> None:
        async with serving() as env:
            items, resyncs = await _config_across_compaction(env)
            assert items == {b"b": b"2", b"c": b"3"} and resyncs == 1

    run(body())


def test_planted_bug_mirror_without_resync_never_converges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quorum.client.recipes._common import PrefixMirror
    from quorum.errors import QuorumError, RevisionCompacted

    async def no_resync(self: PrefixMirror, watcher: object) -> None:
        try:
            await self._apply_stream(watcher)  # type: ignore[arg-type]
        except QuorumError as exc:
            self.error = exc
            await self._notify()

    monkeypatch.setattr(PrefixMirror, "_follow", no_resync)

    async def body() -> None:
        async with serving() as env:
            with pytest.raises(RevisionCompacted):
                await _config_across_compaction(env)

    run(body())


def test_lock_acquire_timeout_gives_up_its_place() -> None:
    async def body() -> None:
        async with serving() as env:
            a, b = env.client(), env.client()
            holder = Lock(a, "to", ttl_s=60)
            first = await holder.acquire()
            impatient = Lock(b, "to", ttl_s=60)
            with pytest.raises(TimeoutError):
                await impatient.acquire(timeout_s=0.2)
            queued = await a.range(b"/quorum/locks/to/", prefix=True, count_only=True)
            assert queued.count == 1  # the waiter's key (and lease) are gone
            assert impatient.token == 0
            await holder.release()
            assert await Lock(b, "to", ttl_s=60).acquire() > first

    run(body())


def test_election_leader_whose_lease_expires_is_replaced_and_cannot_proclaim() -> None:
    async def body() -> None:
        async with serving() as env:
            old = Election(env.client(), "exp", ttl_s=5)
            new = Election(env.client(), "exp", ttl_s=600)
            await old.campaign(b"old")
            keeper = old._lease._keeper
            assert keeper is not None
            await keeper.stop()  # the old leader pauses: no more renewals
            waiting = asyncio.ensure_future(new.campaign(b"new"))
            await settle()
            assert not waiting.done()
            await env.expire(6)  # only the old leader's 5 s lease runs out
            token = await asyncio.wait_for(waiting, 5)
            assert token > old.leadership_token
            leader = await new.leader()
            assert leader is not None and leader.value == b"new"
            with pytest.raises(LockLost):
                await old.proclaim(b"still me?")  # its key is gone: refused
            await new.resign()

    run(body())


def test_lease_session_shared_by_recipes_ends_them_together() -> None:
    from quorum.client.recipes import LeaseSession

    async def body() -> None:
        async with serving() as env:
            c, other = env.client(), env.client()
            async with LeaseSession(c, ttl_s=600) as session:
                lock = Lock(c, "shared", lease_id=session.lease_id)
                election = Election(c, "shared", lease_id=session.lease_id)
                await lock.acquire()
                await election.campaign(b"me")
                assert not session.lost and not lock.lease_lost
            # closing the session revoked the lease: both holds are gone
            assert not await lock.is_held()
            assert await Election(other, "shared").leader() is None
            assert await Lock(other, "shared", ttl_s=60).acquire() > lock.token

    run(body())


def test_lock_reports_its_lease_lost() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            lock = Lock(c, "ll", ttl_s=1)  # renewed every ~0.33 s
            await lock.acquire()
            await c.lease_revoke(lock._lease.id)  # as if it expired
            for _ in range(500):
                if lock.lease_lost:
                    break
                await asyncio.sleep(0.02)
            assert lock.lease_lost and not await lock.is_held()

    run(body())


def test_waiter_learns_at_once_when_its_key_is_gone_while_the_holder_holds() -> None:
    async def body() -> None:
        async with serving() as env:
            holder = Lock(env.client(), "z", ttl_s=600)
            waiter = Lock(env.client(), "z", ttl_s=10)
            await holder.acquire()
            waiting = asyncio.ensure_future(waiter.acquire())
            await settle()
            await env.expire(11)  # the waiter's lease ends; the holder keeps the lock
            with pytest.raises(LockLost):
                await asyncio.wait_for(waiting, 5)
            assert await holder.is_held()
            await holder.release()

    run(body())


def test_healing_registration_comes_back_after_its_lease_was_lost() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            registry = ServiceRegistry(c)
            view = await registry.watch("db")
            reg = await registry.register("db", "n1", b"10.0.0.5:5432", ttl_s=1, heal=True)
            first_lease = reg.lease_id
            await view.wait_for(lambda items: b"n1" in items, timeout_s=5)
            await c.lease_revoke(first_lease)  # as if it expired during a long pause
            for _ in range(500):
                if reg.renewals:
                    break
                await asyncio.sleep(0.01)
            assert reg.renewals == 1 and reg.lease_id not in (0, first_lease)
            kv = await c.get(b"/quorum/services/db/n1")
            assert kv is not None and kv.lease == reg.lease_id  # registered again
            await view.wait_for(lambda items: b"n1" in items, timeout_s=5)
            await reg.deregister()
            await view.wait_for(lambda items: not items, timeout_s=5)
            await view.stop()

    run(body())
