"""Failover across endpoints and exactly-once write retries."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from quorum.api.local import LocalBackend
from quorum.api.native import messages as m
from quorum.api.native.dispatch import BackendDispatcher
from quorum.api.native.server import serve_native
from quorum.client import AsyncClient
from quorum.errors import NoEndpointAvailable, NotLeader, RequestTimeout
from quorum.state.commands import PutRequest

from .helpers import LossyProxy, run, serving


def _dead_endpoint() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_skips_dead_endpoints() -> None:
    async def body() -> None:
        async with serving() as env:
            c = AsyncClient([_dead_endpoint(), _dead_endpoint(), env.endpoint], timeout_s=5)
            env.clients.append(c)
            await c.put(b"k", b"v")
            assert c.endpoint == env.endpoint

    run(body())


def test_no_endpoint_available_is_typed() -> None:
    async def body() -> None:
        c = AsyncClient([_dead_endpoint()], timeout_s=0.3, connect_timeout_s=0.1)
        with pytest.raises(NoEndpointAvailable):
            await c.put(b"k", b"v")
        await c.close()

    run(body())


class CrashOnPut(BackendDispatcher):
    """Stands in for a node that dies right after receiving a put: it never answers, drops
    every connection and stops listening (the put may have been replicated: unknown)."""

    server: Any = None
    tasks: set[asyncio.Task[None]] = set()

    def handle(self, body: Any, session: int, seq: int, serializable: bool = False) -> Any:
        if isinstance(body, PutRequest):
            loop = asyncio.get_running_loop()
            CrashOnPut.tasks.add(loop.create_task(CrashOnPut.server.close()))
            return loop.create_future()  # never resolved
        return super().handle(body, session, seq, serializable)


def test_a_write_sent_before_every_endpoint_vanished_has_an_unknown_outcome() -> None:
    """The put reached the server, then no endpoint could be reached until the deadline: the
    put may have been applied (a killed leader may have replicated it), so the client must
    report an unknown outcome (RequestTimeout), never NoEndpointAvailable, which callers
    read as "nothing was sent"."""

    async def body() -> None:
        server = await serve_native(LocalBackend(), "127.0.0.1", 0,
                                    dispatcher_factory=CrashOnPut)
        CrashOnPut.server = server
        c = AsyncClient([server.endpoint], timeout_s=1.0, connect_timeout_s=0.1)
        with pytest.raises(RequestTimeout):
            await c.put(b"k", b"v")
        await c.close()

    run(body())


class Follower(BackendDispatcher):
    """Answers every request with NotLeader, naming the leader's endpoint."""

    leader_endpoint = ""
    refused = 0

    def handle(self, body: Any, session: int, seq: int, serializable: bool = False) -> Any:
        Follower.refused += 1
        err = NotLeader("not the leader", leader_id=1)
        err.leader_endpoint = Follower.leader_endpoint  # type: ignore[attr-defined]
        raise err


def test_not_leader_hint_redirects_to_the_leader() -> None:
    async def body() -> None:
        async with serving() as env:
            Follower.leader_endpoint = f"http://{env.endpoint}"  # URLs are normalised
            follower = await serve_native(env.backend, "127.0.0.1", 0, dispatcher_factory=Follower)
            c = AsyncClient([follower.endpoint], timeout_s=5)
            env.clients.append(c)
            put = await c.put(b"k", b"v")
            assert Follower.refused >= 1
            assert c.endpoint == env.endpoint and c.failovers >= 1
            assert (await c.get(b"k")) is not None and put.revision > 0
            await follower.close()

    run(body())


class SilentFollower(BackendDispatcher):
    """NotLeader with only the leader's id; the member list tells where that leader is."""

    leader_endpoint = ""

    def handle(self, body: Any, session: int, seq: int, serializable: bool = False) -> Any:
        if isinstance(body, m.MemberListReq):
            return self._members()
        raise NotLeader("not the leader", leader_id=7)

    async def _members(self) -> m.MemberListResp:
        leader = m.Member(7, "leader", client_urls=(f"http://{self.leader_endpoint}",))
        return m.MemberListResp((m.Member(2, "me"), leader))


def test_leader_id_hint_is_resolved_through_the_member_list() -> None:
    async def body() -> None:
        async with serving() as env:
            SilentFollower.leader_endpoint = env.endpoint
            follower = await serve_native(
                env.backend, "127.0.0.1", 0, dispatcher_factory=SilentFollower
            )
            c = AsyncClient([follower.endpoint, _dead_endpoint()], timeout_s=5)
            env.clients.append(c)
            await c.put(b"k", b"v")
            assert c.endpoint == env.endpoint and env.endpoint in c.endpoints
            await follower.close()

    run(body())


def test_reconnects_after_server_restart() -> None:
    async def body() -> None:
        async with serving() as env:
            port = env.server.port
            c = env.client(timeout_s=5)
            await c.put(b"a", b"1")
            await env.server.close()
            env.server = await serve_native(env.backend, "127.0.0.1", port)
            await c.put(b"a", b"2")
            kv = await c.get(b"a")
            assert kv is not None and kv.value == b"2" and kv.version == 2

    run(body())


async def _lost_answer_scenario(env: Any) -> tuple[int, int]:
    """Put once through a proxy that loses the answer; return (version, proxy drops)."""
    proxy = LossyProxy(env.server.port)
    await proxy.start()
    c = AsyncClient([proxy.endpoint], timeout_s=5, retry_backoff_s=0.01)
    env.clients.append(c)
    await c.put(b"warmup", b"")  # session opened, connection up
    proxy.drop_next_answer = True
    await c.put(b"counter", b"x")  # applied, answer lost, retried
    kv = await c.get(b"counter")
    await proxy.close()
    assert kv is not None
    return kv.version, proxy.dropped


def test_retry_after_lost_answer_is_applied_once() -> None:
    async def body() -> None:
        async with serving() as env:
            version, dropped = await _lost_answer_scenario(env)
            assert dropped == 1  # the answer really was lost, the retry happened
            assert version == 1  # ...and the state machine applied the put once

    run(body())


def test_planted_bug_retry_without_session_is_applied_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above can fail: a client that retries writes outside their session
    (a fresh command each time) applies the lost-answer put twice."""

    async def sessionless(self: AsyncClient, body: Any, deadline: float) -> Any:
        return await self._attempts(body, 0, 0, False, deadline)

    monkeypatch.setattr(AsyncClient, "_session_write", sessionless)

    async def body() -> None:
        async with serving() as env:
            version, dropped = await _lost_answer_scenario(env)
            assert dropped == 1 and version == 2

    run(body())


def test_timeout_is_typed_and_client_stays_usable() -> None:
    async def body() -> None:
        async with serving() as env:
            gate = asyncio.Event()

            class Stuck(BackendDispatcher):
                def handle(self, body: Any, *args: Any) -> Any:
                    return self._stuck(super().handle(body, *args))

                async def _stuck(self, inner: Any) -> Any:
                    await gate.wait()
                    return await inner

            stuck = await serve_native(env.backend, "127.0.0.1", 0, dispatcher_factory=Stuck)
            c = AsyncClient([stuck.endpoint], timeout_s=0.2)
            env.clients.append(c)
            with pytest.raises(RequestTimeout):
                await c.get(b"k")
            gate.set()
            assert await c.get(b"k") is None
            await stuck.close()

    run(body())


def test_pipelining_many_concurrent_requests() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client(timeout_s=20)
            n = 2000
            puts = await asyncio.gather(*(c.put(b"p/%05d" % i, b"%d" % i) for i in range(n)))
            revisions = sorted(p.revision for p in puts)
            assert revisions == list(range(revisions[0], revisions[0] + n))  # each applied once
            gets = await asyncio.gather(*(c.get(b"p/%05d" % i) for i in range(n)))
            assert [g.value for g in gets if g is not None] == [b"%d" % i for i in range(n)]
            assert len(env.server.connections) == 1  # all of it over one connection
            counted = await c.range(b"p/", prefix=True, count_only=True)
            assert counted.count == n

    run(body())


def test_many_requests_in_flight_during_a_connection_loss_all_complete() -> None:
    async def body() -> None:
        async with serving() as env:
            port = env.server.port
            c = AsyncClient([_dead_endpoint(), env.endpoint, _dead_endpoint()], timeout_s=10)
            env.clients.append(c)
            await c.put(b"w", b"0")

            async def restart() -> None:
                await env.server.close()
                env.server = await serve_native(env.backend, "127.0.0.1", port)

            puts = [c.put(b"many/%d" % i, b"x") for i in range(300)]
            results = await asyncio.gather(restart(), *puts)
            assert all(r is not None for r in results[1:])
            counted = await c.range(b"many/", prefix=True, count_only=True)
            assert counted.count == 300
            kvs = (await c.range(b"many/", prefix=True)).kvs
            assert all(kv.version == 1 for kv in kvs)  # each put applied exactly once
            assert 1 <= c.failovers <= 3  # one failover per lost connection, not per request

    run(body())


def test_close_ends_the_clients_sessions_on_the_server() -> None:
    async def body() -> None:
        async with serving() as env:
            c = AsyncClient([env.endpoint], timeout_s=5)
            await asyncio.gather(*(c.put(b"s/%d" % i, b"") for i in range(20)))
            table = env.backend.state_machine.sessions.sessions
            opened = len(table)
            assert 1 <= opened <= 20
            await c.close()
            assert len(table) == 0  # no session left behind for eviction to clean up

    run(body())


def test_session_evicted_between_writes_is_replaced_transparently() -> None:
    async def body() -> None:
        async with serving() as env:
            c = env.client()
            await c.put(b"e", b"1")
            env.backend.state_machine.sessions.sessions.clear()  # as if evicted (LRU)
            await c.put(b"e", b"2")  # first attempt: SessionNotFound -> new session
            kv = await c.get(b"e")
            assert kv is not None and kv.value == b"2" and kv.version == 2

    run(body())


def test_connections_are_opened_through_the_injected_connector() -> None:
    from quorum.client.connection import Connection, open_connection

    opened: list[str] = []

    async def connector(endpoint: str, timeout_s: float, max_frame: int) -> Connection:
        opened.append(endpoint)
        return await open_connection(endpoint, timeout_s, max_frame)

    async def body() -> None:
        async with serving() as env:
            dead = _dead_endpoint()
            c = AsyncClient([dead, env.endpoint], timeout_s=5, connector=connector)
            env.clients.append(c)
            await c.put(b"k", b"v")
            assert opened == [dead, env.endpoint]

    run(body())


def test_garbage_from_a_server_makes_the_client_move_on() -> None:
    async def body() -> None:
        async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1")  # a frame that is not msgpack
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        bad = await asyncio.start_server(babble, "127.0.0.1", 0)
        bad_endpoint = f"127.0.0.1:{bad.sockets[0].getsockname()[1]}"
        async with serving() as env:
            c = AsyncClient([bad_endpoint, env.endpoint], timeout_s=5, retry_backoff_s=0.01)
            env.clients.append(c)
            await c.put(b"k", b"v")
            assert c.endpoint == env.endpoint and c.failovers >= 1
        bad.close()

    run(body())


async def _silent_server_scenario(env: Any, dead_after_s: float, timeout_s: float = 3) -> int:
    """Connected through a proxy that goes silent (a paused server keeps its TCP connection
    open); return the put's version once it succeeded elsewhere."""
    proxy = LossyProxy(env.server.port)
    await proxy.start()
    c = AsyncClient(
        [proxy.endpoint, env.endpoint], timeout_s=timeout_s, dead_after_s=dead_after_s,
        retry_backoff_s=0.01,
    )
    env.clients.append(c)
    await c.put(b"warm", b"")
    proxy.blackhole = True
    await c.put(b"silent", b"x")
    kv = await c.get(b"silent")
    await proxy.close()
    assert kv is not None and c.endpoint == env.endpoint
    return kv.version


def test_a_silent_server_is_abandoned_before_the_deadline() -> None:
    async def body() -> None:
        async with serving() as env:
            assert await _silent_server_scenario(env, dead_after_s=0.3) == 1

    run(body())


def test_planted_bug_without_silence_detection_the_call_times_out() -> None:
    async def body() -> None:
        async with serving() as env:
            with pytest.raises(RequestTimeout):
                await _silent_server_scenario(env, dead_after_s=float("inf"), timeout_s=1)

    run(body(), timeout_s=20)


class CountingMembers(BackendDispatcher):
    """Membership changes are counted and always succeed (LocalBackend has no members)."""

    adds = 0

    async def _member_add(self, body: Any, *_: Any) -> m.ResponseBody:
        CountingMembers.adds += 1
        return m.MemberChangeResp((), m.Member(CountingMembers.adds, "new"))


async def _member_add_with_lost_answer(env: Any) -> None:
    CountingMembers.adds = 0
    counted = await serve_native(env.backend, "127.0.0.1", 0, dispatcher_factory=CountingMembers)
    proxy = LossyProxy(counted.port)
    await proxy.start()
    c = AsyncClient([proxy.endpoint], timeout_s=5, retry_backoff_s=0.01)
    env.clients.append(c)
    await c.status()  # connected
    proxy.drop_next_answer = True
    try:
        await c.member_add(["http://10.0.0.1:2380"])
    finally:
        await proxy.close()
        await counted.close()


def test_membership_change_with_a_lost_answer_is_not_resent() -> None:
    from quorum.errors import ConnectionLost

    async def body() -> None:
        async with serving() as env:
            with pytest.raises(ConnectionLost):
                await _member_add_with_lost_answer(env)
            assert CountingMembers.adds == 1  # applied once; the caller learns it is unknown

    run(body())


def test_planted_bug_resending_a_membership_change_applies_it_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quorum.client import aio

    monkeypatch.setattr(aio, "AT_MOST_ONCE", ())

    async def body() -> None:
        async with serving() as env:
            await _member_add_with_lost_answer(env)
            assert CountingMembers.adds == 2

    run(body())
