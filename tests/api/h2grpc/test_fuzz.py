"""Fuzzing H2Connection.data_received: random bytes, and valid frame sequences mutated (bytes
flipped, cut, inserted, frames dropped, repeated or reordered) and split at random points.

For every input: nothing raises out of data_received; the connection's catch-all for its own
bugs ("internal error") is never reached, nor is any exception left unhandled in a task;
everything the server wrote parses as HTTP/2 frames (hyperframe). A real server fed such
garbage on several connections keeps answering grpcio calls on another."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import struct
from collections.abc import Iterator
from typing import Any

import hpack
import pytest
from hyperframe.frame import Frame, GoAwayFrame
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from quorum.api.etcd.gen import etcd_rpc_pb2 as pb
from quorum.api.etcd.gen import etcd_rpc_pb2_grpc as rpc
from quorum.api.h2grpc.connection import H2Connection

from .support import (
    KV_PUT,
    KV_RANGE,
    PREFACE,
    SNAPSHOT,
    STEP_S,
    WATCH,
    Probe,
    build_server,
    channel,
    grpc_msg,
    raw_frame,
    request_headers,
    run,
    serving,
)

DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False  # closes at once after a GOAWAY, as over TLS

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 4242) if name == "peername" else default


_LOGGERS = ("quorum.api.h2grpc.connection", "quorum.api.h2grpc.http1")


class Findings(logging.Handler):
    """Errors the connection logged about itself (its catch-all for unexpected exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.close()


class Harness:
    """One event loop and server (never listening) for many fuzzed connections."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.unhandled: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.unhandled.append(ctx))
        self.probe = Probe()
        self.server = build_server(self.probe, snapshot_chunks=3,
                                   max_receive_message_length=4096, max_frame_size=16_384)
        self.findings = Findings()
        self.last_out = b""
        for name in _LOGGERS:
            logging.getLogger(name).addHandler(self.findings)

    def close(self) -> None:
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(self.findings)
        self.loop.close()

    def feed(self, chunks: list[bytes]) -> list[Frame]:
        """A fresh connection receives ``chunks``; then every check of this module."""
        self.findings.records.clear()
        self.unhandled.clear()
        transport = FakeTransport()

        conns: list[H2Connection] = []

        async def session() -> None:
            conn = H2Connection(self.server)
            conns.append(conn)
            conn.connection_made(transport)
            for chunk in chunks:
                conn.data_received(chunk)  # must not raise, whatever the bytes
                await asyncio.sleep(0)  # let handlers and writes run in between
            for _ in range(5):
                await asyncio.sleep(0)
            if not transport.closed:
                transport.close()
                conn.connection_lost(None)
            for _ in range(5):  # cancelled handlers finish
                await asyncio.sleep(0)

        self.loop.run_until_complete(session())
        assert not self.findings.records, [r.getMessage() for r in self.findings.records]
        assert not self.unhandled, self.unhandled
        out = self.last_out = bytes(transport.out)
        if conns[0]._http1 is not None:  # the first bytes were an HTTP/1 request line
            assert not out or out.startswith(b"HTTP/1.1 "), out[:200]
            return []
        return check_frames(out)


def check_frames(out: bytes) -> list[Frame]:
    """The server's output is a sequence of well-formed frames (parsed independently)."""
    frames = []
    pos = 0
    while pos < len(out):
        assert len(out) - pos >= 9, "output ends inside a frame header"
        frame, length = Frame.parse_frame_header(memoryview(out[pos:pos + 9]))
        assert pos + 9 + length <= len(out), "output ends inside a frame"
        frame.parse_body(memoryview(out[pos + 9:pos + 9 + length]))
        frames.append(frame)
        pos += 9 + length
    return frames


# --- inputs -----------------------------------------------------------------------------------

_PATHS = [KV_PUT, KV_RANGE, WATCH, SNAPSHOT, "/etcdserverpb.KV/Txn", "/no/such"]
_BODIES = [
    pb.PutRequest(key=b"k", value=b"v").SerializeToString(),
    pb.RangeRequest(key=b"raise").SerializeToString(),
    pb.RangeRequest(key=b"sleep").SerializeToString(),
    pb.RangeRequest(key=b"abort", range_end="é".encode()).SerializeToString(),
    pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"w")).SerializeToString(),
    b"\xff\xfe",
    b"",
]


def _controls(sid: int | None) -> list[bytes]:
    """Control frames a client may send at any point of a session (valid as sent); with
    ``sid``, also frames for that stream, which must be open already."""
    frames = [
        raw_frame(PING, 0, 0, b"pingpong"),
        raw_frame(PING, 1, 0, b"pingpong"),
        raw_frame(WINDOW, 0, 0, struct.pack(">L", 1000)),
        raw_frame(SETTINGS, 0, 0, struct.pack(">HL", 4, 100_000)),
        raw_frame(SETTINGS, 1, 0),
        raw_frame(GOAWAY, 0, 0, struct.pack(">LL", 0, 0)),
    ]
    if sid is not None:
        frames += [
            raw_frame(WINDOW, 0, sid, struct.pack(">L", 1000)),
            raw_frame(PRIORITY, 0, sid, b"\x00\x00\x00\x00\x10"),
            raw_frame(RST, 0, sid, struct.pack(">L", 8)),
        ]
    return frames


@st.composite
def sessions(draw: st.DrawFn) -> list[bytes]:
    """A valid client session as a list of frames (the preface first)."""
    enc = hpack.Encoder()
    out = [PREFACE]
    out.append(raw_frame(SETTINGS, 0, 0, b"".join(
        struct.pack(">HL", k, v) for k, v in draw(st.lists(st.tuples(
            st.sampled_from([1, 2, 3, 4, 5, 6]), st.sampled_from([0, 1, 100, 16_384, 65_535])),
            max_size=3)) if not (k == 5 and v < 16_384) and not (k == 2 and v > 1))))
    out += draw(st.lists(st.sampled_from(_controls(None)), max_size=3))
    for i in range(draw(st.integers(1, 4))):
        sid = 2 * i + 1
        extra = {"grpc-timeout": draw(st.sampled_from(["", "1m", "1S", "x"]))}
        headers = request_headers(draw(st.sampled_from(_PATHS)),
                                  **{k: v for k, v in extra.items() if v})
        block = enc.encode(headers)
        cut = draw(st.integers(0, len(block)))
        if cut and cut < len(block):
            out.append(raw_frame(HEADERS, 0, sid, block[:cut]))
            out.append(raw_frame(CONT, 0x4, sid, block[cut:]))
        else:
            out.append(raw_frame(HEADERS, 0x4, sid, block))
        messages = draw(st.lists(st.sampled_from(_BODIES), min_size=0, max_size=3))
        body = b"".join(grpc_msg(m) for m in messages)
        pad = draw(st.sampled_from([None, 0, 5]))
        if pad is None:
            out.append(raw_frame(DATA, 0x1, sid, body))
        else:
            out.append(raw_frame(DATA, 0x1 | 0x8, sid, bytes([pad]) + body + bytes(pad)))
        out += draw(st.lists(st.sampled_from(_controls(sid)), max_size=3))
    return out


_FRAME_OPS = ["drop", "repeat", "swap", "resize", "retype", "reflag", "restream", "relength"]
# framing kept, content wrong: what each frame handler must check
_FRAME_MUTATION = st.one_of(
    st.tuples(st.sampled_from(_FRAME_OPS), st.integers(0, 100), st.integers(0, 2**32 - 1)),
    # a frame of any type, flags, stream and (short) payload, inserted
    st.tuples(st.just("random_frame"), st.integers(0, 100),
              st.tuples(st.integers(0, 10), st.integers(0, 255), st.integers(0, 7),
                        st.binary(max_size=16))),
)
# bytes wrong anywhere, framing included
_BYTE_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.integers(0, 15)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=12)),
)
_FRAME_MUTATIONS = st.lists(_FRAME_MUTATION, min_size=1, max_size=5)
_MUTATIONS = st.lists(st.one_of(_FRAME_MUTATION, _BYTE_MUTATION), min_size=1, max_size=5)


def _with_header(frame: bytes, **changes: int) -> bytes:
    length = changes.get("length", int.from_bytes(frame[0:3], "big"))
    ftype = changes.get("ftype", frame[3])
    flags = changes.get("flags", frame[4])
    sid = changes.get("sid", int.from_bytes(frame[5:9], "big"))
    return length.to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + frame[9:]


def _mutate_frame(frame: bytes, op: str, b: int) -> bytes:
    if op == "resize":  # shorter or longer payload, length field kept right
        payload = frame[9:]
        payload = payload[:b % (len(payload) + 1)] if b & 1 else payload + bytes(b % 9)
        return _with_header(frame[:9], length=len(payload)) + payload
    if op == "retype":
        return _with_header(frame, ftype=b % 11)
    if op == "reflag":
        return _with_header(frame, flags=b & 0xFF)
    if op == "restream":
        return _with_header(frame, sid=b % 8 | (b & 0x80000000))
    return _with_header(frame, length=b & 0xFFFFFF)  # relength: framing broken


def mutate(frames: list[bytes], mutations: list[tuple[str, int, Any]]) -> bytes:
    """Apply frame-level mutations to ``frames`` (never to the preface), then byte-level
    ones to the joined bytes."""
    frames = list(frames)
    for op, a, b in mutations:
        n = len(frames) - 1  # frames after the preface
        if op == "random_frame":
            ftype, flags, sid, payload = b
            frames.insert(1 + a % (n + 1), raw_frame(ftype, flags, sid, payload))
            continue
        if op not in _FRAME_OPS or n < 1:
            continue
        i = 1 + a % n
        if op == "drop":
            del frames[i]
        elif op == "repeat":
            frames.insert(i, frames[i])
        elif op == "swap":
            j = 1 + b % n
            frames[i], frames[j] = frames[j], frames[i]
        else:
            frames[i] = _mutate_frame(frames[i].ljust(9, b"\x00"), op, b)
    data = bytearray(b"".join(frames))
    for op, a, b in mutations:
        if not data:
            break
        if op == "flip":
            data[a % len(data)] ^= (b & 0xFF) or 1
        elif op == "cut":
            i = a % len(data)
            del data[i:i + 1 + b]
        elif op == "insert":
            i = a % (len(data) + 1)
            data[i:i] = b
    return bytes(data)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in itertools.pairwise(points) if j > i] or [b""]


_settings = settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture,
                                            HealthCheck.too_slow])


@_settings
@given(data=st.binary(max_size=512), with_preface=st.booleans(),
       cuts=st.lists(st.integers(0, 600), max_size=4))
def test_random_bytes(harness: Harness, data: bytes, with_preface: bool,
                      cuts: list[int]) -> None:
    payload = (PREFACE if with_preface else b"") + data
    harness.feed(split(payload, cuts))


@_settings
@given(frames=sessions(), mutations=_MUTATIONS,
       cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_mutated_sessions(harness: Harness, frames: list[bytes],
                          mutations: list[tuple[str, int, Any]], cuts: list[int]) -> None:
    harness.feed(split(mutate(frames, mutations), cuts))


@_settings
@given(frames=sessions(), mutations=_FRAME_MUTATIONS,
       cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_frame_mutations(harness: Harness, frames: list[bytes],
                         mutations: list[tuple[str, int, Any]], cuts: list[int]) -> None:
    """Framing intact, so most frames reach their handlers with wrong sizes, flags, types
    and streams."""
    harness.feed(split(mutate(frames, mutations), cuts))


@pytest.mark.torture
@pytest.mark.timeout(1200)  # about 10 ms an example: 300 s alone, more on a loaded machine
@settings(_settings, max_examples=30_000)
@given(frames=sessions(), mutations=st.one_of(_FRAME_MUTATIONS, _MUTATIONS),
       cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_mutation_campaign(harness: Harness, frames: list[bytes],
                           mutations: list[tuple[str, int, Any]], cuts: list[int]) -> None:
    """The two mutation tests above at 30,000 examples (make torture)."""
    harness.feed(split(mutate(frames, mutations), cuts))


@_settings
@given(frames=sessions(), cuts=st.lists(st.integers(0, 10**6), max_size=6))
def test_valid_sessions_split_anywhere(harness: Harness, frames: list[bytes],
                                       cuts: list[int]) -> None:
    """Unmutated sessions, split at any byte: served without a connection error."""
    out = harness.feed(split(b"".join(frames), cuts))
    errors = [f for f in out if isinstance(f, GoAwayFrame) and f.error_code]
    assert not errors, errors


_HTTP1_REQUESTS = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v3/kv/range?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"PUT /a HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
]
_HTTP1_TOKENS = [b"\r\n", b"\r\n\r\n", b":", b" ", b"Content-Length: ", b"\xb2", b"\xb9",
                 b"-1", b"99999999999", b"Transfer-Encoding: chunked", b"\x00", b"HTTP/1.",
                 b"Connection: keep-alive", b"\xff"]


@_settings
@given(requests=st.lists(st.sampled_from(_HTTP1_REQUESTS), min_size=1, max_size=3),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3),
                                st.sampled_from(_HTTP1_TOKENS)), max_size=4),
       cuts=st.lists(st.integers(0, 10**6), max_size=4))
def test_http1_requests_mutated(harness: Harness, requests: list[bytes],
                                edits: list[tuple[int, int, bytes]], cuts: list[int]) -> None:
    """HTTP/1 on the gRPC port is input too: pipelined requests with tokens inserted or bytes
    cut are answered (or refused) in HTTP/1, never with an exception."""
    data = bytearray(b"".join(requests))
    for at, cut, token in edits:
        i = 1 + at % len(data)  # the first byte stays: the connection remains HTTP/1
        data[i:i + cut] = token
    harness.feed(split(bytes(data), cuts))


def test_http1_content_length_with_a_unicode_digit() -> None:
    """'²' is a digit to str.isdigit() but not to int(): a 400, not an exception."""
    h = Harness()
    try:
        h.feed([b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n"])
    finally:
        h.close()
    assert h.last_out.startswith(b"HTTP/1.1 400 "), h.last_out


def test_planted_missing_size_check_is_caught(harness: Harness,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A WINDOW_UPDATE handler that forgets its frame-size check (struct.error on a short
    payload) is caught by the same fuzz checks."""

    def unchecked(self: H2Connection, flags: int, sid: int, payload: bytes) -> None:
        struct.unpack(">L", payload)  # the planted bug: no length check first

    monkeypatch.setattr(H2Connection, "_on_window_update", unchecked)

    @settings(_settings, max_examples=3000, phases=[Phase.generate])  # stops at a failure
    @given(frames=sessions(), mutations=_FRAME_MUTATIONS,
           cuts=st.lists(st.integers(0, 10**6), max_size=6))
    def prop(frames: list[bytes], mutations: list[tuple[str, int, Any]],
             cuts: list[int]) -> None:
        harness.feed(split(mutate(frames, mutations), cuts))

    with pytest.raises(AssertionError, match="internal error"):
        prop()


# --- a real server under garbage ----------------------------------------------------------------


def garbled_session(rng: random.Random) -> bytes:
    """A few valid calls in frames, then bytes changed or frames relabelled at random."""
    enc = hpack.Encoder()
    frames = [PREFACE, raw_frame(SETTINGS, 0, 0)]
    for sid in (1, 3, 5):
        frames.append(raw_frame(HEADERS, 0x4, sid, enc.encode(request_headers(
            rng.choice(_PATHS)))))
        frames.append(raw_frame(DATA, 0x1, sid, grpc_msg(rng.choice(_BODIES))))
    mutations: list[tuple[str, int, Any]] = [
        (rng.choice(["flip", *_FRAME_OPS]), rng.randrange(10**6), rng.randrange(1, 2**32))
        for _ in range(rng.randrange(1, 4))
    ]
    return mutate(frames, mutations)



def test_server_keeps_serving_while_others_send_garbage() -> None:
    """Thirty connections of garbage (random bytes after the preface, garbled sessions) while
    grpcio calls go on over another connection: every call is answered, every garbage
    connection ends, and the random-byte ones end with an error GOAWAY."""

    async def body() -> None:
        rng = random.Random(20261127)
        goaways: dict[tuple[int, int], int | None] = {}
        async with serving(snapshot_chunks=3, max_frame_size=16_384) as s, \
                channel(s.target) as ch:
            kv = rpc.KVStub(ch)

            async def attack(i: int, round_: int) -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
                if i % 2:
                    data = PREFACE + rng.randbytes(rng.randrange(1, 400))
                else:
                    data = garbled_session(rng)
                received = b""
                try:
                    # one write: bytes the server has not read when it closes would make its
                    # kernel answer with a reset, which may discard the GOAWAY before we read it
                    writer.write(data)
                    writer.write_eof()
                    while block := await asyncio.wait_for(reader.read(65536), STEP_S):
                        received += block
                except OSError:
                    pass  # the server closed the connection first
                finally:
                    writer.close()
                codes = [f.error_code for f in check_frames(received)
                         if isinstance(f, GoAwayFrame)]
                goaways[i, round_] = codes[0] if codes else None

            async def attacker(i: int) -> None:
                for round_ in range(5):
                    await attack(i, round_)

            async def caller(i: int) -> None:
                for j in range(20):
                    got = await kv.Put(pb.PutRequest(key=b"c%d-%d" % (i, j), value=b"v"))
                    assert got.prev_kv.key == b"c%d-%d" % (i, j)

            await asyncio.wait_for(asyncio.gather(
                *(attacker(i) for i in range(6)), *(caller(i) for i in range(4))), STEP_S * 3)
            got = await kv.Range(pb.RangeRequest(key=b"end"))
            assert got.kvs[0].key == b"end"
            assert len(s.server.connections) == 1  # the garbage connections are gone
        assert len(goaways) == 30
        random_bytes = [code for (i, _), code in goaways.items() if i % 2]
        assert all(random_bytes), goaways
        assert any(code for (i, _), code in goaways.items() if not i % 2), goaways

    run(body)
