"""PeerTransport over loopback: ordering, handshakes, bad peers, reconnects, back-pressure."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from quorum.errors import ConfigError
from quorum.raft.types import Message, MessageType
from quorum.transport.codec import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameEncoder,
    FrameType,
    Hello,
    HelloAck,
    MessageBatch,
    Reject,
    SnapshotChunk,
    StreamKind,
)
from quorum.transport.tcp import Backoff, TransportConfig

from .harness import (
    LOOPBACK,
    Node,
    app,
    cluster,
    eventually,
    raw_handshake,
    read_until_eof,
    run,
)


async def _send_stream(sender: Node, to: int, count: int, rng: random.Random) -> None:
    """Send ``count`` APPs in batches of random size, yielding to the loop between batches."""
    index = 1
    while index <= count:
        size = min(rng.randint(1, 64), count - index + 1)
        sender.transport.send([app(sender.member_id, to, i) for i in range(index, index + size)])
        index += size
        if rng.random() < 0.5:
            await asyncio.sleep(0)


def _indexes(msgs: list[Message]) -> list[int]:
    return [m.entries[0].index for m in msgs]


def test_two_transports_exchange_thousands_of_messages_in_order(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        rng = random.Random(11)
        await asyncio.gather(_send_stream(a, 2, 5000, rng), _send_stream(b, 1, 5000, rng))
        await eventually(lambda: len(a.received) == 5000 and len(b.received) == 5000,
                         "all messages delivered")
        assert _indexes(b.received) == list(range(1, 5001))
        assert _indexes(a.received) == list(range(1, 5001))
        assert a.unreachable == [] and b.unreachable == []
        stats = a.transport.link_stats()[2]
        assert stats.sent_messages == 5000 and stats.dropped_messages == 0
        assert stats.sent_frames < 5000  # batching: several messages per frame
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_three_transports_keep_order_per_link(loop_name: str) -> None:
    async def scenario() -> None:
        nodes = [Node(1), Node(2), Node(3)]
        await cluster(*nodes)
        rng = random.Random(5)
        await asyncio.gather(*(
            _send_stream(src, dst.member_id, 2000, rng)
            for src in nodes for dst in nodes if src is not dst
        ))
        await eventually(lambda: all(len(n.received) == 4000 for n in nodes), "all delivered")
        for dst in nodes:
            for src in nodes:
                if src is not dst:
                    assert _indexes(dst.from_peer(src.member_id)) == list(range(1, 2001))
        for node in nodes:
            await node.transport.close()

    run(scenario(), loop_name)


def test_wrong_cluster_id_is_rejected_and_reported(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        a, b = Node(1, cluster_id=1), Node(2, cluster_id=2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: 2 in a.unreachable, "A reports B unreachable")
        await eventually(lambda: b.transport.rejected_connections > 0, "B rejects A")
        assert b.received == []
        await a.transport.close()
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "cluster id 1 is not 2" in caplog.text


def test_a_version_1_peer_is_refused(loop_name: str) -> None:
    """Version 1 nodes cannot apply batched entries or format 2 snapshots: a HELLO claiming
    version 1 gets a REJECT naming it, and the connection closes."""
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        reader, writer, reply = await raw_handshake(b.address, from_id=1, to_id=2, version=1)
        assert isinstance(reply, Reject) and "protocol version 1 unsupported" in reply.reason
        assert await read_until_eof(reader) == b""
        writer.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_wrong_member_id_gets_reject_frame_and_close(loop_name: str) -> None:
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        reader, writer, reply = await raw_handshake(b.address, from_id=1, to_id=5)
        assert isinstance(reply, Reject) and "this is member 2, not 5" in reply.reason
        assert await read_until_eof(reader) == b""
        writer.close()
        # the server keeps serving correct callers
        reader, writer, reply = await raw_handshake(b.address, from_id=1, to_id=2)
        assert reply == HelloAck(member_id=2)
        writer.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_garbage_closes_only_that_connection(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: len(b.received) == 1, "first message")
        reader, writer = await asyncio.open_connection(*b.address)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await read_until_eof(reader) == b""  # closed by the server
        writer.close()
        a.transport.send([app(1, 2, 2)])
        await eventually(lambda: len(b.received) == 2, "link still works")
        assert a.unreachable == []
        await a.transport.close()
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "bad magic" in caplog.text


def test_oversized_frame_closes_the_connection(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = TransportConfig(max_frame_bytes=64 * 1024, snapshot_chunk_bytes=16 * 1024)

    async def scenario() -> None:
        b = Node(2, config=config)
        await cluster(b)
        reader, writer, reply = await raw_handshake(b.address, from_id=1, to_id=2)
        assert isinstance(reply, HelloAck)
        writer.write(HEADER.pack(MAGIC, PROTOCOL_VERSION, FrameType.MESSAGES, 0, 0, 64 * 1024 + 1, 0))
        assert await read_until_eof(reader) == b""
        writer.close()
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "exceeds the limit of 65536" in caplog.text


def test_sender_drops_a_message_larger_than_the_limit(loop_name: str) -> None:
    config = TransportConfig(max_frame_bytes=64 * 1024, snapshot_chunk_bytes=16 * 1024,
                             backoff_initial_s=0.01, backoff_max_s=0.05)

    async def scenario() -> None:
        a, b = Node(1, config=config), Node(2, config=config)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1), app(1, 2, 2, payload=100_000), app(1, 2, 3)])
        await eventually(lambda: len(b.received) == 2, "the small messages arrive")
        assert _indexes(b.received) == [1, 3]
        assert 2 in a.unreachable
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_truncated_frame_is_logged(loop_name: str, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        reader, writer, _ = await raw_handshake(b.address, from_id=1, to_id=2)
        frame = FrameEncoder().encode(MessageBatch([app(1, 2, 1)]))
        writer.write(frame[: len(frame) // 2])
        writer.write_eof()
        assert await read_until_eof(reader) == b""
        writer.close()
        await eventually(lambda: "truncated" in caplog.text, "the truncation is logged")
        assert b.received == []
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)


def test_peer_cannot_speak_for_another_member(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        reader, writer, _ = await raw_handshake(b.address, from_id=1, to_id=2)
        writer.write(FrameEncoder().encode(MessageBatch([app(3, 2, 1)])))  # claims to be 3
        assert await read_until_eof(reader) == b""
        writer.close()
        assert b.received == []
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "on the link from 1 to 2" in caplog.text


def test_local_message_types_are_refused_at_the_gateway(loop_name: str) -> None:
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        reader, writer, _ = await raw_handshake(b.address, from_id=1, to_id=2)
        hup = Message(MessageType.HUP, to=2, from_=1)
        writer.write(FrameEncoder().encode(MessageBatch([app(1, 2, 1), hup])))
        assert await read_until_eof(reader) == b""
        writer.close()
        assert b.received == []  # the whole batch is refused, not a prefix
        await b.transport.close()

    run(scenario(), loop_name)


def test_newer_message_stream_from_a_peer_supersedes_the_older(loop_name: str) -> None:
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        old_reader, old_writer, _ = await raw_handshake(b.address, from_id=1, to_id=2)
        old_writer.write(FrameEncoder().encode(MessageBatch([app(1, 2, 1)])))
        await eventually(lambda: len(b.received) == 1, "delivery on the first stream")
        _, new_writer, reply = await raw_handshake(b.address, from_id=1, to_id=2)
        assert reply == HelloAck(member_id=2)
        assert await read_until_eof(old_reader) == b""  # the older stream is closed
        new_writer.write(FrameEncoder().encode(MessageBatch([app(1, 2, 2)])))
        await eventually(lambda: len(b.received) == 2, "delivery on the newer stream")
        # a snapshot stream from the same peer does not supersede the message stream
        _, snap_writer, _ = await raw_handshake(b.address, from_id=1, to_id=2,
                                                kind=StreamKind.SNAPSHOT)
        new_writer.write(FrameEncoder().encode(MessageBatch([app(1, 2, 3)])))
        await eventually(lambda: len(b.received) == 3, "still delivering")
        for writer in (old_writer, new_writer, snap_writer):
            writer.close()
        await b.transport.close()

    run(scenario(), loop_name)


@pytest.mark.parametrize(
    ("kind", "frame"),
    [
        (StreamKind.MESSAGES, SnapshotChunk(1, 0, b"x", True, None)),
        (StreamKind.SNAPSHOT, MessageBatch([app(1, 2, 1)])),
        (StreamKind.MESSAGES, Hello(7, 1, 2)),
    ],
)
def test_frames_of_the_wrong_stream_kind_close_the_connection(loop_name: str,
    kind: StreamKind, frame: Frame, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        reader, writer, _ = await raw_handshake(b.address, from_id=1, to_id=2, kind=kind)
        writer.write(FrameEncoder().encode(frame))
        assert await read_until_eof(reader) == b""
        writer.close()
        assert b.received == [] and b.chunks == []
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert f"on a {'message' if kind == StreamKind.MESSAGES else 'snapshot'} stream" in caplog.text


def test_silent_dialer_is_dropped_after_the_handshake_timeout(loop_name: str) -> None:
    config = TransportConfig(handshake_timeout_s=0.05)

    async def scenario() -> None:
        b = Node(2, config=config)
        await cluster(b)
        reader, writer = await asyncio.open_connection(*b.address)  # and never says HELLO
        assert await read_until_eof(reader) == b""
        writer.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_a_failing_callback_closes_only_that_connection(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        calls: list[list[Message]] = []

        def explode(msgs: list[Message]) -> None:
            calls.append(msgs)
            if len(calls) == 1:
                raise RuntimeError("runtime bug")
            b.received.extend(msgs)

        a, b = Node(1), Node(2, on_messages=explode)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: 2 in a.unreachable, "A's link is cut and reported")
        index = 2
        while not b.received:  # A reconnects; B keeps serving
            a.transport.send([app(1, 2, index)])
            index += 1
            await asyncio.sleep(0.01)
            assert index < 2000, "A never got through again"
        await a.transport.close()
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "callback failed" in caplog.text


def test_reconnect_after_peer_restart(loop_name: str) -> None:
    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: len(b.received) == 1, "before restart")
        port = b.address[1]
        await b.transport.close()
        await eventually(lambda: 2 in a.unreachable, "A notices B is gone")
        b2 = Node(2, port=port)
        await b2.transport.start()
        index = 2
        while not b2.received:  # messages sent while A backs off are dropped; keep trying
            a.transport.send([app(1, 2, index)])
            index += 1
            await asyncio.sleep(0.01)
            assert index < 2000, "A never reconnected"
        a.transport.send([app(1, 2, 10_000)])
        await eventually(lambda: b2.received[-1].entries[0].index == 10_000, "after restart")
        assert a.transport.link_stats()[2].connects >= 2
        await a.transport.close()
        await b2.transport.close()

    run(scenario(), loop_name)


def test_bounded_queue_drops_and_reports_unreachable(loop_name: str) -> None:
    config = TransportConfig(max_queued_messages=100, handshake_timeout_s=30.0)

    async def scenario() -> None:
        # A peer that accepts the connection and never answers the HELLO: the link stays in
        # its handshake, so everything sent queues up.
        accepted: list[asyncio.StreamWriter] = []
        silent = await asyncio.start_server(lambda r, w: accepted.append(w), LOOPBACK, 0)
        address = silent.sockets[0].getsockname()[:2]
        a = Node(1, config=config)
        await a.transport.start()
        a.transport.update_peers({2: address})
        a.transport.send([app(1, 2, i) for i in range(1, 61)])
        assert a.unreachable == []
        a.transport.send([app(1, 2, i) for i in range(61, 151)])
        assert a.unreachable == [2]
        assert a.transport.link_stats()[2].dropped_messages == 50
        a.transport.send([app(1, 3, 1)])  # unknown peer: dropped and reported as well
        assert a.unreachable == [2, 3]
        await a.transport.close()
        silent.close()
        for writer in accepted:
            writer.close()
        await silent.wait_closed()

    run(scenario(), loop_name)


def test_healthy_link_answers_pings(loop_name: str) -> None:
    config = TransportConfig(ping_interval_s=0.01, ping_timeout_s=2.0)

    async def scenario() -> None:
        a, b = Node(1, config=config), Node(2, config=config)
        await cluster(a, b)
        await eventually(lambda: a.transport.link_stats()[2].pongs_received >= 5, "PONGs")
        assert a.unreachable == [] and a.transport.link_stats()[2].connects == 1
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_silent_peer_is_detected_by_keepalive(
    loop_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = TransportConfig(ping_interval_s=0.01, ping_timeout_s=0.05,
                             backoff_initial_s=0.01, backoff_max_s=0.02)

    async def scenario() -> None:
        # A peer that accepts the handshake, then reads forever and never answers a PING:
        # what a link sees when the network drops packets without closing the connection.
        async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(65536)
            writer.write(FrameEncoder().encode(HelloAck(member_id=2)))
            try:
                while await reader.read(65536):
                    pass
            finally:
                writer.close()

        hole = await asyncio.start_server(black_hole, LOOPBACK, 0)
        a = Node(1, config=config)
        await a.transport.start()
        a.transport.update_peers({2: hole.sockets[0].getsockname()[:2]})
        await eventually(lambda: a.transport.link_stats()[2].connects >= 2, "a reconnect")
        assert 2 in a.unreachable
        await a.transport.close()
        hole.close()
        await hole.wait_closed()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "no PONG" in caplog.text


def test_update_peers_adds_moves_and_removes(loop_name: str) -> None:
    async def scenario() -> None:
        a, b, c = Node(1), Node(2), Node(3)
        await cluster(a, b)
        await c.transport.start()
        a.transport.update_peers({2: b.address, 3: c.address})
        a.transport.send([app(1, 3, 1)])
        await eventually(lambda: len(c.received) == 1, "new peer reachable")
        a.transport.update_peers({2: b.address})
        a.transport.send([app(1, 3, 2)])
        assert 3 in a.unreachable
        # "member 2" moves to c's address: c rejects it (it is member 3), so A reports it
        a.transport.update_peers({2: c.address})
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: a.unreachable.count(2) >= 1, "moved peer rejects")
        assert len(c.received) == 1 and b.received == []
        for node in (a, b, c):
            await node.transport.close()

    run(scenario(), loop_name)


def test_close_is_prompt_and_leaves_no_tasks(loop_name: str) -> None:
    async def scenario() -> None:
        baseline = asyncio.all_tasks()
        a, b = Node(1), Node(2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        b.transport.send([app(2, 1, 1)])
        await eventually(lambda: a.received and b.received, "traffic both ways")
        await a.transport.close()
        await b.transport.close()
        await asyncio.sleep(0)
        assert asyncio.all_tasks() - baseline == set()
        a.transport.send([app(1, 2, 2)])  # after close: dropped, reported, no error
        assert 2 in a.unreachable

    run(scenario(), loop_name)


def test_backoff_grows_caps_and_jitters_deterministically() -> None:
    config = TransportConfig(backoff_initial_s=0.1, backoff_max_s=1.0, backoff_multiplier=2.0,
                             backoff_jitter=0.2)
    first = Backoff(config, random.Random(3))
    delays = [first.next_delay_s() for _ in range(12)]
    bases = [0.1, 0.2, 0.4, 0.8] + [1.0] * 8
    for delay, base in zip(delays, bases):
        assert base * 0.8 <= delay <= base * 1.2
    again = Backoff(config, random.Random(3))
    assert [again.next_delay_s() for _ in range(12)] == delays
    first.reset()
    assert first.next_delay_s() <= 0.12


@pytest.mark.parametrize(
    "bad",
    [
        {"max_frame_bytes": 0},
        {"max_frame_bytes": 2**32},
        {"max_queued_messages": 0},
        {"backoff_initial_s": 1.0, "backoff_max_s": 0.5},
        {"backoff_jitter": 1.0},
        {"backoff_multiplier": 0.5},
        {"max_frame_bytes": 1024, "snapshot_chunk_bytes": 1024},
    ],
)
def test_config_validation(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TransportConfig(**bad).validate()  # type: ignore[arg-type]
    TransportConfig().validate()


def test_frame_decoder_sees_one_hello_ack_per_handshake(loop_name: str) -> None:
    async def scenario() -> None:
        b = Node(2)
        await cluster(b)
        reader, writer, reply = await raw_handshake(b.address, from_id=1, to_id=2)
        assert reply == HelloAck(member_id=2)
        writer.write_eof()
        assert FrameDecoder().feed(await read_until_eof(reader)) == []
        writer.close()
        await b.transport.close()

    run(scenario(), loop_name)


@pytest.mark.parametrize("flush", [True, False])
def test_flush_writes_at_once_instead_of_at_the_next_loop_turn(flush: bool) -> None:
    """``flush()`` writes the queued messages before the caller yields (append acks leave
    right after their fsync); without it they wait for the next loop turn."""

    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: len(b.received) == 1, "the link is up")
        stats = a.transport.link_stats()[2]
        a.transport.send([app(1, 2, 2), app(1, 2, 3)])
        if flush:
            a.transport.flush()
        written_before_yielding = stats.sent_messages
        await eventually(lambda: len(b.received) == 3, "delivered")
        assert written_before_yielding == (3 if flush else 1)
        assert _indexes(b.received) == [1, 2, 3]
        await a.transport.close()
        await b.transport.close()

    run(scenario())


def test_on_peer_closed_reports_a_peer_that_went_away_not_our_own_close(loop_name: str) -> None:
    async def scenario() -> None:
        a, b, c = Node(1), Node(2), Node(3)
        closed: dict[int, list[int]] = {1: [], 2: [], 3: []}
        for node in (a, b, c):
            node.transport.on_peer_closed = closed[node.member_id].append
        await cluster(a, b, c)  # every node dials every other: six live message streams
        for src in (a, b, c):
            src.transport.send([app(src.member_id, dst, 1) for dst in (1, 2, 3)
                                if dst != src.member_id])
        await eventually(lambda: all(len(n.received) == 2 for n in (a, b, c)), "links up")
        await a.transport.close()  # node 1 goes away: both others notice
        await eventually(lambda: closed[2] == [1] and closed[3] == [1], "1's streams closed")
        await b.transport.close()  # our own close is not reported; node 3 sees 2 go
        await eventually(lambda: closed[3] == [1, 2], "2's stream to 3 closed")
        await c.transport.close()
        assert closed == {1: [], 2: [1], 3: [1, 2]}

    run(scenario(), loop_name)


def test_flush_on_a_connection_closed_under_it_marks_the_link_broken(loop_name: str) -> None:
    """A write to a transport that closed under the link (the peer reset it, and the reader
    has not noticed yet) must not raise out of send()/flush(): under uvloop it raised
    RuntimeError, which the node's Ready loop took for a fatal error and stopped the node.
    The link counts the batch as dropped, reconnects, and later messages arrive."""

    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])
        await eventually(lambda: len(b.received) == 1, "the link is up")
        link = a.transport._links[2]
        writer = link._writer
        assert writer is not None
        writer.transport.abort()  # what a reset from the peer leaves behind
        await asyncio.sleep(0)  # the transport is closed now; the link's reader runs later
        a.transport.send([app(1, 2, 2)])
        a.transport.flush()  # must not raise
        await eventually(lambda: link._writer is not None and link._writer is not writer,
                         "the link reconnected")
        a.transport.send([app(1, 2, 3)])
        a.transport.flush()
        await eventually(lambda: _indexes(b.received)[-1:] == [3], "a later message arrives")
        await a.transport.close()
        await b.transport.close()

    run(scenario(), loop_name)


def test_a_connection_reset_before_the_handshake_is_retried(
    loop_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer resets the connection between its accept and our HELLO (a peer being killed
    while we dial it). Under uvloop writing the HELLO raised RuntimeError, which ended the
    link's task: the link went on accepting messages that were never written, nothing was
    logged, and the node stayed cut off from that peer until it restarted. The attempt must
    count as a failed connect (logged) and the link must reconnect."""
    real = asyncio.open_connection
    dials: list[int] = []  # the port of each dial: each link's first attempt is reset

    async def reset_first(host: str, port: int, **kwargs: object) -> object:
        reader, writer = await real(host, port, **kwargs)  # type: ignore[arg-type]
        dials.append(port)
        if dials.count(port) == 1:
            writer.transport.abort()  # closed before the dialer's first write
        return reader, writer

    monkeypatch.setattr(asyncio, "open_connection", reset_first)

    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        link = a.transport._links[2]
        await eventually(lambda: link.stats.connects == 1, "the link connects")
        assert link.stats.connect_failures == 1  # the reset attempt
        a.transport.send([app(1, 2, 1)])
        a.transport.flush()
        await eventually(lambda: _indexes(b.received) == [1], "the message arrives")
        await a.transport.close()
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    assert "link 1->2 down: cannot connect" in caplog.text


def test_an_unexpected_error_in_a_link_is_logged_and_the_link_lives_on(
    loop_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever a link's task meets while connecting, it must not end silently (a dead link
    task is an unlogged partition from that peer): the error is logged with its traceback
    and the link retries."""
    from quorum.transport.tcp import PeerTransport

    real_dial = PeerTransport.dial
    calls: list[int] = []  # the peer of each dial: each link's first attempt fails

    async def failing_once(self: PeerTransport, peer_id: int, *args: object,
                           **kwargs: object) -> object:
        calls.append(peer_id)
        if calls.count(peer_id) == 1:
            raise RuntimeError("planted fault in dial")
        return await real_dial(self, peer_id, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(PeerTransport, "dial", failing_once)

    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        a.transport.send([app(1, 2, 1)])  # dropped or queued, depending on the timing
        link = a.transport._links[2]
        await eventually(lambda: link.stats.connects == 1, "the link connects after all")
        a.transport.send([app(1, 2, 2)])
        a.transport.flush()
        await eventually(lambda: _indexes(b.received)[-1:] == [2], "a later message arrives")
        await a.transport.close()
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("unexpected error while connecting" in r.getMessage() and r.exc_info
               for r in errors)


def test_an_unexpected_error_while_writing_is_logged_and_the_link_reconnects(
    loop_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same rule once connected: an error the write path did not expect ends that
    connection (logged with its traceback), not the link."""
    from quorum.transport.tcp import _Link

    real_loop = _Link._write_loop
    calls: list[int] = []  # the peer of each connection served

    async def failing_once(self: _Link, writer: asyncio.StreamWriter) -> None:
        calls.append(self.peer_id)
        if calls.count(self.peer_id) == 1:
            raise RuntimeError("planted fault in the write loop")
        await real_loop(self, writer)

    monkeypatch.setattr(_Link, "_write_loop", failing_once)

    async def scenario() -> None:
        a, b = Node(1), Node(2)
        await cluster(a, b)
        link = a.transport._links[2]
        await eventually(lambda: link.stats.connects == 2, "the link connects again")
        a.transport.send([app(1, 2, 1)])
        a.transport.flush()
        await eventually(lambda: _indexes(b.received) == [1], "the message arrives")
        await a.transport.close()
        await b.transport.close()

    with caplog.at_level(logging.WARNING, logger="quorum.transport"):
        run(scenario(), loop_name)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("unexpected error while writing" in r.getMessage() and r.exc_info
               for r in errors)
