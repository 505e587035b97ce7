"""Length-prefixed frames of the native protocol (sans-I/O).

A frame is a 4-byte big-endian body length followed by that many bytes of msgpack. The
decoder is fed whatever the socket delivered and hands back complete bodies; it never
buffers more than one frame's worth beyond the bytes it was given, and it refuses a length
above ``max_frame_bytes`` *before* reading the body, so a hostile peer cannot make the
server allocate an arbitrary amount of memory.
"""

from __future__ import annotations

import struct

from quorum.errors import FrameTooLarge

HEADER_BYTES = 4
_HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024  # above etcd's 1.5 MiB request limit plus overhead


class FrameDecoder:
    """Splits a byte stream into frame bodies.

    Raises :class:`FrameTooLarge` from :meth:`feed` when a header announces a body larger
    than the limit; the decoder is unusable afterwards (the connection must be closed,
    because the stream position can no longer be trusted).
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[memoryview]:
        """Add ``data`` and return every frame body now complete, oldest first, as read-only
        views into the received bytes: no copy per frame, and they stay valid after later
        calls (nothing they point into is ever written again)."""
        if self._buf:  # an incomplete frame is held back: join it to the new bytes once
            self._buf += data
            src: bytes = bytes(self._buf)
            self._buf.clear()
        else:
            src = data
        view = memoryview(src)
        frames: list[memoryview] = []
        unpack = _HEADER.unpack_from
        limit = self._max
        pos = 0
        end = len(src)
        while end - pos >= HEADER_BYTES:
            (size,) = unpack(src, pos)
            if size > limit:
                raise FrameTooLarge(f"frame of {size} bytes over the {limit} limit", size, limit)
            stop = pos + HEADER_BYTES + size
            if stop > end:
                break
            frames.append(view[pos + HEADER_BYTES : stop])
            pos = stop
        if pos < end:
            self._buf += view[pos:]
        return frames

    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back (a truncated frame at EOF leaves some)."""
        return len(self._buf)


def frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length."""
    return len(body).to_bytes(HEADER_BYTES, "big") + body
