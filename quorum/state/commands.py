"""Commands the replicated log carries, and the results applying them returns.

Every type is a frozen msgspec Struct; requests and responses are tagged unions so a command
decodes without knowing its kind in advance. The model is etcd v3's (``KeyValue``, revisions,
compares, nested txns), so the etcd API is a thin translation.

Wire format of a command (``encode_command`` / ``decode_command``): one version byte
(``COMMAND_VERSION``) followed by the msgpack encoding of an :class:`Envelope`. Fields are only
ever added at the END of a Struct, with defaults, so older encodings keep decoding; an unknown
version byte is rejected with ``InvalidCommand``.

Stability: these names and field orders are the contract the node runtime, the API layers and
the client build on.

All Structs are ``gc=False``: frozen Structs and tuples cannot be mutated after construction,
so they can never be part of a reference cycle, and leaving them out of the cyclic garbage
collector matters on the apply path (several of them are made per applied command).
"""

from __future__ import annotations

import enum
from typing import TypeAlias

import msgspec

from quorum.errors import InvalidCommand

COMMAND_VERSION = 1

# --- enums ------------------------------------------------------------------------------------


class SortOrder(enum.IntEnum):
    NONE = 0
    ASCEND = 1
    DESCEND = 2


class SortTarget(enum.IntEnum):
    KEY = 0
    VERSION = 1
    CREATE = 2
    MOD = 3
    VALUE = 4


class CompareTarget(enum.IntEnum):
    VERSION = 0
    CREATE = 1
    MOD = 2
    VALUE = 3
    LEASE = 4


class CompareResult(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


class WatchFilter(enum.IntEnum):
    NOPUT = 0  # do not deliver PUT events
    NODELETE = 1  # do not deliver DELETE events


# --- data -------------------------------------------------------------------------------------


class KeyValue(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One version of a key. ``version`` counts puts since creation (0 = deleted);
    ``create_revision`` is the revision of the put that (re)created the key."""

    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


class Event(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A change at ``kv.mod_revision``. A DELETE's ``kv`` has only key and mod_revision set."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None


# --- requests (ops of the log) ------------------------------------------------------------------


class RangeRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="range"):
    """Read keys in [key, range_end). range_end b"" = the single key; b"\\0" = every key >=
    key. ``revision`` <= 0 reads the current revision. ``limit`` 0 = no limit; ``count``
    in the answer ignores the limit."""

    key: bytes
    range_end: bytes = b""
    limit: int = 0
    revision: int = 0
    sort_order: SortOrder = SortOrder.NONE
    sort_target: SortTarget = SortTarget.KEY
    keys_only: bool = False
    count_only: bool = False
    min_mod_revision: int = 0
    max_mod_revision: int = 0
    min_create_revision: int = 0
    max_create_revision: int = 0


class PutRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="put"):
    key: bytes
    value: bytes = b""
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False  # keep the current value (the key must exist)
    ignore_lease: bool = False  # keep the current lease (the key must exist)


class DeleteRangeRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="delete"):
    key: bytes
    range_end: bytes = b""
    prev_kv: bool = False


class Compare(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """``target`` of every key in [key, range_end) ``result`` ``value``. For VALUE the operand
    is bytes, otherwise an int. A missing key has version/create/mod/lease 0 and no value
    (a VALUE compare against a missing key is false, as in etcd)."""

    key: bytes
    target: CompareTarget
    result: CompareResult
    value: int | bytes = 0
    range_end: bytes = b""


class TxnRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="txn"):
    """If every compare holds, run ``success`` else ``failure``; the whole txn is one revision."""

    compare: tuple[Compare, ...] = ()
    success: tuple[RequestOp, ...] = ()
    failure: tuple[RequestOp, ...] = ()


RequestOp: TypeAlias = RangeRequest | PutRequest | DeleteRangeRequest | TxnRequest


class CompactionRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="compact"):
    """Compact the history below ``revision``. With ``limit`` > 0 the physical work is done
    in steps: the command that starts a compaction (``start`` empty) makes it take effect at
    once (reads and watches below ``revision`` are refused) and drops the old records of the
    first ``limit`` keys; each following step (``start`` = the previous answer's ``next``,
    same ``revision``) does the next ``limit`` keys. Each step is a log entry of its own, so
    every replica is in the same state at every index, and no step holds the state machine
    longer than ``limit`` keys take. ``limit`` 0 = every key in one command."""

    revision: int
    physical: bool = False  # accepted for etcd compatibility; the callers wait for every step
    start: bytes = b""  # empty = start a compaction; else continue it from this key
    limit: int = 0  # keys examined per step; 0 = all


class LeaseGrantRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_grant"):
    ttl: int  # seconds
    id: int = 0  # 0 = the store picks the next free id deterministically


class LeaseRevokeRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_revoke"):
    id: int


class LeaseCheckpoint(msgspec.Struct, frozen=True, array_like=True, gc=False):
    id: int
    remaining_ttl: int  # seconds left as known to the leader; 0 clears the checkpoint


class LeaseCheckpointRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_ckpt"):
    checkpoints: tuple[LeaseCheckpoint, ...] = ()


class LeaseExpireRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_expire"):
    """Proposed by the leader's runtime for leases its tracker found expired. Each lease is
    revoked at its own revision; ids no longer granted are skipped (a revoke may have won)."""

    ids: tuple[int, ...] = ()


class SessionOpenRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="session_open"):
    pass


class SessionCloseRequest(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="session_close"):
    """Close (or expire, when the runtime decides a client is gone) a client session."""

    session_id: int


Request: TypeAlias = (
    RangeRequest
    | PutRequest
    | DeleteRangeRequest
    | TxnRequest
    | CompactionRequest
    | LeaseGrantRequest
    | LeaseRevokeRequest
    | LeaseCheckpointRequest
    | LeaseExpireRequest
    | SessionOpenRequest
    | SessionCloseRequest
)


class Envelope(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What a log entry holds. A non-zero ``session_id`` makes the command exactly-once:
    ``seq`` must grow per session; a retry of the last ``seq`` returns the recorded outcome."""

    request: Request
    session_id: int = 0
    seq: int = 0


# --- responses ----------------------------------------------------------------------------------
# ``revision`` is the store revision after the request (etcd's header revision). Responses
# nested in a txn carry the txn's revision.


class RangeResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="range"):
    revision: int
    kvs: tuple[KeyValue, ...] = ()
    more: bool = False
    count: int = 0


class PutResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="put"):
    revision: int
    prev_kv: KeyValue | None = None


class DeleteRangeResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="delete"):
    revision: int
    deleted: int = 0
    prev_kvs: tuple[KeyValue, ...] = ()


class TxnResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="txn"):
    revision: int
    succeeded: bool = False
    responses: tuple[ResponseOp, ...] = ()


ResponseOp: TypeAlias = RangeResponse | PutResponse | DeleteRangeResponse | TxnResponse


class CompactionResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="compact"):
    revision: int
    next: bytes = b""  # where the next step starts; empty = the compaction is complete


class LeaseGrantResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_grant"):
    revision: int
    id: int = 0
    ttl: int = 0


class LeaseRevokeResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_revoke"):
    revision: int


class LeaseCheckpointResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_ckpt"):
    revision: int


class LeaseExpireResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="lease_expire"):
    revision: int
    expired: tuple[int, ...] = ()  # the ids actually revoked


class SessionOpenResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="session_open"):
    revision: int
    session_id: int = 0


class SessionCloseResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="session_close"):
    revision: int


class ErrorResponse(msgspec.Struct, frozen=True, array_like=True, gc=False, tag="error"):
    """A recorded failure (kept per client session so a retry re-raises the same error).
    ``code`` is the ``StateError.code``; ``detail`` carries the error's numeric field
    (compact revision for RevisionCompacted, current revision for FutureRevision)."""

    code: str
    message: str
    detail: int = 0


Response: TypeAlias = (
    RangeResponse
    | PutResponse
    | DeleteRangeResponse
    | TxnResponse
    | CompactionResponse
    | LeaseGrantResponse
    | LeaseRevokeResponse
    | LeaseCheckpointResponse
    | LeaseExpireResponse
    | SessionOpenResponse
    | SessionCloseResponse
)

# --- encode / decode ----------------------------------------------------------------------------

_ENCODER = msgspec.msgpack.Encoder()
_ENVELOPE_DECODER = msgspec.msgpack.Decoder(Envelope)
_VERSION_PREFIX = bytes([COMMAND_VERSION])


def encode_command(request: Request, session_id: int = 0, seq: int = 0) -> bytes:
    """Encode one command for the log: a version byte, then the msgpack Envelope."""
    return _VERSION_PREFIX + _ENCODER.encode(Envelope(request, session_id, seq))


def encode_envelope(envelope: Envelope) -> bytes:
    return _VERSION_PREFIX + _ENCODER.encode(envelope)


def decode_command(data: bytes) -> Envelope:
    """Decode bytes made by :func:`encode_command`.

    Raises InvalidCommand for an unknown version or malformed bytes (the gateway check: what
    comes from the log is validated here, then trusted inside the store).
    """
    if not data or data[0] != COMMAND_VERSION:
        raise InvalidCommand(f"state: unknown command version {data[:1]!r}")
    try:
        return _ENVELOPE_DECODER.decode(memoryview(data)[1:])
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidCommand(f"state: command does not decode: {exc}") from None


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with ``prefix`` (etcd's GetPrefixRangeEnd):
    the prefix with its last byte below 0xff incremented and what follows dropped; b"\\0"
    (every key) when the prefix is empty or all 0xff."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes([stripped[-1] + 1])
