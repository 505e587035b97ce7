"""Snapshot streaming: ordered chunks, back-pressure, verdicts, failures."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import AsyncIterator

import msgspec
import pytest

from quorum.errors import SnapshotSendFailed, UsageError
from quorum.raft.types import Message, MessageType, Snapshot, SnapshotMetadata
from quorum.transport.codec import FrameEncoder, SnapshotChunk, StreamKind
from quorum.transport.tcp import TransportConfig

from .harness import Node, app, cluster, eventually, raw_handshake, read_until_eof, run

MIB = 1024 * 1024
CONFIG = TransportConfig(snapshot_chunk_bytes=256 * 1024, backoff_initial_s=0.01,
                         backoff_max_s=0.05)


def _snap_message(frm: int = 1, to: int = 2) -> Message:
    meta = SnapshotMetadata(index=1000, term=4)
    return Message(MessageType.SNAP, to=to, from_=frm, term=4, snapshot=Snapshot(metadata=meta))


async def _pieces(payload: bytes, rng: random.Random) -> AsyncIterator[bytes]:
    pos = 0
    while pos < len(payload):
        size = rng.randint(1, 700 * 1024)
        yield payload[pos : pos + size]
        pos += size


class Assembler:
    """A receiver that keeps a running hash and the chunk layout, never the data."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.layout: list[tuple[int, int, bool, bool]] = []  # offset, size, last, has_message
        self.done = asyncio.Event()

    async def __call__(self, peer: int, chunk: SnapshotChunk) -> None:
        self.digest.update(chunk.data)
        self.layout.append((chunk.offset, len(chunk.data), chunk.last, chunk.message is not None))
        if chunk.last:
            self.done.set()


def test_multi_mib_snapshot_arrives_whole_in_bounded_chunks(loop_name: str) -> None:
    payload = random.Random(1).randbytes(6 * MIB + 12345)

    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)
        received = Assembler()
        b.chunk_handler = received
        await a.transport.send_snapshot(2, _snap_message(), _pieces(payload, random.Random(2)))
        assert received.done.is_set()  # the ACK came after the receiver took the last chunk
        assert received.digest.digest() == hashlib.sha256(payload).digest()
        offsets = [offset for offset, _, _, _ in received.layout]
        sizes = [size for _, size, _, _ in received.layout]
        assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
        assert max(sizes) <= CONFIG.snapshot_chunk_bytes
        assert [last for _, _, last, _ in received.layout] == [False] * (len(sizes) - 1) + [True]
        assert [has for _, _, _, has in received.layout] == [True] + [False] * (len(sizes) - 1)
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_first_chunk_carries_the_snap_message(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)

        async def one() -> AsyncIterator[bytes]:
            yield b"state"

        await a.transport.send_snapshot(2, _snap_message(), one())
        ((peer, chunk),) = b.chunks
        assert peer == 1 and chunk.message == _snap_message()
        assert (chunk.offset, chunk.data, chunk.last) == (0, b"state", True)
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_empty_snapshot_is_one_last_chunk(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)

        async def nothing() -> AsyncIterator[bytes]:
            return
            yield b""

        await a.transport.send_snapshot(2, _snap_message(), nothing())
        assert [(c.offset, c.data, c.last) for _, c in b.chunks] == [(0, b"", True)]
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_slow_receiver_pauses_the_sender(loop_name: str) -> None:
    total = 96 * MIB
    piece = bytes(64 * 1024)

    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)
        release, produced = asyncio.Event(), [0]
        received = Assembler()

        async def stalled(peer: int, chunk: SnapshotChunk) -> None:
            await release.wait()
            await received(peer, chunk)

        async def source() -> AsyncIterator[bytes]:
            while produced[0] < total:
                produced[0] += len(piece)
                yield piece

        b.chunk_handler = stalled
        sending = asyncio.ensure_future(a.transport.send_snapshot(2, _snap_message(), source()))
        await eventually(lambda: produced[0] > 0, "the stream started")
        await asyncio.sleep(0.3)
        # The receiver takes nothing, so only buffers hold data: the sender's transport buffer
        # (1 MiB), the kernel's socket buffers (tcp_wmem/tcp_rmem allow 4 + 32 MiB at most
        # here) and the receiver's stream buffer (2 x 256 KiB). Without back-pressure the
        # sender would have produced everything.
        assert produced[0] < total // 2
        assert not sending.done()
        release.set()
        await sending
        assert received.digest.digest() == hashlib.sha256(piece * (total // len(piece))).digest()
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_receiver_refusal_fails_the_send_and_keeps_the_link(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)

        async def refuse_third(peer: int, chunk: SnapshotChunk) -> None:
            if chunk.offset >= 2 * CONFIG.snapshot_chunk_bytes:
                raise OSError("disk full")

        b.chunk_handler = refuse_third
        payload = bytes(3 * MIB)
        with pytest.raises(SnapshotSendFailed, match="disk full"):
            await a.transport.send_snapshot(2, _snap_message(), _pieces(payload, random.Random(3)))
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: len(b.received) == 1, "messages still flow")
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_snapshot_data_inside_the_message_is_not_sent_twice(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)
        full = _snap_message()
        full = msgspec.structs.replace(
            full, snapshot=msgspec.structs.replace(full.snapshot, data=b"image" * 1000)
        )
        await a.transport.send_snapshot(2, full, _pieces(b"image" * 1000, random.Random()))
        first = b.chunks[0][1].message
        assert first is not None and first.snapshot is not None
        assert first.snapshot.data == b"" and first.snapshot.metadata == full.snapshot.metadata
        assert b"".join(c.data for _, c in b.chunks) == b"image" * 1000
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_send_snapshot_refuses_a_message_that_is_not_its_snap(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)
        with pytest.raises(UsageError):
            await a.transport.send_snapshot(2, app(1, 2, 1), _pieces(b"x", random.Random()))
        with pytest.raises(UsageError):
            await a.transport.send_snapshot(2, _snap_message(1, 3), _pieces(b"x", random.Random()))
        assert b.chunks == []
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_snapshot_to_unreachable_or_unknown_peer_fails(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)
        await b.transport.close()
        with pytest.raises(SnapshotSendFailed, match="cannot connect"):
            await a.transport.send_snapshot(2, _snap_message(), _pieces(b"x", random.Random()))
        with pytest.raises(SnapshotSendFailed, match="no address"):
            await a.transport.send_snapshot(9, _snap_message(1, 9), _pieces(b"x", random.Random()))
        await a.transport.close()

    run(scenario(), loop_name)


def test_receiver_closing_mid_stream_fails_the_send(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1, config=CONFIG), Node(2, config=CONFIG)
        await cluster(a, b)
        first = asyncio.Event()

        async def hang(peer: int, chunk: SnapshotChunk) -> None:
            first.set()
            await asyncio.Event().wait()  # never returns; close() cancels it

        b.chunk_handler = hang
        sending = asyncio.ensure_future(
            a.transport.send_snapshot(2, _snap_message(), _pieces(bytes(4 * MIB), random.Random()))
        )
        await first.wait()
        await b.transport.close()
        with pytest.raises(SnapshotSendFailed):
            await sending
        await a.transport.close()

    run(scenario(), loop_name)


@pytest.mark.parametrize(
    ("chunks", "delivered"),
    [
        ([SnapshotChunk(1, 0, b"x", False, None)], 0),  # first chunk lacks the SNAP message
        ([SnapshotChunk(1, 5, b"x", False, _snap_message())], 0),  # does not start at 0
        ([SnapshotChunk(1, 0, b"xy", False, _snap_message()), SnapshotChunk(1, 1, b"y", True)],
         1),  # overlapping offset
        ([SnapshotChunk(1, 0, b"x", False, _snap_message()), SnapshotChunk(2, 1, b"y", True)],
         1),  # another snapshot id in the middle of a stream
        ([SnapshotChunk(1, 0, b"x", True, _snap_message(frm=3))], 0),  # speaks for member 3
    ],
)
def test_malformed_snapshot_streams_close_the_connection(loop_name: str,
    chunks: list[SnapshotChunk], delivered: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        b = Node(2, config=CONFIG)
        await cluster(b)
        reader, writer, _ = await raw_handshake(b.address, from_id=1, to_id=2,
                                                kind=StreamKind.SNAPSHOT)
        writer.write(b"".join(FrameEncoder().encode(c) for c in chunks))
        assert await read_until_eof(reader) == b""  # no SNAPSHOT_ACK, just a close
        writer.close()
        assert [c for _, c in b.chunks] == chunks[:delivered]
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "closing connection" in caplog.text
