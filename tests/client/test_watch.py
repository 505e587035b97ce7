"""Watches through the client: events, options, cancel, progress, resume after the server
connection is dropped (server restarted on the same port), compaction."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from quorum.api.native.dispatch import BackendDispatcher
from quorum.api.native.server import serve_native
from quorum.client import AsyncClient
from quorum.errors import RevisionCompacted
from quorum.state.commands import CompactionRequest, Event, EventType, PutRequest

from .helpers import Env, run, serving


async def take(watcher: object, n: int) -> list[Event]:
    """The next ``n`` events of a watcher (batches flattened)."""
    out: list[Event] = []
    async for batch in watcher:  # type: ignore[attr-defined]
        out += batch.events
        if len(out) >= n:
            break
    return out


def test_watch_prefix_events_prev_kv_and_cancel() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            w = c.watch(b"app/", prefix=True, prev_kv=True)
            await w.start()
            await c.put(b"app/a", b"1")
            await c.put(b"zzz", b"not watched")
            await c.put(b"app/a", b"2")
            await c.delete(b"app/a")
            events = await take(w, 3)
            assert [e.type for e in events] == [EventType.PUT, EventType.PUT, EventType.DELETE]
            assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
            await w.cancel()
            assert [b async for b in w] == []  # iteration ends after cancel

    run(body())


def test_watch_from_past_revision_and_filters() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            first = await c.put(b"k", b"1")
            await c.put(b"k", b"2")
            await c.delete(b"k")
            replay = c.watch(b"k", start_revision=first.revision)
            assert [e.kv.value for e in await take(replay, 3)] == [b"1", b"2", b""]
            only_deletes = c.watch(b"k", start_revision=first.revision, filter_put=True)
            (deleted,) = await take(only_deletes, 1)
            assert deleted.type is EventType.DELETE
            await replay.cancel()
            await only_deletes.cancel()

    run(body())


def test_progress_notice_advances_resume_point() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            w = c.watch(b"quiet")
            await w.start()
            put = await c.put(b"elsewhere", b"x")
            await c.request_progress()
            async for batch in w:
                assert batch.events == ()
                assert batch.revision == put.revision
                break
            assert w.next_revision == put.revision + 1
            await w.cancel()

    run(body())


def test_watch_resumes_after_server_restart_without_gap_or_duplicate() -> None:
    async def body() -> None:
        async with serving() as env:
            port = env.server.port
            writer = env.client()
            watcher_client = AsyncClient([env.endpoint], timeout_s=10.0, retry_backoff_s=0.02)
            env.clients.append(watcher_client)
            w = watcher_client.watch(b"r/", prefix=True)
            await w.start()
            for i in range(5):
                await writer.put(b"r/%d" % i, b"before")
            seen = await take(w, 5)
            # drop every connection; write while no server listens to the watcher
            await env.server.close()
            for i in range(5, 10):
                await env.backend.write(PutRequest(b"r/%d" % i, b"while down"))
            env.server = await serve_native(env.backend, "127.0.0.1", port)
            for i in range(10, 15):
                await writer.put(b"r/%d" % i, b"after")
            seen += await take(w, 10)
            revisions = [e.kv.mod_revision for e in seen]
            assert [e.kv.key for e in seen] == [b"r/%d" % i for i in range(15)]
            assert revisions == sorted(set(revisions))  # ordered, no duplicate
            assert w.resumes >= 1
            await w.cancel()

    run(body())


def test_resume_point_compacted_raises() -> None:
    async def body() -> None:
        async with serving() as env:
            port = env.server.port
            c = AsyncClient([env.endpoint], timeout_s=10.0)
            env.clients.append(c)
            w = c.watch(b"c")
            await w.start()
            await c.put(b"c", b"1")
            await take(w, 1)
            await env.server.close()
            for i in range(3):
                last = await env.backend.write(PutRequest(b"c", b"%d" % i))
            await env.backend.write(CompactionRequest(last.revision))
            env.server = await serve_native(env.backend, "127.0.0.1", port)
            with pytest.raises(RevisionCompacted) as info:
                await take(w, 1)
            assert info.value.compact_revision == last.revision

    run(body())


def test_watcher_as_context_manager_cancels_on_exit() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            async with c.watch(b"cm") as w:
                await c.put(b"cm", b"1")
                (event,) = await take(w, 1)
                assert event.kv.value == b"1"
            assert [b async for b in w] == []
            await c.put(b"cm", b"2")  # no watch left on the server for this connection
            (served,) = env.server.connections
            await asyncio.sleep(0.01)
            assert not served._watches and not served._watchers

    run(body())


def test_many_watchers_one_connection() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            watchers = [c.watch(b"m/%d" % i) for i in range(50)]
            await asyncio.gather(*(w.start() for w in watchers))
            await asyncio.gather(*(c.put(b"m/%d" % i, b"%d" % i) for i in range(50)))
            results = await asyncio.gather(*(take(w, 1) for w in watchers))
            assert [r[0].kv.value for r in results] == [b"%d" % i for i in range(50)]
            for w in watchers:
                await w.cancel()

    run(body())


def test_watch_from_now_resumes_exactly_where_it_started() -> None:
    async def body() -> None:
        async with serving() as env:
            port = env.server.port
            before = await env.client().put(b"n", b"before the watch")
            c = AsyncClient([env.endpoint], timeout_s=10, retry_backoff_s=0.02)
            env.clients.append(c)
            w = c.watch(b"n")
            await w.start()
            assert w.next_revision == before.revision + 1
            await env.server.close()  # lost before any event was delivered
            await env.backend.write(PutRequest(b"n", b"while down"))
            env.server = await serve_native(env.backend, "127.0.0.1", port)
            await env.client().put(b"n", b"after")
            values = [e.kv.value for e in await take(w, 2)]
            assert values == [b"while down", b"after"]
            await w.cancel()

    run(body())


class Replaying(BackendDispatcher):
    """A faulty server: every watch it creates starts 3 revisions too early."""

    async def open_watch(self, req: Any) -> Any:
        if req.start_revision > 3:
            req = msgspec.structs.replace(req, start_revision=req.start_revision - 3)
        return await super().open_watch(req)


def test_reader_never_sees_a_revision_twice_even_if_a_server_replays() -> None:
    async def body() -> None:
        async with serving() as env:
            port = env.server.port
            c = AsyncClient([env.endpoint], timeout_s=10, retry_backoff_s=0.02)
            env.clients.append(c)
            w = c.watch(b"d")
            await w.start()
            for i in range(5):
                await env.client().put(b"d", b"%d" % i)
            seen = await take(w, 5)
            await env.server.close()
            env.server = await serve_native(
                env.backend, "127.0.0.1", port, dispatcher_factory=Replaying
            )
            await env.client().put(b"d", b"new")
            seen += await take(w, 1)
            assert [e.kv.value for e in seen] == [b"0", b"1", b"2", b"3", b"4", b"new"]
            await w.cancel()

    run(body())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_watch_history_is_exact_across_random_restarts(seed: int) -> None:
    """Random writes and server restarts while a reader consumes the watch: the resumed
    watch delivers exactly the store's history, as replayed by a fresh watch afterwards."""
    import random

    async def body() -> None:
        rng = random.Random(seed)
        async with serving() as env:
            port = env.server.port
            writer = env.client()
            c = AsyncClient([env.endpoint], timeout_s=10, retry_backoff_s=0.01)
            env.clients.append(c)
            w = c.watch(b"h/", prefix=True)
            await w.start()
            seen: list[Event] = []
            done = asyncio.Event()

            async def read() -> None:
                async for batch in w:
                    seen.extend(batch.events)
                    if any(e.kv.key == b"h/end" for e in batch.events):
                        done.set()

            reader = asyncio.ensure_future(read())
            restarts = 0
            for _ in range(80):
                roll = rng.random()
                key = b"h/%d" % rng.randrange(5)
                if roll < 0.1:
                    restarts += 1
                    await env.server.close()
                    for _ in range(rng.randrange(3)):
                        await env.backend.write(PutRequest(key, b"down"))
                    env.server = await serve_native(env.backend, "127.0.0.1", port)
                elif roll < 0.3:
                    await writer.delete(key)
                else:
                    await writer.put(key, b"%d" % rng.randrange(100))
                await asyncio.sleep(rng.choice([0, 0, 0.001]))  # let the reader interleave
            await writer.put(b"h/end", b"")
            await asyncio.wait_for(done.wait(), 10)
            await w.cancel()
            await reader
            replay = c.watch(b"h/", prefix=True, start_revision=1)
            expected: list[Event] = []
            async for batch in replay:
                expected.extend(batch.events)
                if any(e.kv.key == b"h/end" for e in batch.events):
                    break
            await replay.cancel()
            assert restarts >= 3 and w.resumes >= 3
            assert [(e.type, e.kv.key, e.kv.mod_revision) for e in seen] == [
                (e.type, e.kv.key, e.kv.mod_revision) for e in expected
            ]

    run(body())


async def _first_event_after_restart(env: Env) -> bytes:
    port = env.server.port
    c = AsyncClient([env.endpoint], timeout_s=10, retry_backoff_s=0.01)
    env.clients.append(c)
    w = c.watch(b"p")
    await w.start()
    await env.server.close()
    await env.backend.write(PutRequest(b"p", b"first"))
    await env.backend.write(PutRequest(b"p", b"second"))
    env.server = await serve_native(env.backend, "127.0.0.1", port)
    (event,) = (await take(w, 1))[:1]
    await w.cancel()
    return event.kv.value


def test_resume_starts_at_the_first_unseen_revision() -> None:
    async def body() -> None:
        async with serving() as env:
            assert await _first_event_after_restart(env) == b"first"

    run(body())


def test_planted_bug_resume_one_revision_late_loses_an_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quorum.client.watch import Watcher

    # late only on a resume: the first create, before the server pinned the start, asks for
    # 0 ("from now"). (Shifting that one too would ask for revision 1 of an empty store, which
    # holds no write, and nothing would be lost to detect.)
    monkeypatch.setattr(Watcher, "_resume_revision",
                        lambda self: self.next_revision + 1 if self.next_revision else 0)

    async def body() -> None:
        async with serving() as env:
            assert await _first_event_after_restart(env) == b"second"  # "first" was lost

    run(body())


async def _watch_through_silent_proxy(env: Env, wait_s: float) -> Event:
    from .helpers import LossyProxy

    proxy = LossyProxy(env.server.port)
    await proxy.start()
    c = AsyncClient(
        [proxy.endpoint, env.endpoint], timeout_s=5, dead_after_s=0.3, retry_backoff_s=0.01
    )
    env.clients.append(c)
    w = c.watch(b"q")
    await w.start()
    proxy.blackhole = True  # the server the watch lives on goes quiet
    await env.client().put(b"q", b"1")
    try:
        (event,) = await asyncio.wait_for(take(w, 1), wait_s)
        assert w.resumes == 1 and c.endpoint == env.endpoint
        return event
    finally:
        await w.cancel()
        await proxy.close()


def test_watch_on_a_silent_server_moves_to_another_endpoint() -> None:
    async def body() -> None:
        async with serving() as env:
            event = await _watch_through_silent_proxy(env, wait_s=5)
            assert event.kv.value == b"1"

    run(body())


def test_planted_bug_without_pings_a_watch_on_a_silent_server_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AsyncClient, "_ping", lambda self, conn, now: None)

    async def body() -> None:
        async with serving() as env:
            with pytest.raises(TimeoutError):
                await _watch_through_silent_proxy(env, wait_s=1.5)

    run(body())


def test_invalid_watch_request_is_a_typed_error() -> None:
    from quorum.errors import InvalidRevision

    async def body() -> None:
        async with serving() as env:
            c = env.client()
            w = c.watch(b"k", start_revision=-1)
            with pytest.raises(InvalidRevision):
                await w.start()
            assert [b async for b in w] == []  # the watcher is finished, not retrying
            await c.put(b"k", b"still usable")

    run(body())


def test_a_progress_notice_below_what_the_reader_saw_is_dropped() -> None:
    """A watch resumed on a node that has not applied as far as the reader got may report
    its own, older revision as progress: the reader must not see a bookmark go backwards
    (it would come after later events; found by quorum verify's watch workload)."""
    from quorum.api.native import messages as m
    from quorum.client.watch import Watcher

    w = Watcher(AsyncClient(["127.0.0.1:1"]), m.WatchCreateReq(b"k"))
    w.next_revision = 7952  # the reader has seen an event at 7951
    assert w._handle(m.WatchEvents(6253)) is None
    assert w.next_revision == 7952
    same = w._handle(m.WatchEvents(7951))  # not backwards: passed on
    assert same is not None and w.next_revision == 7952
    later = w._handle(m.WatchEvents(8000))
    assert later is not None and later.revision == 8000 and w.next_revision == 8001
