"""The frame codec: round trips, arbitrary chunkings, and typed rejection of bad input."""

from __future__ import annotations

import struct

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.errors import BadFrame, FrameError, FrameTooLarge
from quorum.raft.types import (
    LOCAL_MESSAGES,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)
from quorum.transport.codec import (
    FRAME_TYPES,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameEncoder,
    FrameType,
    Hello,
    HelloAck,
    MessageBatch,
    Ping,
    Pong,
    Reject,
    SnapshotAck,
    SnapshotChunk,
    check_inbound_messages,
    check_snapshot_message,
    frame_checksum,
)

from .strategies import frames, messages


def _app(i: int, size: int = 100) -> Message:
    entry = Entry(term=1, index=i, data=bytes([i % 256]) * size)
    return Message(MessageType.APP, to=2, from_=1, term=1, index=i - 1, entries=(entry,))


def _raw_frame(ftype: int, body: bytes, *, magic: bytes = MAGIC, version: int = PROTOCOL_VERSION,
               flags: int = 0, crc: int | None = None, length: int | None = None) -> bytes:
    length = len(body) if length is None else length
    prefix = HEADER.pack(magic, version, ftype, flags, 0, length, 0)[:10]
    crc = frame_checksum(prefix, body) if crc is None else crc
    return HEADER.pack(magic, version, ftype, flags, 0, length, crc) + body


def test_header_is_fourteen_bytes() -> None:
    assert HEADER_BYTES == 14
    frame = FrameEncoder().encode(Ping(nonce=5))
    assert frame[:2] == MAGIC and frame[2] == PROTOCOL_VERSION and frame[3] == FrameType.PING


def test_messages_round_trip_in_order() -> None:
    msgs = [_app(i) for i in range(1, 50)]
    data = b"".join(FrameEncoder().encode_messages(msgs))
    (frame,) = FrameDecoder().feed(data)
    assert isinstance(frame, MessageBatch)
    assert frame.messages == msgs


@settings(max_examples=150, deadline=None)
@given(st.lists(frames, min_size=1, max_size=8), st.data())
def test_any_frames_survive_any_chunking(sent: list[Frame], data: st.DataObject) -> None:
    encoder = FrameEncoder()
    stream = b"".join(encoder.encode(f) for f in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder, received = FrameDecoder(), []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        received += decoder.feed(stream[start:end])
    assert received == sent
    assert decoder.buffered_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_frame_errors(garbage: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=1 << 16)
    try:
        got = decoder.feed(garbage)
    except FrameError:
        return
    # No error: whatever came out is a typed frame, and the unconsumed rest is still buffered.
    assert all(type(f) in FRAME_TYPES for f in got)
    assert decoder.buffered_bytes <= len(garbage)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 4096))
def test_random_body_with_valid_header_raises_only_frame_errors(
    garbage: bytes, ftype_pick: int
) -> None:
    # A correct header and CRC around garbage: only the typed body decode can catch it.
    ftype = list(FrameType)[ftype_pick % len(FrameType)]
    try:
        got = FrameDecoder().feed(_raw_frame(ftype, garbage))
    except FrameError:
        return
    # It decoded: then it is exactly one frame of the type the header named.
    assert len(got) == 1 and FRAME_TYPES[type(got[0])] == ftype


@settings(max_examples=300, deadline=None)
@given(frames, st.data())
def test_single_bit_flip_is_never_accepted(frame: Frame, data: st.DataObject) -> None:
    encoded = bytearray(FrameEncoder().encode(frame))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    try:
        got = FrameDecoder().feed(bytes(encoded))
    except FrameError:
        return
    # Only a length flip that makes the frame look longer can pass silently: it waits for more.
    assert got == []


EVERY_TYPE = [
    Hello(cluster_id=7, from_id=1, to_id=2),
    HelloAck(member_id=2),
    Reject(reason="no"),
    MessageBatch([_app(1, size=8)]),
    SnapshotChunk(snapshot_id=0, offset=0, data=b"d", last=True),
    SnapshotAck(snapshot_id=0, ok=False),
    Ping(nonce=0),
    Pong(nonce=0),
]


@pytest.mark.parametrize("frame", EVERY_TYPE, ids=lambda f: type(f).__name__)
def test_every_single_bit_flip_is_caught(frame: Frame) -> None:
    # Exhaustive over bit positions. Bodies of different types can decode as each other
    # (e.g. SnapshotAck(0, False, "") read as Ping(0)), so the CRC must cover the type byte.
    encoded = FrameEncoder().encode(frame)
    for bit in range(len(encoded) * 8):
        flipped = bytearray(encoded)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            got = FrameDecoder().feed(bytes(flipped))
        except FrameError:
            continue
        assert got == [], f"bit {bit} flipped went unnoticed: {got}"


def test_bad_magic() -> None:
    with pytest.raises(BadFrame, match="magic"):
        FrameDecoder().feed(_raw_frame(FrameType.PING, b"\x91\x01", magic=b"XX"))


def test_bad_version() -> None:
    with pytest.raises(BadFrame, match="version"):
        FrameDecoder().feed(_raw_frame(FrameType.PING, b"\x91\x01", version=9))
    # version 1 nodes cannot apply batched entries or format 2 snapshots: refused too
    with pytest.raises(BadFrame, match="version 1"):
        FrameDecoder().feed(_raw_frame(FrameType.PING, b"\x91\x01", version=1))


def test_unknown_frame_type_and_flags() -> None:
    with pytest.raises(BadFrame, match="type"):
        FrameDecoder().feed(_raw_frame(99, b"\x91\x01"))
    with pytest.raises(BadFrame, match="flags"):
        FrameDecoder().feed(_raw_frame(FrameType.PING, b"\x91\x01", flags=1))


def test_crc_mismatch() -> None:
    with pytest.raises(BadFrame, match="CRC32C"):
        FrameDecoder().feed(_raw_frame(FrameType.PING, b"\x91\x01", crc=12345))


def test_undecodable_and_ill_typed_bodies() -> None:
    with pytest.raises(BadFrame, match="undecodable"):
        FrameDecoder().feed(_raw_frame(FrameType.PING, b"\xc1"))
    # well-formed msgpack of the wrong shape: a negative nonce violates the schema
    with pytest.raises(BadFrame, match="undecodable"):
        FrameDecoder().feed(_raw_frame(FrameType.PING, b"\x91\xff"))
    # a message type the enum does not know
    bad_msg = b"\x91\x91\x91\x7f"  # MessageBatch([Message(type=127)])
    with pytest.raises(BadFrame, match="undecodable"):
        FrameDecoder().feed(_raw_frame(FrameType.MESSAGES, bad_msg))


@pytest.mark.parametrize("ftype", [FrameType.REJECT, FrameType.SNAPSHOT_ACK])
def test_invalid_utf8_in_a_string_field_is_a_bad_frame(ftype: FrameType) -> None:
    # msgspec raises UnicodeDecodeError (not DecodeError) here; Hypothesis found it.
    body = b"\x91\xa5\x00\x00\x00\x00\x80" if ftype == FrameType.REJECT else (
        b"\x93\x01\xc2\xa2\xff\xfe")
    with pytest.raises(BadFrame, match="undecodable"):
        FrameDecoder().feed(_raw_frame(ftype, body))


def test_oversized_frame_rejected_from_header_alone() -> None:
    decoder = FrameDecoder(max_frame_bytes=1024)
    header = _raw_frame(FrameType.MESSAGES, b"", length=1025)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(header)  # no body bytes sent: nothing is buffered waiting for it
    assert (info.value.length, info.value.limit) == (1025, 1024)


def test_decoder_refuses_input_after_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(BadFrame):
        decoder.feed(b"garbage-garbage-garbage")
    with pytest.raises(BadFrame, match="already failed"):
        decoder.feed(FrameEncoder().encode(Ping(nonce=1)))


def test_partial_frame_waits_for_more() -> None:
    frame = FrameEncoder().encode(Ping(nonce=7))
    decoder = FrameDecoder()
    assert decoder.feed(frame[:HEADER_BYTES + 1]) == []
    assert decoder.buffered_bytes == HEADER_BYTES + 1
    assert decoder.feed(frame[HEADER_BYTES + 1 :]) == [Ping(nonce=7)]


def test_encoder_enforces_the_limit_and_splits_batches() -> None:
    encoder = FrameEncoder(max_frame_bytes=4096)
    msgs = [_app(i, size=1000) for i in range(1, 21)]  # ~20 KB in total
    encoded = encoder.encode_messages(msgs)
    assert len(encoded) > 1
    assert all(len(f) - HEADER_BYTES <= 4096 for f in encoded)
    decoder, got = FrameDecoder(max_frame_bytes=4096), []
    for frame in decoder.feed(b"".join(encoded)):
        assert isinstance(frame, MessageBatch)
        got += frame.messages
    assert got == msgs
    with pytest.raises(FrameTooLarge):
        encoder.encode_messages([_app(1, size=5000)])


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_bytes=0)


def test_handshake_body_needs_real_node_ids() -> None:
    body = FrameEncoder().encode(Hello(cluster_id=1, from_id=1, to_id=2))[HEADER_BYTES:]
    zero_to = body.replace(b"\x02", b"\x00", 1)  # Hello(to_id=0): "no node" is not a peer
    with pytest.raises(BadFrame):
        FrameDecoder().feed(_raw_frame(FrameType.HELLO, zero_to))


@settings(deadline=None)  # no wall-clock limits: the suite runs on a loaded shared VM
@given(st.lists(messages, min_size=1, max_size=5))
def test_inbound_check_accepts_only_the_links_own_messages(msgs: list[Message]) -> None:
    fixed = [msgspec.structs.replace(m, to=2, from_=1) for m in msgs]
    has_local = any(m.type in LOCAL_MESSAGES for m in fixed)
    if has_local:
        with pytest.raises(BadFrame, match="local-only"):
            check_inbound_messages(fixed, from_id=1, to_id=2)
    else:
        check_inbound_messages(fixed, from_id=1, to_id=2)
    with pytest.raises(BadFrame):
        check_inbound_messages(fixed, from_id=3, to_id=2)  # a peer speaking for another
    with pytest.raises(BadFrame):
        check_inbound_messages(fixed, from_id=1, to_id=4)  # addressed to someone else


def test_snapshot_message_check() -> None:
    snap = Message(MessageType.SNAP, to=2, from_=1, term=3,
                   snapshot=Snapshot(metadata=SnapshotMetadata(index=10, term=3)))
    assert check_snapshot_message(snap, 1, 2) is snap
    for bad in (None, _app(1), Message(MessageType.SNAP, to=2, from_=1)):
        with pytest.raises(BadFrame):
            check_snapshot_message(bad, 1, 2)
    with pytest.raises(BadFrame):
        check_snapshot_message(snap, 3, 2)


def test_snapshot_chunk_round_trip() -> None:
    chunk = SnapshotChunk(snapshot_id=4, offset=0, data=b"x" * 1000, last=False,
                          message=Message(MessageType.SNAP, to=2, from_=1))
    assert FrameDecoder().feed(FrameEncoder().encode(chunk)) == [chunk]


def test_struct_sizes_in_header_are_network_order() -> None:
    frame = FrameEncoder().encode(Ping(nonce=1))
    (length,) = struct.unpack("!I", frame[6:10])
    assert length == len(frame) - HEADER_BYTES
