"""Resource bounds of quorum.api.h2grpc against clients that hold connections or send work
that moves nothing forward: the handshake deadline (slowloris), the idle timeout, and the
token bucket of no-progress frames (empty DATA and CONTINUATION, PRIORITY, SETTINGS, unknown
types, stream errors: the CVE-2019-9518 class). Each limit has a planted-bug twin showing the
same test would fail without it."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from hyperframe.frame import GoAwayFrame, PingFrame

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.h2grpc import connection
from quorum.api.h2grpc.connection import H2Connection
from quorum.api.h2grpc.http1 import Http1Session

from .support import (
    KV_PUT,
    KV_RANGE,
    PREFACE,
    STEP_S,
    WATCH,
    RawClient,
    channel,
    grpc_msg,
    raw_client,
    raw_frame,
    request_headers,
    run,
    serving,
    still_serving,
)

DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4
NO_ERROR, ENHANCE_YOUR_CALM = 0x0, 0xB
OK = 0
QUIET_S = 1.0  # how long a test watches for something that must not happen


def put(key: bytes) -> bytes:
    return grpc_msg(pb.PutRequest(key=key, value=b"v").SerializeToString())


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails after STEP_S)."""
    out = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), STEP_S)
        except ConnectionResetError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


async def still_open(reader: asyncio.StreamReader) -> bool:
    """True if the server has not closed the connection within QUIET_S."""
    try:
        chunk = await asyncio.wait_for(reader.read(65536), QUIET_S)
    except TimeoutError:
        return True
    except ConnectionResetError:
        return False
    assert chunk, "closed"
    return True


# --- the handshake deadline --------------------------------------------------------------------


async def _drip(writer: asyncio.StreamWriter, data: bytes, pause: float) -> None:
    for i in range(len(data)):
        if writer.is_closing():
            return
        writer.write(data[i:i + 1])
        await asyncio.sleep(pause)


Opening = Callable[[asyncio.StreamWriter], Any]

_SLOW_OPENINGS: dict[str, Opening] = {
    "nothing": lambda wr: None,
    "the magic only": lambda wr: wr.write(PREFACE),
    "the magic and half a SETTINGS frame": lambda wr: wr.write(PREFACE + raw_frame(SETTINGS, 0, 0)[:5]),
    "a byte at a time": lambda wr: asyncio.ensure_future(_drip(wr, PREFACE + raw_frame(SETTINGS, 0, 0), 0.2)),
    "an HTTP/1 head never ended": lambda wr: wr.write(b"GET /health HTTP/1.1\r\nHost: x\r\n"),
    "an HTTP/1 head a byte at a time": lambda wr: asyncio.ensure_future(
        _drip(wr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 0.2)),
}


@pytest.mark.parametrize("name", list(_SLOW_OPENINGS))
def test_no_complete_preface_in_time_is_closed(name: str) -> None:
    async def main() -> None:
        async with serving(handshake_timeout=0.3) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            dripping = _SLOW_OPENINGS[name](writer)
            try:
                await closed_by_server(reader)
                for _ in range(100):  # its connection_lost runs within a few loop turns
                    if not s.server.connections:
                        break
                    await asyncio.sleep(0.01)
                assert not s.server.connections
            finally:
                writer.close()
                if isinstance(dripping, asyncio.Future):
                    dripping.cancel()
            await still_serving(s.target)

    run(main)


def test_planted_missing_handshake_deadline_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the timer the silent connection is still open after QUIET_S: the test above
    would fail (it waits for a close that never comes)."""
    monkeypatch.setattr(H2Connection, "_on_timer", lambda self: None)

    async def main() -> None:
        async with serving(handshake_timeout=0.1) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            try:
                assert await still_open(reader)
            finally:
                writer.close()

    run(main)


async def _second_request_left_unfinished(s: Any) -> tuple[bytes, asyncio.StreamReader,
                                                             asyncio.StreamWriter]:
    """One whole HTTP/1 request answered, then the head of a second one that never ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_S)
    length = int(first.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await asyncio.wait_for(reader.readexactly(length), STEP_S)  # the body
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: unfinished
    return first, reader, writer


def test_a_later_http1_request_not_finished_in_time_is_closed() -> None:
    """Keep-alive: each request after the first must arrive whole within the handshake
    deadline, or the client gets 408 and the connection closes."""
    async def main() -> None:
        async with serving(handshake_timeout=0.3, idle_timeout=None) as s:
            first, reader, writer = await _second_request_left_unfinished(s)
            try:
                assert first.startswith(b"HTTP/1.1 404")
                rest = await closed_by_server(reader)
                assert rest.startswith(b"HTTP/1.1 408") and b"Connection: close" in rest
            finally:
                writer.close()
            await still_serving(s.target)

    run(main)


def test_planted_missing_request_deadline_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the per-request timer the unfinished second request holds the connection
    open: the test above would fail."""
    monkeypatch.setattr(Http1Session, "_arm", lambda self: None)

    async def main() -> None:
        async with serving(handshake_timeout=0.1, idle_timeout=None) as s:
            _, reader, writer = await _second_request_left_unfinished(s)
            try:
                assert await still_open(reader)
            finally:
                writer.close()

    run(main)


def test_a_complete_preface_is_not_cut_by_the_handshake_deadline() -> None:
    async def main() -> None:
        async with serving(handshake_timeout=0.1, idle_timeout=None) as s, \
                raw_client(s.port) as c:
            await asyncio.sleep(QUIET_S)  # many handshake periods
            c.call(1, KV_PUT, put(b"later"))
            assert (await c.response(1)).status == OK

    run(main)


def test_preface_not_followed_by_settings_is_refused() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port, preface=False) as c:
            c.send(PREFACE + raw_frame(PING, 0, 0, b"pingpong"))
            goaway = await c.goaway()
            assert goaway.error_code == 0x1  # PROTOCOL_ERROR (RFC 9113 §3.4)

    run(main)


# --- the idle timeout --------------------------------------------------------------------------


def test_idle_connection_gets_goaway_then_close() -> None:
    async def main() -> None:
        async with serving(idle_timeout=0.2) as s, raw_client(s.port) as c:
            c.call(1, KV_PUT, put(b"k"))
            assert (await c.response(1)).status == OK
            goaway = await c.goaway()  # GOAWAY, then the end of the connection
            assert (goaway.error_code, goaway.last_stream_id) == (NO_ERROR, 1)

    run(main)


def test_pings_do_not_keep_an_idle_connection() -> None:
    async def main() -> None:
        async with serving(idle_timeout=0.2) as s, raw_client(s.port) as c:
            async def keepalive() -> None:
                while not c.writer.is_closing():
                    c.send(raw_frame(PING, 0, 0, b"keepaliv"))
                    await asyncio.sleep(0.05)

            pinging = asyncio.ensure_future(keepalive())
            try:
                goaway = await c.goaway()
                assert goaway.error_code == NO_ERROR
            finally:
                pinging.cancel()

    run(main)


def test_an_open_call_is_not_idle() -> None:
    """A watch-like call open for many idle periods keeps its connection; once it ends the
    connection is idle and closed."""

    async def main() -> None:
        async with serving(idle_timeout=0.1) as s, raw_client(s.port) as c:
            c.headers(1, request_headers(WATCH))  # open: the handler waits for requests
            await asyncio.sleep(QUIET_S)
            req = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w", start_revision=7))
            c.data(1, grpc_msg(req.SerializeToString()), end_stream=True)
            resp = await c.response(1)
            assert resp.status == OK
            assert pb.WatchResponse.FromString(resp.messages[0]).watch_id == 7
            goaway = await c.goaway()
            assert goaway.error_code == NO_ERROR

    run(main)


def test_grpcio_client_reconnects_after_an_idle_close() -> None:
    async def main() -> None:
        async with serving(idle_timeout=0.1) as s, channel(s.target) as ch:
            stub = rpc.KVStub(ch)
            await asyncio.wait_for(stub.Put(pb.PutRequest(key=b"a")), STEP_S)
            for _ in range(int(STEP_S / 0.05)):  # until the server closed the idle connection
                if not s.server.connections:
                    break
                await asyncio.sleep(0.05)
            assert not s.server.connections
            got = await asyncio.wait_for(stub.Put(pb.PutRequest(key=b"b")), STEP_S)
            assert got.prev_kv.key == b"b"

    run(main)


def test_idle_http1_keepalive_connection_is_closed() -> None:
    async def main() -> None:
        async with serving(idle_timeout=0.2) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            try:
                writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
                out = await closed_by_server(reader)
                assert out.startswith(b"HTTP/1.1 404 ")  # answered, kept alive, then closed
            finally:
                writer.close()

    run(main)


def test_planted_missing_idle_close_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A timer that forgets to re-arm after the handshake check: the idle connection stays."""
    original = H2Connection._on_timer

    def once(self: H2Connection) -> None:
        original(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    monkeypatch.setattr(H2Connection, "_on_timer", once)

    async def main() -> None:
        async with serving(idle_timeout=0.1, handshake_timeout=0.05) as s, \
                raw_client(s.port) as c:
            c.call(1, KV_PUT, put(b"k"))
            assert (await c.response(1)).status == OK
            assert await still_open(c.reader)

    run(main)


# --- floods of frames that move nothing forward ------------------------------------------------

Flood = Callable[[RawClient], None]
N = 500  # frames per flood: past the test's burst of 100 even if the bucket refills meanwhile


def _empty_data(c: RawClient) -> None:
    c.headers(1, request_headers(WATCH))
    c.send(raw_frame(DATA, 0, 1) * N)


def _empty_continuation(c: RawClient) -> None:
    block = c.encoder.encode(request_headers(WATCH))
    c.send(raw_frame(HEADERS, 0, 1, block) + raw_frame(CONT, 0, 1) * N)


def _priority(c: RawClient) -> None:
    c.send(raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10") * N)


def _settings(c: RawClient) -> None:
    c.send(raw_frame(SETTINGS, 0, 0) * N)


def _unknown_types(c: RawClient) -> None:
    c.send(raw_frame(0x20, 0, 0, b"x") * N)


def _stream_errors(c: RawClient) -> None:
    """Streams opened and made to be reset by the server (a zero window increment on a
    stream), the "MadeYouReset" pattern."""
    for i in range(N):
        sid = 2 * i + 1
        c.headers(sid, request_headers(WATCH))
        c.send(raw_frame(WINDOW, 0, sid, struct.pack(">L", 0)))


def _refused_streams(c: RawClient) -> None:  # the server allows one stream (see below)
    c.headers(1, request_headers(WATCH))
    for i in range(1, N):
        c.headers(2 * i + 1, request_headers(WATCH))


def _huge_settings(c: RawClient) -> None:
    c.send(raw_frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 65_535) * 1000))


_FLOODS = [_empty_data, _empty_continuation, _priority, _settings, _unknown_types,
           _stream_errors, _refused_streams, _huge_settings]


async def flood_outcome(flood: Flood, burst: int = 100, rate: float = 1.0) -> tuple[str, int]:
    """("goaway", code) if the server cut the flooding client off, ("answered", status) if
    a call made after the flood was answered instead."""
    streams = 1 if flood is _refused_streams else 100
    async with serving(flood_burst=burst, flood_rate=rate, max_concurrent_streams=streams) as s:
        async with raw_client(s.port) as c:
            flood(c)
            if flood is _empty_continuation:  # end the header block first
                c.send(raw_frame(CONT, END_HEADERS, 1))
            # frames are handled in order: the PING's answer means the flood was let through
            c.send(raw_frame(PING, 0, 0, b"in order"))
            frame = await c.until(lambda f: isinstance(f, (GoAwayFrame, PingFrame))
                                  and (isinstance(f, GoAwayFrame) or f.opaque_data == b"in order"))
            if isinstance(frame, GoAwayFrame):
                return ("goaway", frame.error_code)
            if flood in (_empty_data, _empty_continuation, _refused_streams):
                c.data(1, b"", end_stream=True)  # end the open call: room for the next one
                assert (await c.response(1)).status == OK
            last = 2 * N + 101
            c.call(last, KV_PUT, put(b"after"))
            resp = await c.response(last)
        await still_serving(s.target)
        return ("answered", resp.status if resp.status is not None else -1)


@pytest.mark.parametrize("flood", _FLOODS, ids=lambda f: f.__name__.lstrip("_"))
def test_flood_is_cut_off_with_enhance_your_calm(flood: Flood) -> None:
    async def main() -> None:
        assert await flood_outcome(flood) == ("goaway", ENHANCE_YOUR_CALM)

    run(main)


@pytest.mark.parametrize("flood", _FLOODS, ids=lambda f: f.__name__.lstrip("_"))
def test_planted_missing_flood_budget_is_caught(flood: Flood,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bucket never charged (and no cap on SETTINGS entries), the same floods go
    unanswered by GOAWAY: the test above tells a server with the limits from one without."""
    monkeypatch.setattr(H2Connection, "_no_progress", lambda self, what: None)
    monkeypatch.setattr(connection, "_MAX_SETTINGS", 1 << 30)

    async def main() -> None:
        assert await flood_outcome(flood) == ("answered", OK)

    run(main)


def test_the_budget_refills_over_time() -> None:
    """Below the burst, then a pause, then below the burst again: never cut off, though the
    two rounds together exceed the burst."""

    async def main() -> None:
        async with serving(flood_burst=20, flood_rate=100.0) as s, raw_client(s.port) as c:
            for sid in (1, 3):
                c.send(raw_frame(PRIORITY, 0, 99, b"\x00\x00\x00\x00\x10") * 15)
                await asyncio.sleep(0.5)  # refills the bucket (at least 20 tokens' time)
                c.call(sid, KV_PUT, put(b"k"))
                assert (await c.response(sid)).status == OK

    run(main)


def test_rapid_reset_by_the_client_costs_no_budget() -> None:
    """A client's RST_STREAM cancels its handler before it runs when both arrive together,
    so a reset costs no more than a call; cancelling is legitimate, so it is not charged."""

    async def main() -> None:
        async with serving(flood_burst=1, flood_rate=0.0) as s, raw_client(s.port) as c:
            body = grpc_msg(pb.RangeRequest(key=b"sleep").SerializeToString())
            block = c.encoder.encode(request_headers(KV_RANGE))
            burst = b"".join(
                raw_frame(HEADERS, END_HEADERS, 2 * i + 1, block)
                + raw_frame(DATA, END_STREAM, 2 * i + 1, body)
                + raw_frame(RST, 0, 2 * i + 1, struct.pack(">L", 0x8)) for i in range(1000))
            c.send(burst)
            c.call(2001, KV_PUT, put(b"after"))
            assert (await c.response(2001)).status == OK
            (conn,) = s.server.connections
            assert conn.streams == {}

    run(main)


def test_grpcio_traffic_spends_no_budget() -> None:
    """A real client's calls of every kind on one connection with a budget of one token:
    its SETTINGS is the only frame charged."""

    async def main() -> None:
        async with serving(flood_burst=1, flood_rate=0.0) as s, channel(s.target) as ch:
            kv = rpc.KVStub(ch)
            for i in range(50):
                await asyncio.wait_for(kv.Put(pb.PutRequest(key=b"k%d" % i)), STEP_S)
            call = rpc.WatchStub(ch).Watch()
            for i in range(20):
                await call.write(pb.WatchRequest(
                    create_request=pb.WatchCreateRequest(key=b"w", start_revision=i)))
                got = await asyncio.wait_for(call.read(), STEP_S)
                assert got.watch_id == i
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
            assert len(s.server.connections) == 1

    run(main)
