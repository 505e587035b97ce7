"""The blocking facade: same calls, same typed errors, watches as iterators."""

from __future__ import annotations

import asyncio
import threading

import pytest

from quorum.api.local import LocalBackend
from quorum.api.native.server import NativeServer, serve_native
from quorum.client import Client
from quorum.client import txn as t
from quorum.errors import FutureRevision


class BackgroundServer:
    """A LocalBackend served from its own thread and loop (the test thread blocks)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: NativeServer = asyncio.run_coroutine_threadsafe(
            serve_native(LocalBackend(), "127.0.0.1", 0), self.loop
        ).result()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture
def server() -> BackgroundServer:
    srv = BackgroundServer()
    yield srv  # type: ignore[misc]
    srv.close()


def test_sync_kv_txn_and_errors(server: BackgroundServer) -> None:
    with Client([server.server.endpoint], timeout_s=5) as c:
        put = c.put(b"k", b"v")
        assert c.get(b"k").value == b"v"
        resp = c.txn([t.value(b"k") == b"v"], [t.put(b"k", b"w")])
        assert resp.succeeded and resp.revision == put.revision + 1
        assert c.range(b"k", count_only=True).count == 1
        with pytest.raises(FutureRevision):
            c.get(b"k", revision=10_000)
        assert c.delete(b"k").deleted == 1
        with pytest.raises(AttributeError):
            c.no_such_method  # noqa: B018


def test_sync_watch_iterator(server: BackgroundServer) -> None:
    with Client([server.server.endpoint], timeout_s=5) as c:
        w = c.watch(b"s/", prefix=True)
        for i in range(3):
            c.put(b"s/%d" % i, b"x")
        events = []
        for event in w.events():
            events.append(event.kv.key)
            if len(events) == 3:
                break
        assert events == [b"s/0", b"s/1", b"s/2"]
        w.cancel()


def test_sync_calls_from_several_threads(server: BackgroundServer) -> None:
    with Client([server.server.endpoint], timeout_s=5) as c:
        def work(i: int) -> None:
            for j in range(20):
                c.put(b"t/%d/%d" % (i, j), b"")

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert c.range(b"t/", prefix=True, count_only=True).count == 80


def test_recipes_run_through_the_sync_client(server: BackgroundServer) -> None:
    from quorum.client.recipes import Lock

    with Client([server.server.endpoint], timeout_s=5) as c:
        lock = Lock(c.aio, "sync")
        token = c.run(lock.acquire())
        assert token > 0 and c.run(lock.is_held())
        c.run(lock.release())
        assert not c.run(lock.is_held())


def test_run_from_the_loop_thread_is_refused_not_deadlocked(server: BackgroundServer) -> None:
    from quorum.errors import UsageError

    with Client([server.server.endpoint], timeout_s=5) as c:

        async def reenter() -> None:
            c.run(c.aio.get(b"k"))

        with pytest.raises(UsageError):
            c.run(reenter())
