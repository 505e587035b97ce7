"""Writes answered from a callback waiter (a backend with ``submit_write``, as a Raft node's
ClusterBackend): answers, typed errors, a connection lost while writes wait, and the
requests that must keep the coroutine path."""

from __future__ import annotations

import asyncio
from typing import Any

from quorum.api.local import LocalBackend
from quorum.api.native import messages as m
from quorum.api.native.server import serve_native
from quorum.errors import LeaderChanged
from quorum.state.commands import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    TxnRequest,
    TxnResponse,
)

from .test_server import RawConn, run


class _CallbackBackend(LocalBackend):
    """A LocalBackend that also takes writes with a waiter; the test decides when the
    parked writes complete (``release``) or fail (``fail_all``)."""

    def __init__(self) -> None:
        super().__init__()
        self.parked: list[tuple[Any, int, int, Any]] = []
        self.coroutine_writes = 0

    def submit_write(self, request: Any, session: int, seq: int, waiter: Any) -> None:
        self.parked.append((request, session, seq, waiter))

    async def write(self, request: Any, session_id: int = 0, seq: int = 0) -> Any:
        self.coroutine_writes += 1
        return await super().write(request, session_id, seq)

    async def release(self) -> None:
        parked, self.parked = self.parked, []
        for request, session, seq, waiter in parked:
            waiter.resolve(await super().write(request, session, seq))

    def fail_all(self, exc: BaseException) -> None:
        parked, self.parked = self.parked, []
        for *_, waiter in parked:
            waiter.fail(exc)


async def _wait_parked(backend: _CallbackBackend, n: int) -> None:
    while len(backend.parked) < n:
        await asyncio.sleep(0.001)


def test_puts_and_deletes_are_answered_by_their_waiters() -> None:
    async def body() -> None:
        backend = _CallbackBackend()
        server = await serve_native(backend, "127.0.0.1", 0)
        conn = await RawConn.open(server)
        conn.send(*(m.Request(i, PutRequest(b"k%d" % i, b"v")) for i in range(1, 101)),
                  m.Request(101, DeleteRangeRequest(b"k1")))
        await _wait_parked(backend, 101)
        (served,) = server.connections
        assert len(served._inflight) == 101  # counted for back-pressure while they wait
        await backend.release()
        answers = await conn.answers(101)
        assert sorted(a.id for a in answers) == list(range(1, 102))
        by_id = {a.id: a.body for a in answers}
        assert all(isinstance(by_id[i], PutResponse) for i in range(1, 101))
        assert isinstance(by_id[101], DeleteRangeResponse) and by_id[101].deleted == 1
        assert not served._inflight and backend.coroutine_writes == 0
        await server.close()

    run(body())


def test_a_failed_write_gets_its_typed_error_and_a_second_outcome_is_dropped() -> None:
    async def body() -> None:
        backend = _CallbackBackend()
        server = await serve_native(backend, "127.0.0.1", 0)
        conn = await RawConn.open(server)
        conn.send(m.Request(7, PutRequest(b"k", b"v")))
        await _wait_parked(backend, 1)
        waiter = backend.parked[0][3]
        backend.fail_all(LeaderChanged("leader changed; outcome unknown"))
        waiter.resolve(PutResponse(5))  # a late second outcome must not answer again
        conn.send(m.Request(8, RangeRequest(b"k")))
        answers = await conn.answers(2)
        assert [a.id for a in answers] == [7, 8]
        assert isinstance(answers[0].body, m.ErrorResp)
        assert answers[0].body.code == "LeaderChanged"
        await server.close()

    run(body())


def test_connection_lost_while_writes_wait_drops_their_answers() -> None:
    async def body() -> None:
        backend = _CallbackBackend()
        server = await serve_native(backend, "127.0.0.1", 0)
        conn = await RawConn.open(server)
        conn.send(*(m.Request(i, PutRequest(b"k", b"v")) for i in range(1, 4)))
        await _wait_parked(backend, 3)
        (served,) = server.connections
        conn.writer.transport.abort()
        for _ in range(5000):
            if not server.connections:
                break
            await asyncio.sleep(0.001)
        assert not served._inflight
        await backend.release()  # the writes still apply; nothing is sent, nothing raises
        other = await RawConn.open(server)
        other.send(m.Request(1, RangeRequest(b"k")))
        (answer,) = await other.answers(1)
        assert answer.body.kvs[0].value == b"v"  # type: ignore[union-attr]
        await server.close()

    run(body())


def test_txns_keep_the_coroutine_path() -> None:
    """A txn may only read (then it is a linearizable read, not a write): it is dispatched
    as before, never handed to submit_write."""

    async def body() -> None:
        backend = _CallbackBackend()
        server = await serve_native(backend, "127.0.0.1", 0)
        conn = await RawConn.open(server)
        cmp = Compare(b"k", CompareTarget.VERSION, CompareResult.EQUAL, 0)
        conn.send(m.Request(1, TxnRequest((cmp,), (PutRequest(b"k", b"t"),), ())))
        (answer,) = await conn.answers(1)
        assert isinstance(answer.body, TxnResponse) and answer.body.succeeded
        assert backend.coroutine_writes == 1 and not backend.parked
        await server.close()

    run(body())
