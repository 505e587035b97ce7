"""The peer wire format: a sans-I/O frame codec.

A frame is a fixed 14-byte header followed by a msgpack body (network byte order)::

    offset  size  field
    0       2     magic  b"QT"
    2       1     protocol version (1)
    3       1     frame type (FrameType)
    4       1     flags (none defined in version 1; must be 0)
    5       1     reserved (must be 0)
    6       4     body length in bytes (u32), at most the configured maximum frame size
    10      4     CRC32C of header bytes 0..9 followed by the body (u32)
    14      ...   body: one msgspec Struct per frame type, encoded as a msgpack array

The CRC covers the header fields as well as the body: bodies of different frame types can
decode as each other (msgspec ignores trailing array items, which keeps old readers working
with new fields), so a flipped type byte must be caught by the checksum, not by luck.

Nothing here does I/O: :class:`FrameEncoder` turns frames into bytes and :class:`FrameDecoder`
turns an arbitrary chunking of a byte stream back into frames. Every malformed input raises a
:class:`~quorum.errors.FrameError` subclass and nothing else, so the I/O layer can close the one
connection that sent it. Bodies are decoded with typed msgspec decoders: a frame that decodes
is well typed (the gateway check of DESIGN.md §4), and :func:`check_inbound_messages` adds the
checks that need the connection's identity.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from typing import Annotated, Final

import google_crc32c
import msgspec

from quorum.errors import BadFrame, FrameError, FrameTooLarge
from quorum.raft.types import LOCAL_MESSAGES, Message, MessageType

MAGIC: Final = b"QT"
# Version 2: entries may carry several commands (quorum.node.envelope.ProposalBatch) and
# snapshots use state format 2, neither of which a version-1 node can apply. Peers of another
# version are refused at the first frame (logged), so a mixed-version cluster never ships a
# node an entry it would skip: during a rolling upgrade the upgraded nodes form their own
# majority once there are enough of them (docs/transport.md, "Versions").
# Version 3: a log may hold UPDATE_NODE conf changes (an address record that names no role),
# which a version-2 node cannot decode: it would stop at the first one it applies.
PROTOCOL_VERSION: Final = 3
HEADER: Final = struct.Struct("!2sBBBBII")
HEADER_BYTES: Final = HEADER.size
_PREFIX: Final = struct.Struct("!2sBBBBI")  # the header without its CRC field
_CRC: Final = struct.Struct("!I")
MIB: Final = 1024 * 1024
DEFAULT_MAX_FRAME_BYTES: Final = 64 * MIB
KNOWN_FLAGS: Final = 0  # no flag bits are defined (protocol versions 1 and 2)
_U32_MAX: Final = 0xFFFFFFFF

NodeId = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class FrameType(enum.IntEnum):
    HELLO = 1  # client -> server: first frame of every connection
    HELLO_ACK = 2  # server -> client: handshake accepted
    REJECT = 3  # server -> client: handshake refused (then the server closes)
    MESSAGES = 4  # a batch of Raft messages, in send order
    SNAPSHOT_CHUNK = 5  # one piece of a streamed snapshot
    SNAPSHOT_ACK = 6  # receiver -> sender: the whole snapshot was accepted (or not)
    PING = 7
    PONG = 8


class StreamKind(enum.IntEnum):
    """What a connection carries, declared in its HELLO."""

    MESSAGES = 0  # a node's outbound link: MESSAGES frames (at most one live link per peer)
    SNAPSHOT = 1  # one snapshot transfer: SNAPSHOT_CHUNK frames, answered by SNAPSHOT_ACK


class Hello(msgspec.Struct, frozen=True, array_like=True):
    """Opens a connection: who is calling whom, in which cluster, speaking which version,
    for which kind of stream."""

    cluster_id: NonNegative
    from_id: NodeId
    to_id: NodeId
    protocol_version: NonNegative = PROTOCOL_VERSION
    kind: StreamKind = StreamKind.MESSAGES


class HelloAck(msgspec.Struct, frozen=True, array_like=True):
    member_id: NodeId


class Reject(msgspec.Struct, frozen=True, array_like=True):
    reason: str


class MessageBatch(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """Several Raft messages for one peer; the receiver steps them in this order."""

    messages: list[Message]


class SnapshotChunk(msgspec.Struct, frozen=True, array_like=True):
    """A piece of snapshot ``snapshot_id``. The first chunk (offset 0) carries the SNAP message
    holding the metadata; chunks arrive in offset order; ``last`` marks the final one."""

    snapshot_id: NonNegative
    offset: NonNegative
    data: bytes
    last: bool
    message: Message | None = None


class SnapshotAck(msgspec.Struct, frozen=True, array_like=True):
    snapshot_id: NonNegative
    ok: bool
    reason: str = ""


class Ping(msgspec.Struct, frozen=True, array_like=True):
    nonce: NonNegative


class Pong(msgspec.Struct, frozen=True, array_like=True):
    nonce: NonNegative


Frame = Hello | HelloAck | Reject | MessageBatch | SnapshotChunk | SnapshotAck | Ping | Pong

FRAME_TYPES: Final[dict[type[Frame], FrameType]] = {
    Hello: FrameType.HELLO,
    HelloAck: FrameType.HELLO_ACK,
    Reject: FrameType.REJECT,
    MessageBatch: FrameType.MESSAGES,
    SnapshotChunk: FrameType.SNAPSHOT_CHUNK,
    SnapshotAck: FrameType.SNAPSHOT_ACK,
    Ping: FrameType.PING,
    Pong: FrameType.PONG,
}
_BODY_DECODERS: Final[dict[int, msgspec.msgpack.Decoder[Frame]]] = {
    int(ftype): msgspec.msgpack.Decoder(cls) for cls, ftype in FRAME_TYPES.items()
}


def _check_limit(max_frame_bytes: int) -> int:
    if not 0 < max_frame_bytes <= _U32_MAX:
        raise ValueError(f"max_frame_bytes must be in [1, {_U32_MAX}], got {max_frame_bytes}")
    return max_frame_bytes


class FrameEncoder:
    """Encodes frames to bytes, once each: header + body in one ``bytes`` ready to write.

    Raises :class:`FrameTooLarge` (the encoder stays usable) when a body exceeds the limit:
    the maximum frame size is enforced on the sending side too, so a peer never has to cut a
    connection over a frame we should not have sent.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = _check_limit(max_frame_bytes)
        self._encoder = msgspec.msgpack.Encoder()

    def encode(self, frame: Frame) -> bytes:
        body = self._encoder.encode(frame)
        if len(body) > self.max_frame_bytes:
            raise FrameTooLarge(
                f"frame body of {len(body)} bytes exceeds the limit of {self.max_frame_bytes}",
                len(body),
                self.max_frame_bytes,
            )
        prefix = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, FRAME_TYPES[type(frame)], 0, 0, len(body))
        return prefix + _CRC.pack(frame_checksum(prefix, body)) + body

    def encode_messages(self, messages: Sequence[Message]) -> list[bytes]:
        """Encode messages into as few MESSAGES frames as the size limit allows, in order.

        A message that alone exceeds the limit raises :class:`FrameTooLarge`; the caller drops
        it (Raft tolerates message loss) and may retry the rest without it.
        """
        try:
            return [self.encode(MessageBatch(list(messages)))]
        except FrameTooLarge:
            if len(messages) <= 1:
                raise
        # Rare path: halve until each part fits; order is kept because halves are concatenated.
        mid = len(messages) // 2
        return self.encode_messages(messages[:mid]) + self.encode_messages(messages[mid:])


def parse_header(
    data: bytes | bytearray, max_frame_bytes: int, offset: int = 0
) -> tuple[int, int, int]:
    """Validate the frame header at ``offset``; return (frame type, body length, CRC32C).

    Raises :class:`BadFrame` or :class:`FrameTooLarge`. Checking the length here, before the
    body arrives, is what bounds the receiver's memory to one maximum frame per connection.
    """
    magic, version, ftype, flags, reserved, length, crc = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        raise BadFrame(f"bad magic {magic!r}")
    if version != PROTOCOL_VERSION:
        raise BadFrame(f"unsupported protocol version {version}")
    if ftype not in _BODY_DECODERS:
        raise BadFrame(f"unknown frame type {ftype}")
    if flags & ~KNOWN_FLAGS or reserved:
        raise BadFrame(f"unknown flags {flags:#x} / reserved byte {reserved:#x}")
    if length > max_frame_bytes:
        raise FrameTooLarge(
            f"frame body of {length} bytes exceeds the limit of {max_frame_bytes}",
            length,
            max_frame_bytes,
        )
    return ftype, length, crc


def frame_checksum(prefix: bytes, body: bytes) -> int:
    """CRC32C of the header's first 10 bytes (everything but the CRC field), then the body."""
    return int(google_crc32c.extend(google_crc32c.value(prefix), body))


def decode_body(ftype: int, prefix: bytes, body: bytes, crc: int) -> Frame:
    """Check the CRC and decode a body with the typed decoder of its frame type."""
    actual = frame_checksum(prefix, body)
    if actual != crc:
        raise BadFrame(f"CRC32C mismatch (header says {crc:#010x}, frame has {actual:#010x})")
    try:
        return _BODY_DECODERS[ftype].decode(body)
    # DecodeError covers malformed msgpack and ValidationError (schema); a str field holding
    # invalid UTF-8 raises UnicodeDecodeError, a ValueError, instead (found by Hypothesis).
    except (msgspec.DecodeError, ValueError) as exc:
        raise BadFrame(f"undecodable {FrameType(ftype).name} body: {exc}") from None


class FrameDecoder:
    """Reassembles frames from a byte stream fed in arbitrary chunks.

    ``feed`` returns the frames completed by the new bytes, in stream order. It raises only
    :class:`FrameError` subclasses. After an error the stream position is lost, so the decoder
    refuses further input (raises :class:`BadFrame`): the caller must close the connection.
    Memory: at most one partial frame (bounded by ``max_frame_bytes``) plus the last chunk.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = _check_limit(max_frame_bytes)
        self._buf = bytearray()
        self._failed: FrameError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if self._failed is not None:
            raise BadFrame(f"stream already failed: {self._failed}")
        self._buf += data
        try:
            return self._drain()
        except FrameError as exc:
            self._failed = exc
            raise

    def _drain(self) -> list[Frame]:
        buf, pos, frames = self._buf, 0, []
        while len(buf) - pos >= HEADER_BYTES:
            ftype, length, crc = parse_header(buf, self.max_frame_bytes, pos)
            end = pos + HEADER_BYTES + length
            if end > len(buf):
                break  # the rest of this frame has not arrived yet
            with memoryview(buf) as view:  # one copy per body (a bytearray slice makes two)
                prefix = bytes(view[pos : pos + _PREFIX.size])
                body = bytes(view[pos + HEADER_BYTES : end])
            frames.append(decode_body(ftype, prefix, body, crc))
            pos = end
        if pos:
            del buf[:pos]  # one compaction per feed, not per frame
        return frames


def check_inbound_messages(messages: Sequence[Message], from_id: int, to_id: int) -> None:
    """Gateway check of a batch read from the connection of peer ``from_id`` to us (``to_id``).

    A peer may only speak for itself and only to us, and never send local-only message types
    (those are produced inside a node, docs/raft.md). Raises :class:`BadFrame`.
    """
    for msg in messages:
        if msg.from_ != from_id or msg.to != to_id:
            raise BadFrame(
                f"message {msg.type.name} from {msg.from_} to {msg.to} on the link "
                f"from {from_id} to {to_id}"
            )
        if msg.type in LOCAL_MESSAGES:
            raise BadFrame(f"local-only message type {msg.type.name} from peer {from_id}")


def check_snapshot_message(msg: Message | None, from_id: int, to_id: int) -> Message:
    """The first chunk of a snapshot must carry a SNAP message addressed like the link."""
    if msg is None or msg.type != MessageType.SNAP or msg.snapshot is None:
        raise BadFrame("first snapshot chunk does not carry a SNAP message with metadata")
    check_inbound_messages([msg], from_id, to_id)
    return msg
