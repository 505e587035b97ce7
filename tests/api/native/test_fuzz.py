"""Protocol fuzz (TEST_SCENARIOS K.58): random and mutated frames never take the server
down, never disturb another connection, and a request that decodes is answered with a
result or a typed error, never an internal one."""

from __future__ import annotations

import asyncio
import random

import msgspec

from quorum.api.local import LocalBackend
from quorum.api.native import messages as m
from quorum.api.native.framing import FrameDecoder, frame
from quorum.api.native.server import serve_native
from quorum.client import txn as t
from quorum.state.commands import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
)

ENC = msgspec.msgpack.Encoder()
DEC = msgspec.msgpack.Decoder(m.Response)
REQ_DEC = msgspec.msgpack.Decoder(m.Request)

SEEDS: list[m.RequestBody] = [
    RangeRequest(b"k", b"\0", limit=3),
    PutRequest(b"k", b"v", lease=0),
    DeleteRangeRequest(b"a", b"z"),
    t.txn([t.version(b"k") > 0], [t.put(b"k", b"w")], [t.get(b"k")]),
    CompactionRequest(1),
    LeaseGrantRequest(5),
    LeaseRevokeRequest(1),
    m.LeaseTimeToLiveReq(1, True),
    m.WatchCreateReq(b"k", start_revision=1),
    m.HashKVReq(0),
    m.StatusReq(),
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        pos = rng.randrange(len(buf)) if buf else 0
        if choice < 0.5 and buf:
            buf[pos] = rng.randrange(256)
        elif choice < 0.75:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif buf:
            del buf[pos : pos + rng.randint(1, 4)]
    return bytes(buf)


def _odd_request(rng: random.Random) -> m.RequestBody:
    """A well-formed request with hostile values: negative or huge revisions and TTLs,
    empty keys, range ends before keys, unknown leases and watch ids."""
    num = rng.choice([-(2**40), -1, 0, 1, 2, 10**9, 2**62])
    key = rng.choice([b"", b"k", b"\xff" * 3, b"z" * 300])
    end = rng.choice([b"", b"\0", b"a", b"\xff"])
    return rng.choice(
        [
            RangeRequest(key, end, limit=num, revision=num),
            PutRequest(key, b"v", lease=num, ignore_value=rng.random() < 0.3),
            DeleteRangeRequest(key, end),
            CompactionRequest(num),
            LeaseGrantRequest(num, num),
            LeaseRevokeRequest(num),
            m.LeaseKeepAliveReq(num),
            m.LeaseTimeToLiveReq(num),
            m.WatchCreateReq(key, end, start_revision=num),
            m.WatchCancelReq(num),
            m.HashKVReq(num),
            t.txn([t.mod_revision(key) < num], [t.get(key, end)], [t.delete(key, end)]),
        ]
    )


def _payloads(rng: random.Random, n: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(n):
        kind = i % 4
        if kind == 3:
            out.append(frame(ENC.encode(m.Request(i + 1, _odd_request(rng)))))
        elif kind == 0:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
        else:
            body = ENC.encode(m.Request(i + 1, rng.choice(SEEDS)))
            mutated = _mutate(rng, body)
            out.append(frame(mutated) if kind == 1 else _mutate(rng, frame(mutated)))
    return out


async def _exchange(port: int, payload: bytes) -> list[m.Response]:
    """Send one payload, collect answers until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    writer.write_eof()
    decoder = FrameDecoder()
    answers: list[m.Response] = []
    try:
        while data := await asyncio.wait_for(reader.read(65536), 0.5):
            answers += [DEC.decode(b) for b in decoder.feed(data)]
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return answers


def test_fuzzed_frames() -> None:
    async def body() -> None:
        backend = LocalBackend()
        server = await serve_native(backend, "127.0.0.1", 0, max_frame_bytes=1 << 16)
        rng = random.Random(58)
        decoded = 0
        for payload in _payloads(rng, 300):
            for answer in await _exchange(server.port, payload):
                if isinstance(answer.body, m.ErrorResp):
                    assert answer.body.code != "Internal", answer.body.message
            try:
                for body_bytes in FrameDecoder(1 << 16).feed(payload):
                    REQ_DEC.decode(body_bytes)
                    decoded += 1
            except Exception:
                pass
        assert decoded >= 75  # hostile but well-formed requests did reach the backend
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(frame(ENC.encode(m.Request(1, PutRequest(b"after", b"fuzz")))))
        data = await asyncio.wait_for(reader.read(65536), 5)
        (answer,) = [DEC.decode(b) for b in FrameDecoder().feed(data)]
        assert answer.id == 1 and not isinstance(answer.body, m.ErrorResp)
        writer.close()
        await server.close()

    asyncio.run(asyncio.wait_for(body(), 60))
