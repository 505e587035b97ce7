"""What the runtime puts inside Raft entries, and the snapshot envelope.

A proposal's entry data is ``Proposal(origin, request_id, payload)``: the node that proposed it
recognises its own request when the entry is applied (on any node a proposal is forwarded from),
and resolves the waiting caller with the state machine's result. Empty entry data is the
leader's no-op and never reaches the state machine.

Several proposals of one node may share an entry as a ``ProposalBatch(origin, first_request_id,
payloads)``: command ``i`` has request id ``first_request_id + i`` (a node numbers the
proposals of one loop turn consecutively) and they apply in list order. Only state machines
that declare ``apply_batch`` receive batches (see quorum.node.statemachine); a log may hold
both forms, and entries written before batches existed are plain ``Proposal``s.

The two are told apart by their first byte: a ``Proposal`` encodes as a msgpack array of 3
(``0x93``), a ``ProposalBatch`` as an array of 4 that starts with its tag (``0x94``).
"""

from __future__ import annotations

import msgspec

FORMAT_VERSION = 1


class Proposal(msgspec.Struct, frozen=True, array_like=True):
    origin: int  # node id that is waiting for the result
    request_id: int  # unique per origin (and per incarnation, see NodeCore)
    payload: bytes


class ProposalBatch(msgspec.Struct, frozen=True, array_like=True, tag=1):
    origin: int
    first_request_id: int  # payloads[i] has request id first_request_id + i
    payloads: tuple[bytes, ...]


BATCH_MARKER = 0x94  # msgpack fixarray(4): the first byte of every encoded ProposalBatch


class MemberInfo(msgspec.Struct, frozen=True, array_like=True):
    id: int
    name: str = ""
    peer_url: str = ""  # host:port of the peer transport
    client_url: str = ""  # host:port of the native client port
    etcd_url: str = ""  # host:port of the etcd gRPC port
    is_learner: bool = False


class ConfChangeContext(msgspec.Struct, frozen=True, array_like=True):
    """Carried in ``ConfChange.context``: who waits for it and the addresses of added members."""

    origin: int = 0
    request_id: int = 0
    members: tuple[MemberInfo, ...] = ()


class SnapshotEnvelope(msgspec.Struct, frozen=True, array_like=True):
    """Snapshot data = membership addresses + the state machine's own image."""

    version: int
    members: tuple[MemberInfo, ...]
    state: bytes
    # (origin, request ids applied most recently, oldest first): the duplicate filter
    recent: tuple[tuple[int, tuple[int, ...]], ...] = ()


_PROPOSAL_ENC = msgspec.msgpack.Encoder()
_PROPOSAL_DEC = msgspec.msgpack.Decoder(Proposal)
_BATCH_DEC = msgspec.msgpack.Decoder(ProposalBatch)
_CTX_DEC = msgspec.msgpack.Decoder(ConfChangeContext)
_SNAP_DEC = msgspec.msgpack.Decoder(SnapshotEnvelope)


def encode(obj: msgspec.Struct) -> bytes:
    return _PROPOSAL_ENC.encode(obj)


def decode_proposal(data: bytes) -> Proposal:
    return _PROPOSAL_DEC.decode(data)


def is_batch(data: bytes) -> bool:
    return data[0] == BATCH_MARKER


def decode_batch(data: bytes) -> ProposalBatch:
    return _BATCH_DEC.decode(data)


def decode_context(data: bytes) -> ConfChangeContext:
    if not data:
        return ConfChangeContext()
    return _CTX_DEC.decode(data)


def decode_snapshot(data: bytes) -> SnapshotEnvelope:
    return _SNAP_DEC.decode(data)
