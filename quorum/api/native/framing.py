"""Length-prefixed frames of the native protocol (sans-I/O).

A frame is a 4-byte big-endian body length followed by that many bytes of msgpack. The
decoder is fed whatever the socket delivered and hands back complete bodies; it never
buffers more than one frame's worth beyond the bytes it was given, and it refuses a length
above ``max_frame_bytes`` *before* reading the body, so a hostile peer cannot make the
server allocate an arbitrary amount of memory.
"""

from __future__ import annotations

from quorum.errors import FrameTooLarge

HEADER_BYTES = 4
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

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every frame body now complete, oldest first."""
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos : pos + HEADER_BYTES], "big")
            if size > self._max:
                raise FrameTooLarge(f"frame of {size} bytes over the {self._max} limit", size, self._max)
            stop = pos + HEADER_BYTES + size
            if stop > end:
                break
            frames.append(bytes(buf[pos + HEADER_BYTES : stop]))
            pos = stop
        if pos:
            del buf[:pos]
        return frames

    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back (a truncated frame at EOF leaves some)."""
        return len(self._buf)


def frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length."""
    return len(body).to_bytes(HEADER_BYTES, "big") + body
