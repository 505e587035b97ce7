"""The native server over raw sockets: pipelining, out-of-order answers, bad input."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import msgspec
import pytest

from quorum.api.local import LocalBackend
from quorum.api.native import messages as m
from quorum.api.native.dispatch import BackendDispatcher
from quorum.api.native.framing import FrameDecoder, frame
from quorum.api.native.server import NativeServer, serve_native
from quorum.state.commands import PutRequest, PutResponse, RangeRequest, RangeResponse

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(m.Response)


def run(coro: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


class RawConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()

    @classmethod
    async def open(cls, server: NativeServer) -> RawConn:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    def send(self, *reqs: m.Request) -> None:
        self.writer.write(b"".join(frame(ENC.encode(r)) for r in reqs))

    async def answers(self, n: int) -> list[m.Response]:
        out: list[m.Response] = []
        while len(out) < n:
            data = await self.reader.read(65536)
            assert data, "connection closed early"
            out += [DEC.decode(b) for b in self.decoder.feed(data)]
        return out

    async def closed_by_server(self) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(), 5) == b""
        except ConnectionResetError:
            return True


async def _served(dispatcher_factory: Any = None) -> NativeServer:
    backend = LocalBackend()
    kwargs = {"dispatcher_factory": dispatcher_factory} if dispatcher_factory else {}
    return await serve_native(backend, "127.0.0.1", 0, max_frame_bytes=4096, **kwargs)


def test_pipelined_requests_all_answered_in_one_connection() -> None:
    async def body() -> None:
        server = await _served()
        conn = await RawConn.open(server)
        conn.send(*(m.Request(i, PutRequest(b"k%d" % i, b"v")) for i in range(1, 501)))
        answers = await conn.answers(500)
        assert sorted(a.id for a in answers) == list(range(1, 501))
        assert all(isinstance(a.body, PutResponse) for a in answers)
        # every put got its own revision: nothing applied twice or lost
        assert sorted(a.body.revision for a in answers) == list(range(2, 502))  # type: ignore[union-attr]
        await server.close()

    run(body())


class SlowWrites(BackendDispatcher):
    """Writes wait for a gate; reads do not: answers must come back out of order."""

    gate: asyncio.Event

    def handle(self, body: Any, session: int, seq: int, serializable: bool = False) -> Any:
        if isinstance(body, PutRequest):
            return self._gated(body, session, seq, serializable)
        return super().handle(body, session, seq, serializable)

    async def _gated(self, body: Any, session: int, seq: int, serializable: bool) -> Any:
        await self.gate.wait()
        return await super().handle(body, session, seq, serializable)


def test_answers_come_back_out_of_order() -> None:
    async def body() -> None:
        gate = asyncio.Event()

        def factory(backend: Any) -> SlowWrites:
            d = SlowWrites(backend)
            d.gate = gate
            return d

        server = await _served(factory)
        conn = await RawConn.open(server)
        conn.send(m.Request(1, PutRequest(b"a", b"1")), m.Request(2, RangeRequest(b"a")))
        first = (await conn.answers(1))[0]
        assert first.id == 2 and isinstance(first.body, RangeResponse) and not first.body.kvs
        gate.set()
        second = (await conn.answers(1))[0]
        assert second.id == 1 and isinstance(second.body, PutResponse)
        await server.close()

    run(body())


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("garbage", frame(b"\xc1\xff not msgpack"), "undecodable request"),
        ("wrong shape", frame(ENC.encode({"id": 1})), "undecodable request"),
        ("unknown tag", frame(ENC.encode([1, ["no.such", 1]])), "undecodable request"),
        ("oversized", (10**6).to_bytes(4, "big") + b"x" * 10, "bad frame"),
    ],
    ids=["garbage", "wrong-shape", "unknown-tag", "oversized"],
)
def test_bad_frames_close_only_that_connection(
    name: str, payload: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        server = await _served()
        good = await RawConn.open(server)
        bad = await RawConn.open(server)
        bad.writer.write(payload)
        assert await bad.closed_by_server(), name
        good.send(m.Request(7, PutRequest(b"still", b"served")))
        (answer,) = await good.answers(1)
        assert answer.id == 7 and isinstance(answer.body, PutResponse)
        await server.close()

    with caplog.at_level(logging.WARNING, logger="quorum.api.native"):
        run(body())
    assert any(reason in r.getMessage() for r in caplog.records)


def test_truncated_frame_at_eof_is_logged_and_others_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def body() -> None:
        server = await _served()
        bad = await RawConn.open(server)
        bad.writer.write(frame(ENC.encode(m.Request(1, PutRequest(b"x", b"y"))))[:-3])
        bad.writer.write_eof()
        assert await bad.closed_by_server()
        good = await RawConn.open(server)
        good.send(m.Request(2, RangeRequest(b"x")))
        (answer,) = await good.answers(1)
        assert isinstance(answer.body, RangeResponse) and not answer.body.kvs  # never applied
        await server.close()

    with caplog.at_level(logging.WARNING, logger="quorum.api.native"):
        run(body())
    assert any("truncated frame" in r.getMessage() for r in caplog.records)


def test_typed_error_answer_keeps_the_connection() -> None:
    async def body() -> None:
        server = await _served()
        conn = await RawConn.open(server)
        conn.send(m.Request(1, RangeRequest(b"k", revision=99)), m.Request(2, RangeRequest(b"k")))
        answers = {a.id: a.body for a in await conn.answers(2)}
        assert isinstance(answers[1], m.ErrorResp) and answers[1].code == "FutureRevision"
        assert isinstance(answers[2], RangeResponse)
        await server.close()

    run(body())


def test_watch_stream_under_the_create_id() -> None:
    async def body() -> None:
        server = await _served()
        conn = await RawConn.open(server)
        conn.send(m.Request(100, m.WatchCreateReq(b"w")))
        (created,) = await conn.answers(1)
        assert created.id == 100 and isinstance(created.body, m.WatchCreated)
        conn.send(m.Request(1, PutRequest(b"w", b"1")), m.Request(2, PutRequest(b"other", b"")))
        got = await conn.answers(3)
        events = [a for a in got if a.id == 100]
        assert len(events) == 1 and isinstance(events[0].body, m.WatchEvents)
        assert events[0].body.events[0].kv.value == b"1"
        conn.send(m.Request(3, m.WatchCancelReq(100)))
        got = await conn.answers(2)
        assert {(a.id, type(a.body)) for a in got} == {
            (100, m.WatchCanceled), (3, m.WatchCanceled),
        }
        conn.send(m.Request(4, m.WatchCancelReq(100)))
        (again,) = await conn.answers(1)
        assert isinstance(again.body, m.ErrorResp) and again.body.code == "WatchNotFound"
        await server.close()

    run(body())


async def _unread_watch_buffer(value_bytes: int, puts: int) -> int:
    """Bytes the server holds for a watcher that never reads, after ``puts`` big writes."""
    backend = LocalBackend()
    server = await serve_native(backend, "127.0.0.1", 0)
    conn = await RawConn.open(server)
    conn.send(m.Request(1, m.WatchCreateReq(b"big")))
    await conn.answers(1)  # created; from now on the client reads nothing
    value = b"v" * value_bytes
    for _ in range(puts):
        await backend.write(PutRequest(b"big", value))
        await asyncio.sleep(0)  # let the watch pump run
    for _ in range(50):
        await asyncio.sleep(0.001)
    (served,) = server.connections
    held = served._transport.get_write_buffer_size() + len(served._out)  # type: ignore[union-attr]
    await server.close()
    return held


def test_watch_pump_stops_while_the_client_does_not_read() -> None:
    held = run(_unread_watch_buffer(64 * 1024, 400))  # 25 MiB of events produced
    assert held < 4 * 1024 * 1024


def test_planted_bug_without_write_back_pressure_the_buffer_grows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quorum.api.native import server as server_mod

    monkeypatch.setattr(server_mod._Connection, "pause_writing", lambda self: None)
    held = run(_unread_watch_buffer(64 * 1024, 400))
    assert held > 8 * 1024 * 1024


def test_client_gone_while_a_request_waits_cancels_it_cleanly() -> None:
    async def body() -> None:
        gate = asyncio.Event()

        def factory(backend: Any) -> SlowWrites:
            d = SlowWrites(backend)
            d.gate = gate
            return d

        backend = LocalBackend()
        server = await serve_native(backend, "127.0.0.1", 0, dispatcher_factory=factory)
        conn = await RawConn.open(server)
        conn.send(m.Request(1, PutRequest(b"never", b"applied")))
        while not server.connections or not next(iter(server.connections))._inflight:
            await asyncio.sleep(0.001)  # the put is parked at the gate, waiting on its future
        (served,) = server.connections
        conn.writer.transport.abort()
        for _ in range(5000):  # the loss cancels what waits (bounded by the test's timeout)
            if not served._inflight:
                break
            await asyncio.sleep(0.001)
        assert not served._inflight
        gate.set()
        await asyncio.sleep(0.01)  # a parked put that had survived would resume here
        other = await RawConn.open(server)
        other.send(m.Request(2, RangeRequest(b"never")))
        (answer,) = await other.answers(1)
        assert isinstance(answer.body, RangeResponse) and not answer.body.kvs
        await server.close()

    run(body())


class _GatedRaft:
    """Stands in for a node's RaftServer: ``read_barrier`` waits for the test's gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0
        self.error: Exception | None = None

    async def read_barrier(self) -> int:
        self.calls += 1
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return 0


class _BarrierBackend(LocalBackend):
    def __init__(self) -> None:
        super().__init__()
        self.server = _GatedRaft()


def test_reads_of_one_socket_read_share_a_barrier_and_wait_for_it() -> None:
    """50 linearizable gets sent in one write: one barrier (not 50), and no answer before it
    completes: a write committed while they waited is visible to every one of them. A
    serializable get in the same write is answered without waiting."""

    async def body() -> None:
        backend = _BarrierBackend()
        server = await serve_native(backend, "127.0.0.1", 0)
        conn = await RawConn.open(server)
        conn.send(*(m.Request(i, RangeRequest(b"k")) for i in range(1, 51)),
                  m.Request(99, RangeRequest(b"k"), serializable=True))
        early = await conn.answers(1)
        assert [a.id for a in early] == [99] and not early[0].body.kvs  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        assert 1 <= backend.server.calls <= 2  # one socket read, maybe two: not one per read
        await backend.write(PutRequest(b"k", b"committed before the barrier returned"))
        backend.server.gate.set()
        answers = await conn.answers(50)
        assert sorted(a.id for a in answers) == list(range(1, 51))
        assert all(isinstance(a.body, RangeResponse) and a.body.kvs for a in answers)
        await server.close()

    run(body())


def test_a_failed_shared_barrier_fails_every_read_of_the_batch() -> None:
    async def body() -> None:
        from quorum.errors import NoLeader

        backend = _BarrierBackend()
        backend.server.error = NoLeader("no leader")
        backend.server.gate.set()
        server = await serve_native(backend, "127.0.0.1", 0)
        conn = await RawConn.open(server)
        conn.send(*(m.Request(i, RangeRequest(b"k")) for i in range(1, 11)))
        answers = await conn.answers(10)
        assert all(isinstance(a.body, m.ErrorResp) and a.body.code == "NoLeader" for a in answers)
        await server.close()

    run(body())
