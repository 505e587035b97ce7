"""The byte layout of a snapshot served through the etcd Maintenance.Snapshot RPC.

etcdctl (``snapshot save``) accepts a download only if its size is a multiple of 512 plus 32:
an etcd snapshot is a bolt database (512-byte pages) followed by its SHA-256. quorum's
snapshot is its own format (quorum.state.snapshot), so it is wrapped to keep that shape::

    quorum snapshot stream | zero padding | u64 big-endian stream length | sha256(all before)

where the padding makes everything before the digest a multiple of 512 bytes. ``etcdctl
snapshot status/restore`` cannot read it (they expect bolt); ``unwrap`` gives the quorum
stream back for ``StateMachine.from_snapshot``.
"""

from __future__ import annotations

import hashlib
import struct

from quorum.errors import CorruptionError

PAGE_BYTES = 512
_LENGTH = struct.Struct(">Q")
DIGEST_BYTES = hashlib.sha256().digest_size


def wrap(stream: bytes) -> bytes:
    """The etcd-shaped file for a quorum snapshot stream."""
    unpadded = len(stream) + _LENGTH.size
    pad = -unpadded % PAGE_BYTES
    body = stream + b"\0" * pad + _LENGTH.pack(len(stream))
    return body + hashlib.sha256(body).digest()


def unwrap(data: bytes) -> bytes:
    """The quorum snapshot stream inside ``data``. Raises CorruptionError if the size, the
    digest or the recorded length do not check out."""
    if len(data) % PAGE_BYTES != DIGEST_BYTES:
        raise CorruptionError(f"snapshot file size {len(data)} is not 512*n+32")
    body, digest = data[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptionError("snapshot file sha256 mismatch")
    (length,) = _LENGTH.unpack_from(body, len(body) - _LENGTH.size)
    if length > len(body) - _LENGTH.size:
        raise CorruptionError(f"snapshot file records a stream of {length} bytes, longer than itself")
    return body[:length]
