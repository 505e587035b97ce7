"""Peer messaging: a sans-I/O frame codec (:mod:`.codec`) and asyncio TCP links (:mod:`.tcp`).

See docs/transport.md for the wire format, the link life cycle and the snapshot stream.
"""

from quorum.transport.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameEncoder,
    FrameType,
    SnapshotChunk,
    StreamKind,
)
from quorum.transport.config import TransportConfig
from quorum.transport.tcp import Address, LinkStats, PeerTransport

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "Address",
    "FrameDecoder",
    "FrameEncoder",
    "FrameType",
    "LinkStats",
    "PeerTransport",
    "SnapshotChunk",
    "StreamKind",
    "TransportConfig",
]
