"""quorum.api.h2grpc against what grpcio never sends: hand-made frames and the ``h2`` library's
client. Connection errors must end in GOAWAY with the RFC 9113 code, and the server must go
on answering a normal grpcio call on a new connection; call errors end with a gRPC status
and leave the connection usable."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import socket
import struct
from collections.abc import Callable

import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from hyperframe.frame import (
    GoAwayFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb

from .support import (
    KV_PUT,
    KV_RANGE,
    PREFACE,
    SNAPSHOT,
    SNAPSHOT_CHUNK,
    STEP_S,
    WATCH,
    H2Client,
    RawClient,
    blob,
    grpc_msg,
    raw_client,
    raw_frame,
    request_headers,
    run,
    serving,
    split_messages,
    still_serving,
)

DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x4, 0x8, 0x20
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x1, 0x3, 0x6
REFUSED_STREAM, COMPRESSION_ERROR = 0x7, 0x9
OK, UNKNOWN, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 2, 8, 12, 13


def put(key: bytes, value: bytes = b"v") -> bytes:
    return grpc_msg(pb.PutRequest(key=key, value=value).SerializeToString())


def block(client: RawClient, path: str = KV_PUT, **extra: str) -> bytes:
    return client.encoder.encode(request_headers(path, **extra))


# --- connection errors --------------------------------------------------------------------

Attack = Callable[[RawClient], None]


def _headers_on_even(c: RawClient) -> None:
    c.headers(2, request_headers(KV_PUT))


def _data_on_stream_0(c: RawClient) -> None:
    c.send(raw_frame(DATA, 0, 0, b"x"))


def _bad_hpack(c: RawClient) -> None:
    c.send(raw_frame(HEADERS, END_HEADERS, 1, b"\xbe"))  # dynamic index 62: table is empty


def _truncated_hpack(c: RawClient) -> None:
    c.send(raw_frame(HEADERS, END_HEADERS, 1, b"\x00\x85abc"))  # name of 5 bytes, 3 sent


def _continuation_alone(c: RawClient) -> None:
    c.send(raw_frame(CONT, END_HEADERS, 1, block(c)))


def _continuation_interrupted(c: RawClient) -> None:
    b = block(c)
    c.send(raw_frame(HEADERS, 0, 1, b[:4]) + raw_frame(DATA, 0, 1, put(b"k")))


def _continuation_other_stream(c: RawClient) -> None:
    b = block(c)
    c.send(raw_frame(HEADERS, 0, 1, b[:4]) + raw_frame(CONT, END_HEADERS, 3, b[4:]))


def _padding_too_long(c: RawClient) -> None:
    c.headers(1, request_headers(KV_PUT))
    c.send(raw_frame(DATA, PADDED | END_STREAM, 1, b"\x09" + put(b"k")[:8]))


def _push_promise(c: RawClient) -> None:
    c.send(raw_frame(PUSH, END_HEADERS, 1, b"\x00\x00\x00\x02" + block(c)))


def _ping_of_wrong_size(c: RawClient) -> None:
    c.send(raw_frame(PING, 0, 0, b"1234567"))


def _settings_on_a_stream(c: RawClient) -> None:
    c.send(raw_frame(SETTINGS, 0, 1, b""))


def _window_update_of_zero(c: RawClient) -> None:
    c.send(raw_frame(WINDOW, 0, 0, b"\x00\x00\x00\x00"))


def _data_on_idle_stream(c: RawClient) -> None:
    c.send(raw_frame(DATA, 0, 7, put(b"k")))


def _reused_stream_id(c: RawClient) -> None:
    c.call(3, KV_PUT, put(b"a"))
    c.headers(1, request_headers(KV_PUT))


def _rst_on_idle_stream(c: RawClient) -> None:
    c.send(raw_frame(RST, 0, 5, struct.pack(">L", 0x8)))


def _window_update_on_idle_stream(c: RawClient) -> None:
    c.send(raw_frame(WINDOW, 0, 9, struct.pack(">L", 100)))


def _data_on_even_stream_below_the_last(c: RawClient) -> None:
    c.call(3, KV_PUT, put(b"a"))
    c.data(2, put(b"b"), end_stream=True)


def _priority_on_stream_0(c: RawClient) -> None:
    c.send(raw_frame(PRIORITY, 0, 0, b"\x00\x00\x00\x01\x10"))


def _goaway_on_a_stream(c: RawClient) -> None:
    c.send(raw_frame(GOAWAY, 0, 1, struct.pack(">LL", 0, 0)))


def _initial_window_overflowing_a_stream(c: RawClient) -> None:
    c.headers(1, request_headers(WATCH))  # open; its send window is the client's initial one
    c.send(raw_frame(WINDOW, 0, 1, struct.pack(">L", 2**31 - 1 - (1 << 30))))
    c.send(raw_frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 2**31 - 1)))


@pytest.mark.parametrize(("attack", "code"), [
    (_headers_on_even, PROTOCOL_ERROR),
    (_rst_on_idle_stream, PROTOCOL_ERROR),
    (_window_update_on_idle_stream, PROTOCOL_ERROR),
    (_data_on_even_stream_below_the_last, PROTOCOL_ERROR),
    (_priority_on_stream_0, PROTOCOL_ERROR),
    (_goaway_on_a_stream, PROTOCOL_ERROR),
    (_initial_window_overflowing_a_stream, FLOW_CONTROL_ERROR),
    (_data_on_stream_0, PROTOCOL_ERROR),
    (_bad_hpack, COMPRESSION_ERROR),
    (_truncated_hpack, COMPRESSION_ERROR),
    (_continuation_alone, PROTOCOL_ERROR),
    (_continuation_interrupted, PROTOCOL_ERROR),
    (_continuation_other_stream, PROTOCOL_ERROR),
    (_padding_too_long, PROTOCOL_ERROR),
    (_push_promise, PROTOCOL_ERROR),
    (_ping_of_wrong_size, FRAME_SIZE_ERROR),
    (_settings_on_a_stream, PROTOCOL_ERROR),
    (_window_update_of_zero, PROTOCOL_ERROR),
    (_data_on_idle_stream, PROTOCOL_ERROR),
    (_reused_stream_id, PROTOCOL_ERROR),
], ids=lambda v: getattr(v, "__name__", str(v)).lstrip("_"))
def test_connection_error_goaway(attack: Attack, code: int) -> None:
    async def body() -> None:
        async with serving() as s:
            async with raw_client(s.port) as c:
                attack(c)
                goaway = await c.goaway()
                assert goaway.error_code == code, goaway
                assert goaway.additional_data, "GOAWAY gives no reason"
            await still_serving(s.target)

    run(body)


# (an HTTP/1 request is not garbage: it is answered in HTTP/1, see test_http1.py)
@pytest.mark.parametrize("garbage", [
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
    b"\x00" * 64,
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on a cleartext port
])
def test_garbage_instead_of_the_preface(garbage: bytes) -> None:
    async def body() -> None:
        async with serving() as s:
            async with raw_client(s.port, preface=False) as c:
                c.send(garbage)
                goaway = await c.goaway()
                assert goaway.error_code == PROTOCOL_ERROR
            await still_serving(s.target)

    run(body)


def test_frame_larger_than_the_advertised_max_frame_size() -> None:
    async def body() -> None:
        async with serving(max_frame_size=16_384) as s:
            async with raw_client(s.port) as c:
                settings = await c.until(lambda f: isinstance(f, SettingsFrame))
                assert settings.settings[SettingsFrame.MAX_FRAME_SIZE] == 16_384
                c.headers(1, request_headers(KV_PUT))
                c.data(1, b"\x00" * 16_385, end_stream=True)
                goaway = await c.goaway()
                assert goaway.error_code == FRAME_SIZE_ERROR
            await still_serving(s.target)

    run(body)


def test_client_exceeding_the_connection_window() -> None:
    """The server grants 100,000 bytes on the connection; one DATA frame of 100,001 is a
    flow-control error (RFC 9113 §6.9.1)."""

    async def body() -> None:
        async with serving(max_receive_message_length=1000, stream_window=100_000,
                           connection_window=100_000) as s:
            async with raw_client(s.port) as c:
                c.headers(1, request_headers(WATCH))
                c.data(1, b"\x00" * 100_001)
                goaway = await c.goaway()
                assert goaway.error_code == FLOW_CONTROL_ERROR
            await still_serving(s.target)

    run(body)


# --- streams refused and calls ended with a status -------------------------------------------


def test_more_concurrent_streams_than_advertised_are_refused() -> None:
    async def body() -> None:
        async with serving(max_concurrent_streams=2) as s:
            async with raw_client(s.port) as c:
                settings = await c.until(lambda f: isinstance(f, SettingsFrame))
                assert settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 2
                for sid in (1, 3):
                    c.headers(sid, request_headers(WATCH))  # open: the handler waits for data
                c.call(5, KV_PUT, put(b"third"))
                rst = await c.until(lambda f: isinstance(f, RstStreamFrame))
                assert (rst.stream_id, rst.error_code) == (5, REFUSED_STREAM)
                # once a stream ends, a new one is served on the same connection
                c.data(1, b"", end_stream=True)
                done = await c.response(1)
                assert done.status == OK
                c.call(7, KV_PUT, put(b"fourth"))
                resp = await c.response(7)
                assert resp.status == OK
                assert pb.PutResponse.FromString(resp.messages[0]).prev_kv.key == b"fourth"
            assert s.probe.calls.count("Put") == 1

    run(body)


_BAD_CALLS = [
    ("ends inside a message", KV_PUT, put(b"k", b"value")[:-2], INTERNAL),
    ("not protobuf", KV_PUT, grpc_msg(b"\xff\xff\xff\xff"), INTERNAL),
    ("two messages in a unary call", KV_PUT, put(b"a") + put(b"b"), INTERNAL),
    ("no message in a unary call", KV_PUT, b"", UNIMPLEMENTED),
    ("compressed without an encoding", KV_PUT, grpc_msg(gzip.compress(b"x", mtime=0), True),
     INTERNAL),
    ("unknown method", "/etcdserverpb.KV/Nope", put(b"k"), UNIMPLEMENTED),
    ("streaming request cut mid-message", WATCH, grpc_msg(b"\x0a\x02\x0a\x00")[:-1], INTERNAL),
]


# ids by name: every xdist worker must collect the same test ids (bytes with a gzip time
# stamp in them differed between workers)
@pytest.mark.parametrize(("name", "path", "body", "status"), _BAD_CALLS,
                         ids=[case[0] for case in _BAD_CALLS])
def test_bad_call_ends_with_status(name: str, path: str, body: bytes, status: int) -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.call(1, path, body)
            resp = await c.response(1)
            assert resp.status == status, (name, resp)
            assert resp.trailer(b"grpc-message"), name
            # the connection still serves
            c.call(3, KV_PUT, put(b"next"))
            again = await c.response(3)
            assert again.status == OK
            assert pb.PutResponse.FromString(again.messages[0]).prev_kv.key == b"next"

    run(main)


@pytest.mark.parametrize(("headers", "status"), [
    ([(":method", "GET")], INTERNAL),
    ([("content-type", "text/plain")], INTERNAL),
    ([("grpc-encoding", "snappy")], UNIMPLEMENTED),
    ([("grpc-timeout", "soon")], INTERNAL),
    ([("grpc-timeout", "1234567890S")], INTERNAL),
])
def test_bad_request_headers(headers: list[tuple[str, str]], status: int) -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            fixed = dict(request_headers(KV_PUT))
            fixed.update(headers)
            c.headers(1, list(fixed.items()))
            c.data(1, put(b"k"), end_stream=True)
            resp = await c.response(1)
            assert resp.status == status, resp
            assert s.probe.calls == []

    run(main)


def test_malformed_timeout_on_a_streaming_call_starts_no_handler() -> None:
    """The call is answered INTERNAL at once; its handler must not start (it would wait
    forever on a stream that no longer exists)."""

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, request_headers(WATCH, **{"grpc-timeout": "later"}))
            resp = await c.response(1)
            assert resp.status == INTERNAL
            c.call(3, KV_PUT, put(b"after"))
            assert (await c.response(3)).status == OK
            assert s.probe.calls == ["Put"]

    run(main)


def test_gzip_request_inflating_past_the_limit_is_resource_exhausted() -> None:
    """A small compressed message that inflates beyond max_receive_message_length is refused
    like an uncompressed one of that size (a decompression bomb)."""

    async def main() -> None:
        limit = 64 * 1024
        async with serving(max_receive_message_length=limit) as s, raw_client(s.port) as c:
            big = pb.PutRequest(key=b"k", value=bytes(4 * limit)).SerializeToString()
            c.headers(1, request_headers(KV_PUT, **{"grpc-encoding": "gzip"}))
            c.data(1, grpc_msg(gzip.compress(big), compressed=True), end_stream=True)
            resp = await c.response(1)
            assert resp.status == RESOURCE_EXHAUSTED, resp
            # exactly at the limit after inflating is still accepted
            ok = pb.PutRequest(key=b"k", value=bytes(limit - 10)).SerializeToString()
            assert len(ok) <= limit
            c.headers(3, request_headers(KV_PUT, **{"grpc-encoding": "gzip"}))
            c.data(3, grpc_msg(gzip.compress(ok), compressed=True), end_stream=True)
            resp = await c.response(3)
            assert resp.status == OK
            assert s.probe.calls == ["Put"]

    run(main)


def test_corrupt_gzip_request_is_internal() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            packed = gzip.compress(pb.PutRequest(key=b"k").SerializeToString())
            for sid, payload in ((1, packed[:-6]), (3, b"not gzip at all")):
                c.headers(sid, request_headers(KV_PUT, **{"grpc-encoding": "gzip"}))
                c.data(sid, grpc_msg(payload, compressed=True), end_stream=True)
                resp = await c.response(sid)
                assert resp.status == INTERNAL, (sid, resp)
            assert s.probe.calls == []

    run(main)


def test_stream_window_is_enforced() -> None:
    """A client that sends more on one stream than the stream window granted (the handler has
    read nothing, so nothing was credited back) gets the stream reset with
    FLOW_CONTROL_ERROR; unread messages never pile up past one window (RFC 9113 §6.9)."""

    async def main() -> None:
        window = 100_000
        async with serving(max_receive_message_length=1000, stream_window=window,
                           connection_window=10 * window) as s, raw_client(s.port) as c:
            msg = grpc_msg(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=b"w" * 980)).SerializeToString())
            c.headers(1, request_headers(WATCH, **{"x-hold": "1"}))
            await asyncio.wait_for(s.probe.started.wait(), 10)
            full = window // len(msg)
            # exactly the window (the last message incomplete) is allowed ...
            c.send(b"".join(raw_frame(DATA, 0, 1, msg) for _ in range(full))
                   + raw_frame(DATA, 0, 1, msg[:window - full * len(msg)]))
            c.send(raw_frame(PING, 0, 0, b"in sync?"))
            await c.until(lambda f: isinstance(f, PingFrame))
            assert not [f for f in c.frames if isinstance(f, (RstStreamFrame, GoAwayFrame))]
            # ... one byte more is not
            c.send(raw_frame(DATA, 0, 1, b"\x00"))
            rst = await c.until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 1)
            assert rst.error_code == FLOW_CONTROL_ERROR
            await asyncio.wait_for(s.probe.cancelled.wait(), 10)
            c.call(3, KV_PUT, put(b"after"))
            assert (await c.response(3)).status == OK

    run(main)


# --- legal but unusual frames -----------------------------------------------------------------


def test_ping_is_acknowledged_with_the_same_payload() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            for payload in (b"12345678", b"\x00" * 8, b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"):
                c.send(raw_frame(PING, 0, 0, payload))
                ack = await c.until(lambda f: isinstance(f, PingFrame))
                assert "ACK" in ack.flags
                assert ack.opaque_data == payload
            c.send(raw_frame(PING, 0x1, 0, b"unasked!"))  # an ACK is not answered
            c.send(raw_frame(PING, 0, 0, b"last-one"))
            ack = await c.until(lambda f: isinstance(f, PingFrame))
            assert ack.opaque_data == b"last-one"

    run(main)


def test_settings_are_acknowledged() -> None:
    async def main() -> None:
        async with serving(max_concurrent_streams=77, max_frame_size=32_768) as s, \
                raw_client(s.port, preface=False) as c:
            c.send(PREFACE)
            first = await c.until(lambda f: isinstance(f, SettingsFrame))
            assert "ACK" not in first.flags
            assert first.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 77
            assert first.settings[SettingsFrame.MAX_FRAME_SIZE] == 32_768
            settings = {0x1: 0, 0x2: 0, 0x4: 1 << 20, 0x5: 1 << 15, 0x99: 5}  # 0x99: unknown
            c.send(raw_frame(SETTINGS, 0, 0,
                             b"".join(struct.pack(">HL", k, v) for k, v in settings.items())))
            ack = await c.until(lambda f: isinstance(f, SettingsFrame))
            assert "ACK" in ack.flags and not ack.settings
            c.call(1, KV_PUT, put(b"k"))
            assert (await c.response(1)).status == OK

    run(main)


def test_headers_split_by_continuation() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            b = block(c)
            parts = [b[i:i + 3] for i in range(0, len(b), 3)]
            frames = raw_frame(HEADERS, 0, 1, parts[0])
            frames += b"".join(raw_frame(CONT, 0, 1, p) for p in parts[1:-1])
            frames += raw_frame(CONT, END_HEADERS, 1, parts[-1])
            c.send(frames + raw_frame(DATA, END_STREAM, 1, put(b"split")))
            resp = await c.response(1)
            assert resp.status == OK
            assert pb.PutResponse.FromString(resp.messages[0]).prev_kv.key == b"split"

    run(main)


def test_padded_and_prioritised_frames() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            b = block(c)
            prio = b"\x00\x00\x00\x00\x10"  # depends on 0, weight 17
            pad = 7
            c.send(raw_frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1,
                             bytes([pad]) + prio + b + b"\x00" * pad))
            msg = put(b"padded", b"p" * 100)
            c.send(raw_frame(DATA, PADDED, 1, b"\x03" + msg[:50] + b"\x00" * 3))
            c.send(raw_frame(DATA, PADDED | END_STREAM, 1, b"\x00" + msg[50:]))
            c.send(raw_frame(PRIORITY, 0, 1, prio))
            resp = await c.response(1)
            assert resp.status == OK
            got = pb.PutResponse.FromString(resp.messages[0])
            assert (got.prev_kv.key, got.prev_kv.value) == (b"padded", b"p" * 100)

    run(main)


def test_unknown_frame_types_are_ignored() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.send(raw_frame(0xFA, 0xFF, 0, b"whatever") + raw_frame(0x42, 0, 1, b""))
            c.call(1, KV_PUT, put(b"k"))
            assert (await c.response(1)).status == OK

    run(main)


def test_client_reset_then_new_calls() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.call(1, KV_RANGE, grpc_msg(pb.RangeRequest(key=b"sleep").SerializeToString()))
            await asyncio.wait_for(s.probe.started.wait(), 10)
            c.send(raw_frame(RST, 0, 1, struct.pack(">L", 0x8)))  # CANCEL
            await asyncio.wait_for(s.probe.cancelled.wait(), 10)
            c.call(3, KV_PUT, put(b"k"))
            assert (await c.response(3)).status == OK

    run(main)


# --- the h2 library as the client ---------------------------------------------------------


async def _h2_call(c: H2Client, sid: int, path: str, body: bytes,
                   pad_length: int | None = None) -> None:
    c.conn.send_headers(sid, request_headers(path))
    c.conn.send_data(sid, body, end_stream=True, pad_length=pad_length)
    c.flush()


def test_h2_client_unary_and_padding() -> None:
    async def main() -> None:
        async with serving() as s:
            c = await H2Client.connect(s.port)
            try:
                await _h2_call(c, 1, KV_PUT, put(b"h2", b"v" * 1000), pad_length=200)
                resp = await c.until(lambda e: isinstance(e, h2.events.ResponseReceived))
                assert dict(resp.headers)[b":status"] == b"200"
                assert dict(resp.headers)[b"content-type"].startswith(b"application/grpc")
                trailers = await c.until(lambda e: isinstance(e, h2.events.TrailersReceived))
                assert dict(trailers.headers)[b"grpc-status"] == b"0"
                data = b"".join(e.data for e in c.seen if isinstance(e, h2.events.DataReceived))
                got = pb.PutResponse.FromString(data[5:])
                assert got.prev_kv.value == b"v" * 1000
                c.conn.ping(b"h2-ping!")
                c.flush()
                ack = await c.until(lambda e: isinstance(e, h2.events.PingAckReceived))
                assert ack.ping_data == b"h2-ping!"
            finally:
                await c.close()

    run(main)


def test_small_client_window_makes_the_answer_wait_for_window_update() -> None:
    """With SETTINGS_INITIAL_WINDOW_SIZE = 1000 the server sends exactly 1000 bytes of the
    answer, then nothing more on the stream until the client opens the window."""

    async def main() -> None:
        size = 50_000
        async with serving() as s:
            c = await H2Client.connect(
                s.port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
            try:
                await c.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
                body = grpc_msg(pb.RangeRequest(key=b"big", limit=size).SerializeToString())
                await _h2_call(c, 1, KV_RANGE, body)
                received = 0
                while received < 1000:
                    e = await c.until(lambda e: isinstance(
                        e, (h2.events.DataReceived, h2.events.StreamEnded)))
                    assert isinstance(e, h2.events.DataReceived), "ended within the window"
                    received += e.flow_controlled_length
                assert received == 1000
                # a PING round trip: the server has handled everything we sent, and has sent
                # no DATA beyond the window in the meantime
                c.conn.ping(b"waiting?")
                c.flush()
                mark = len(c.seen)
                await c.until(lambda e: isinstance(e, h2.events.PingAckReceived))
                assert not [e for e in c.seen[mark:] if isinstance(
                    e, (h2.events.DataReceived, h2.events.StreamEnded))]
                # open the window step by step; every step lets more through
                data = b"".join(e.data for e in c.seen if isinstance(e, h2.events.DataReceived))
                ended = False
                while not ended:
                    c.conn.increment_flow_control_window(4000, stream_id=1)
                    c.conn.increment_flow_control_window(4000)
                    c.flush()
                    got = 0
                    while got < 4000 and not ended:
                        e = await c.until(lambda e: isinstance(
                            e, (h2.events.DataReceived, h2.events.StreamEnded)))
                        if isinstance(e, h2.events.StreamEnded):
                            ended = True
                        else:
                            got += e.flow_controlled_length
                            data += e.data
                    assert got <= 4000
                trailers = [e for e in c.seen if isinstance(e, h2.events.TrailersReceived)]
                assert dict(trailers[0].headers)[b"grpc-status"] == b"0"
                answer = pb.RangeResponse.FromString(data[5:])
                assert answer.kvs[0].value == blob(0, size)
            finally:
                await c.close()

    run(main)


def test_goaway_reports_the_last_stream_processed() -> None:
    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.call(1, KV_PUT, put(b"a"))
            assert (await c.response(1)).status == OK
            c.call(3, KV_PUT, put(b"b"))
            assert (await c.response(3)).status == OK
            c.send(raw_frame(DATA, 0, 0, b""))
            goaway = await c.goaway()
            assert (goaway.error_code, goaway.last_stream_id) == (PROTOCOL_ERROR, 3)

    run(main)


def test_window_update_frames_credit_the_client() -> None:
    """A large request is credited back with WINDOW_UPDATE frames, so a client that respects
    the windows can stream far more than one window through one call."""

    async def main() -> None:
        async with serving(max_receive_message_length=1000, stream_window=20_000,
                           connection_window=20_000) as s, raw_client(s.port) as c:
            c.headers(1, request_headers(WATCH))
            conn_window = stream_window = 65_535  # until our SETTINGS ACK is seen, assume least
            sent = 0
            n = 200
            for i in range(n):
                msg = grpc_msg(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                    key=b"w" * 900, start_revision=i)).SerializeToString())
                while min(conn_window, stream_window) < len(msg):
                    f = await c.until(lambda f: isinstance(f, WindowUpdateFrame))
                    if f.stream_id == 0:
                        conn_window += f.window_increment
                    else:
                        stream_window += f.window_increment
                c.data(1, msg)
                conn_window -= len(msg)
                stream_window -= len(msg)
                sent += len(msg)
            c.data(1, b"", end_stream=True)
            resp = await c.response(1)
            assert resp.status == OK
            ids = [pb.WatchResponse.FromString(m).watch_id for m in resp.messages]
            assert ids == list(range(n))
            assert sent > 20_000 * 5

    run(main)


def test_hpack_state_carries_across_requests() -> None:
    """Indexed header fields from earlier requests (the dynamic table) decode right."""

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            enc = hpack.Encoder()
            for sid in (1, 3, 5, 7):
                headers = request_headers(KV_RANGE, **{"x-req": f"r{sid}", "x-same": "s"})
                c.send(raw_frame(HEADERS, END_HEADERS, sid, enc.encode(headers)))
                c.data(sid, grpc_msg(pb.RangeRequest(key=b"meta").SerializeToString()), True)
                resp = await c.response(sid)
                assert resp.status == OK
            seen = [dict(m) for m in s.probe.metadata]
            assert [m["x-req"] for m in seen] == ["r1", "r3", "r5", "r7"]
            assert all(m["x-same"] == "s" for m in seen)

    run(main)


# --- floods and stalls ----------------------------------------------------------------------


def test_rapid_reset_leaves_no_call_behind() -> None:
    """Thousands of calls opened and reset at once (the "rapid reset" pattern): every handler
    started is cancelled, no stream or task is left, and the connection still serves."""

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            before = len(asyncio.all_tasks())
            body = grpc_msg(pb.RangeRequest(key=b"sleep").SerializeToString())
            n = 2000
            burst = b""
            for i in range(n):
                sid = 2 * i + 1
                burst += raw_frame(HEADERS, END_HEADERS, sid, block(c, KV_RANGE))
                burst += raw_frame(DATA, END_STREAM, sid, body)
                burst += raw_frame(RST, 0, sid, struct.pack(">L", 0x8))
            c.send(burst)
            c.call(2 * n + 1, KV_PUT, put(b"after"))
            assert (await c.response(2 * n + 1)).status == OK
            for _ in range(10):  # cancelled handlers finish within a few loop turns
                await asyncio.sleep(0)
            (conn,) = s.server.connections
            assert conn.streams == {}
            assert len(asyncio.all_tasks()) <= before

    run(main)


def test_deadline_while_the_request_is_incomplete() -> None:
    """The client sends headers with a deadline and never the message: the call ends with
    DEADLINE_EXCEEDED all the same (no handler ran)."""

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, request_headers(KV_PUT, **{"grpc-timeout": "50m"}))
            c.data(1, put(b"k")[:3])
            resp = await c.response(1)
            assert resp.status == 4  # DEADLINE_EXCEEDED
            c.call(3, KV_PUT, put(b"k"))
            assert (await c.response(3)).status == OK
            assert s.probe.calls == ["Put"]

    run(main)


def test_endless_continuation_is_refused() -> None:
    async def main() -> None:
        async with serving() as s:
            async with raw_client(s.port) as c:
                c.send(raw_frame(HEADERS, 0, 1, block(c)[:2]))
                # 64 KiB of header block is the limit; the frame that crosses it is the last
                # one sent, so the server has read everything when it closes
                c.send(raw_frame(CONT, 0, 1, b"\x00" * 16_000) * 4)
                c.send(raw_frame(CONT, 0, 1, b"\x00" * 2_000))
                goaway = await c.goaway()
                assert goaway.error_code == 0xB  # ENHANCE_YOUR_CALM
            await still_serving(s.target)

    run(main)


def test_header_list_over_the_advertised_limit() -> None:
    async def main() -> None:
        async with serving(max_header_list_size=4096) as s:
            async with raw_client(s.port) as c:
                settings = await c.until(lambda f: isinstance(f, SettingsFrame))
                assert settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == 4096
                c.headers(1, request_headers(KV_PUT, **{"x-big": "b" * 8000}), end_stream=True)
                goaway = await c.goaway()
                assert goaway.error_code == COMPRESSION_ERROR
            await still_serving(s.target)

    run(main)


def test_stream_window_update_of_zero_resets_the_stream() -> None:
    """RFC 9113 §6.9: an increment of 0 on a stream is a stream error of type
    PROTOCOL_ERROR; the connection goes on."""

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, request_headers(WATCH))
            c.send(raw_frame(WINDOW, 0, 1, struct.pack(">L", 0)))
            rst = await c.until(lambda f: isinstance(f, RstStreamFrame))
            assert (rst.stream_id, rst.error_code) == (1, PROTOCOL_ERROR)
            c.call(3, KV_PUT, put(b"k"))
            assert (await c.response(3)).status == OK

    run(main)


def test_a_client_that_never_reads_cannot_grow_the_server_buffer() -> None:
    """A PING flood from a client that reads nothing: every PING owes an ACK, and with the
    client's socket full the ACKs queue in the server. The server must stop reading that
    client (backpressure) instead of buffering answers without bound."""

    async def main() -> None:
        bound = 1 << 20
        async with serving() as s:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", s.port))
            _reader, writer = await asyncio.open_connection(sock=sock)
            try:
                writer.write(PREFACE + raw_frame(SETTINGS, 0, 0))
                while not s.server.connections:
                    await asyncio.sleep(0.01)
                (conn,) = s.server.connections
                transport = conn.transport
                assert transport is not None
                transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
                writer.write(raw_frame(PING, 0, 0, b"flooding") * (32 * (1 << 20) // 17))
                # wait (bounded) until the server stops reading us or its buffer passes the bound
                for _ in range(1000):
                    if not transport.is_reading() or transport.get_write_buffer_size() > bound:
                        break
                    await asyncio.sleep(0.01)
                assert transport.get_write_buffer_size() <= bound
                assert not transport.is_reading()
            finally:
                writer.transport.abort()
            await still_serving(s.target)

    run(main)


def test_http1_pipelining_behind_a_slow_answer_is_bounded() -> None:
    """While one HTTP/1 request is being answered, later bytes wait in the session's buffer;
    a client that sends more than the largest request in the meantime is cut off instead
    of being buffered without bound."""
    from quorum.api.h2grpc.http1 import MAX_BODY, MAX_HEAD, Request, Response

    async def main() -> None:
        cancelled = asyncio.Event()

        async def slow(req: Request) -> Response:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return Response(200, b"late")

        async with serving(http1_handler=slow) as s:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            writer.write(b"X" * (MAX_HEAD + MAX_BODY + (1 << 20)))
            try:
                while await asyncio.wait_for(reader.read(65536), STEP_S):
                    pass
            except ConnectionResetError:
                pass  # closed with our bytes unread: a reset instead of an end of stream
            finally:
                writer.transport.abort()
            await asyncio.wait_for(cancelled.wait(), STEP_S)
            await still_serving(s.target)

    run(main)


def _credit(rng: random.Random, owed: int, room: int) -> int:
    """A WINDOW_UPDATE increment: some of the bytes owed, sometimes more (growing the
    window), never 0."""
    if room == 0 or rng.random() < 0.2:
        return owed + rng.randrange(1, 20_000)
    return rng.randrange(1, owed + 2)


@pytest.mark.parametrize("seed", range(6))
def test_random_windows_and_frame_sizes(seed: int) -> None:
    """The h2 client advertises a random stream window and max frame size and opens its
    windows in random steps while a server stream of ~200 KB arrives: h2 itself rejects any
    frame over its limits or its windows, so the stream arriving intact shows the server
    kept to both."""

    async def main() -> None:
        rng = random.Random(seed)
        window = rng.choice([1, 7, 1000, rng.randrange(1, 70_000)])
        max_frame = rng.choice([16_384, rng.randrange(16_384, 100_000)])
        async with serving(snapshot_chunks=3) as s:
            c = await H2Client.connect(s.port, {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: max_frame,
            })
            try:
                await c.until(lambda e: isinstance(e, h2.events.SettingsAcknowledged))
                await _h2_call(c, 1, SNAPSHOT, grpc_msg(b""))
                stream_room, conn_room = window, 65_535  # what the server may still send
                owed_stream = owed_conn = 0  # received, not yet credited back
                data = b""
                while True:
                    e = await c.until(lambda e: isinstance(
                        e, (h2.events.DataReceived, h2.events.StreamEnded)))
                    if isinstance(e, h2.events.StreamEnded):
                        break
                    n = e.flow_controlled_length
                    assert len(e.data) <= max_frame
                    data += e.data
                    stream_room -= n
                    conn_room -= n
                    owed_stream += n
                    owed_conn += n
                    # credit at random (part of what was received, or more: the window
                    # grows), and always when a window is shut (else: deadlock)
                    if stream_room == 0 or rng.random() < 0.3:
                        step = _credit(rng, owed_stream, stream_room)
                        with contextlib.suppress(h2.exceptions.StreamClosedError):
                            c.conn.increment_flow_control_window(step, stream_id=1)
                        stream_room += step
                        owed_stream = max(0, owed_stream - step)
                    if conn_room == 0 or rng.random() < 0.3:
                        step = _credit(rng, owed_conn, conn_room)
                        c.conn.increment_flow_control_window(step)
                        conn_room += step
                        owed_conn = max(0, owed_conn - step)
                    c.flush()
                trailers = [e for e in c.seen if isinstance(e, h2.events.TrailersReceived)]
                assert dict(trailers[0].headers)[b"grpc-status"] == b"0"
                blobs = [pb.SnapshotResponse.FromString(m).blob for m in split_messages(data)]
                assert blobs == [blob(i, SNAPSHOT_CHUNK) for i in range(3)]
            finally:
                await c.close()

    run(main)


@pytest.mark.parametrize("seed", range(4))
def test_messages_split_across_frames_anyhow(seed: int) -> None:
    """Request messages of random sizes cut at random points into DATA frames (some padded,
    some empty) are reassembled in order: the bidi echo answers each once."""

    async def main() -> None:
        rng = random.Random(seed)
        async with serving() as s, raw_client(s.port) as c:
            c.headers(1, request_headers(WATCH))
            keys = [rng.randbytes(rng.choice([0, 1, 100, 5000, 70_000])) for _ in range(12)]
            body = b"".join(grpc_msg(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=k, start_revision=i)).SerializeToString()) for i, k in enumerate(keys))
            pos = 0
            while pos < len(body):
                n = rng.choice([0, 1, 4, 5, 6, rng.randrange(1, 20_000)])
                piece, pos = body[pos:pos + n], pos + n
                if rng.random() < 0.3:
                    pad = rng.randrange(0, 256)
                    c.send(raw_frame(DATA, PADDED, 1, bytes([pad]) + piece + bytes(pad)))
                else:
                    c.data(1, piece)
            c.data(1, b"", end_stream=True)
            resp = await c.response(1)
            assert resp.status == OK, resp
            answers = [pb.WatchResponse.FromString(m) for m in resp.messages]
            assert [a.watch_id for a in answers] == list(range(len(keys)))
            assert [a.cancel_reason.encode("latin-1") for a in answers] == keys

    run(main)


def test_headers_after_the_request_ended_reset_the_stream() -> None:
    """A second HEADERS (with END_STREAM) on a call whose request has ended: a stream error
    STREAM_CLOSED (RFC 9113 §5.1); the handler is cancelled, the connection goes on."""

    async def main() -> None:
        async with serving() as s, raw_client(s.port) as c:
            c.call(1, KV_RANGE, grpc_msg(pb.RangeRequest(key=b"sleep").SerializeToString()))
            await asyncio.wait_for(s.probe.started.wait(), STEP_S)
            c.headers(1, [("x-late", "1")], end_stream=True)
            rst = await c.until(lambda f: isinstance(f, RstStreamFrame))
            assert (rst.stream_id, rst.error_code) == (1, 0x5)  # STREAM_CLOSED
            await asyncio.wait_for(s.probe.cancelled.wait(), STEP_S)
            c.call(3, KV_PUT, put(b"k"))
            assert (await c.response(3)).status == OK

    run(main)
