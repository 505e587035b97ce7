"""HTTP/2 frame constants and builders, and the fixed header blocks of gRPC responses.

RFC 9113 gives the framing; RFC 7541 the header compression (HPACK). Responses are encoded
with "literal header field without indexing" only, so the server keeps no encoder table and
never depends on the client's SETTINGS_HEADER_TABLE_SIZE: every block is valid under any
table size, and the fixed blocks are computed once.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes (RFC 9113 §7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# settings identifiers
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_WINDOW = 2**31 - 1
MAX_FRAME_LIMIT = 2**24 - 1

# 9-byte frame header: 24-bit length (split 8 + 16), type, flags, stream id
FRAME_HEADER = struct.Struct(">BHBBL")
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEADER.pack(n >> 16, n & 0xFFFF, ftype, flags, stream_id) + payload


def settings_frame(settings: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings.items()))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """The (identifier, value) pairs of a SETTINGS payload (its length is a multiple of 6)."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, code) + debug)


def read_u32(payload: bytes) -> int:
    return int(_U32.unpack_from(payload)[0])


# --- HPACK, encoder side (RFC 7541 §5.1, §6.2.2) ---------------------------------------------

def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """``value`` as an HPACK integer with an N-bit prefix; ``first`` holds the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(s: bytes) -> bytes:
    return hpack_int(len(s), 7) + s  # no Huffman coding: H bit clear


def literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, with a literal name."""
    return b"\x00" + _string(name) + _string(value)


def literal_indexed_name(index: int, value: bytes) -> bytes:
    """A literal header field without indexing whose name is static table entry ``index``."""
    return hpack_int(index, 4) + _string(value)


_STATUS_200 = b"\x88"  # indexed field: static entry 8, ":status: 200"
_CONTENT_TYPE = 31  # static entry "content-type"
RESPONSE_HEADERS = _STATUS_200 + literal_indexed_name(_CONTENT_TYPE, b"application/grpc")
TRAILERS_OK = literal(b"grpc-status", b"0")

# grpc-message is percent-encoded: bytes outside printable ASCII, and '%' itself (gRPC's
# PROTOCOL-HTTP2 spec). Long texts are cut so a trailer always fits in one frame.
_MAX_MESSAGE = 4096
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(text: str) -> bytes:
    raw = text.encode("utf-8", "replace")
    if len(raw) > _MAX_MESSAGE:  # cut at a character boundary: a split one garbles it all
        raw = raw[:_MAX_MESSAGE].decode("utf-8", "ignore").encode("utf-8")
    if all(b in _PLAIN for b in raw):
        return raw
    return b"".join(bytes([b]) if b in _PLAIN else b"%%%02X" % b for b in raw)


def status_block(code: int, message: str) -> bytes:
    block = literal(b"grpc-status", str(code).encode())
    if message:
        block += literal(b"grpc-message", percent_encode(message))
    return block


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> bytes:
    """One HEADERS frame (plus CONTINUATION frames if the block exceeds ``max_frame``)."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    parts = [block[i:i + max_frame] for i in range(0, len(block), max_frame)]
    out = [frame(HEADERS, flags, stream_id, parts[0])]
    out += [frame(CONTINUATION, 0, stream_id, p) for p in parts[1:-1]]
    out.append(frame(CONTINUATION, END_HEADERS, stream_id, parts[-1]))
    return b"".join(out)


# --- gRPC message framing ----------------------------------------------------------------

def grpc_message(payload: bytes) -> bytes:
    """A length-prefixed gRPC message, uncompressed."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """Seconds from a grpc-timeout value ("100m", "5S"), or None if malformed."""
    if len(value) < 2 or len(value) > 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1:])
    if unit is None:
        return None
    return int(value[:-1]) * unit
