"""The replicated state machine: applies committed commands, answers local reads and watches.

``StateMachine.apply(index, command)`` is deterministic: the same state and the same command
give the same result and the same next state on every replica. Nothing here reads a clock or
iterates in an order that depends on hashing (every scan is in key or id order).

Errors: ``apply`` raises a :class:`quorum.errors.StateError` subclass for a command that
breaks a rule; the state is then unchanged except that ``applied_index`` moved to ``index``
(the entry is consumed), and the runtime hands the error to the client. The machine stays
usable after every error it raises.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn

import msgspec

from quorum.errors import (
    FutureRevision,
    InvalidRequest,
    InvalidRevision,
    InvalidTTL,
    LeaseExists,
    LeaseNotFound,
    RequestTooLarge,
    RevisionCompacted,
    StateError,
    UsageError,
)
from quorum.state.commands import (
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    Envelope,
    ErrorResponse,
    LeaseCheckpointRequest,
    LeaseCheckpointResponse,
    LeaseExpireRequest,
    LeaseExpireResponse,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    LeaseRevokeResponse,
    PutRequest,
    RangeRequest,
    RangeResponse,
    Request,
    Response,
    SessionCloseRequest,
    SessionCloseResponse,
    SessionOpenRequest,
    SessionOpenResponse,
    TxnRequest,
    TxnResponse,
    decode_command,
)
from quorum.state.config import StateConfig
from quorum.state.kv import KV, Change
from quorum.state.lease import LeaseInfo, LeaseTable
from quorum.state.mvcc import MVCCStore
from quorum.state.sessions import Outcome, SessionTable
from quorum.state.watch import WatchHub, WatchRequest, WatchResponse

_MAX_LEASE_ID = (1 << 63) - 1  # records store the lease in 64 bits
_COMMAND_SLACK_BYTES = 4096  # envelope and msgpack framing on top of the request's payload
_OUTCOME_ENCODER = msgspec.msgpack.Encoder()


class StateMachine:
    """MVCC key-value store with txns, compaction, leases, client sessions and watches."""

    def __init__(self, config: StateConfig | None = None, *,
                 split_txn_events_bug: bool = False,
                 skip_compaction_key_bug: bool = False) -> None:
        """Raises ConfigError for an invalid config. ``split_txn_events_bug`` plants a watch
        atomicity bug (tests only). ``skip_compaction_key_bug`` plants a compaction bug (tests
        only; see :meth:`_compact_keys`): set it on some replicas only and they diverge."""
        self.config = (config or StateConfig()).validate()
        self.store = MVCCStore()
        self.leases = LeaseTable()
        self.sessions = SessionTable(self.config.max_sessions)
        self.kv = KV(self.store, self.leases, self.config)
        self.watches = WatchHub(self.store, self.config, split_txn_events_bug)
        self.applied_index = 0  # Invariant: the index of the last entry applied or skipped
        self.skip_compaction_key_bug = skip_compaction_key_bug

    # --- applying the log ---------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self.store.revision

    @property
    def compact_revision(self) -> int:
        return self.store.compact_revision

    def apply(self, index: int, command: bytes | Envelope | Request) -> Response:
        """Apply the committed entry at ``index`` (bytes from ``encode_command``, an Envelope,
        or a bare request). Raises UsageError if ``index`` does not grow (state untouched);
        StateError subclasses as documented on each request (state unchanged, index consumed).
        """
        self._advance(index)
        return self._apply_command(index, command)

    def apply_batch(
        self, index: int, commands: Sequence[bytes | Envelope | Request]
    ) -> list[Response | StateError]:
        """Apply several commands that share the committed entry at ``index``, in order.

        Each command behaves as in ``apply``; one that raises a StateError leaves the state
        as it was and has the error in its place in the result, and the next ones still
        apply (the entry is consumed once). Raises UsageError if ``index`` does not grow.
        """
        self._advance(index)
        out: list[Response | StateError] = []
        for command in commands:
            try:
                out.append(self._apply_command(index, command))
            except StateError as exc:
                out.append(exc)
        return out

    def _apply_command(self, index: int, command: bytes | Envelope | Request) -> Response:
        if isinstance(command, (bytes, bytearray, memoryview)):
            if len(command) > self.config.max_request_bytes + _COMMAND_SLACK_BYTES:
                raise RequestTooLarge()
            envelope = decode_command(bytes(command))
        elif isinstance(command, Envelope):
            envelope = command
        else:
            envelope = Envelope(command)
        if envelope.session_id:
            return self._apply_in_session(index, envelope)
        return self._execute(index, envelope.request)

    def skip(self, index: int) -> None:
        """Consume an entry without state-machine content (a leader's no-op, a conf change)."""
        self._advance(index)

    def _advance(self, index: int) -> None:
        if index <= self.applied_index:
            raise UsageError(f"apply index {index} <= applied index {self.applied_index}")
        self.applied_index = index

    def _apply_in_session(self, index: int, envelope: Envelope) -> Response:
        """Exactly-once (Raft thesis §6.3): a retry of the last seq returns its recorded outcome."""
        recorded = self.sessions.lookup(envelope.session_id, envelope.seq)
        if recorded is not None:
            return _replay(recorded)
        try:
            resp = self._execute(index, envelope.request)
        except StateError as exc:
            self.sessions.record(envelope.session_id, envelope.seq, index, error_response(exc))
            raise
        self.sessions.record(envelope.session_id, envelope.seq, index, resp)
        return resp

    def _execute(self, index: int, req: Request) -> Response:
        kv = self.kv
        if isinstance(req, PutRequest):
            put_resp, changes = kv.put(req)
            self._notify(changes)
            return put_resp
        if isinstance(req, RangeRequest):
            return kv.range(req)
        if isinstance(req, DeleteRangeRequest):
            del_resp, changes = kv.delete_range(req)
            self._notify(changes)
            return del_resp
        if isinstance(req, TxnRequest):
            txn_resp, changes = kv.txn(req)
            self._notify(changes)
            return txn_resp
        return self._execute_other(index, req)

    def _execute_other(self, index: int, req: Request) -> Response:
        if isinstance(req, CompactionRequest):
            return self._compact(req)
        if isinstance(req, LeaseGrantRequest):
            return self._lease_grant(req)
        if isinstance(req, LeaseRevokeRequest):
            if req.id not in self.leases.leases:
                raise LeaseNotFound()
            self._revoke(req.id)
            return LeaseRevokeResponse(self.store.revision)
        if isinstance(req, LeaseCheckpointRequest):
            return self._lease_checkpoint(req)
        if isinstance(req, LeaseExpireRequest):
            expired = [i for i in dict.fromkeys(req.ids) if i in self.leases.leases]
            for lease_id in expired:
                self._revoke(lease_id)  # one revision per lease: its keys vanish together
            return LeaseExpireResponse(self.store.revision, tuple(expired))
        if isinstance(req, SessionOpenRequest):
            return SessionOpenResponse(self.store.revision, self.sessions.open(index))
        if isinstance(req, SessionCloseRequest):
            self.sessions.close(req.session_id)
            return SessionCloseResponse(self.store.revision)
        raise InvalidRequest(f"state: unknown request type {type(req).__name__}")

    def _notify(self, changes: list[Change]) -> None:
        if changes:
            self.watches.notify(self.store.revision, changes)

    # --- compaction and leases ----------------------------------------------------------------

    def _compact(self, req: CompactionRequest) -> CompactionResponse:
        """Start a compaction (``start`` empty) or take its next step (see CompactionRequest).
        Raises InvalidRevision (< 0), RevisionCompacted (<= compact revision; for a step: a
        newer compaction superseded it), FutureRevision (> current), InvalidRequest (a step of
        a compaction that is not the current one, a negative limit)."""
        store = self.store
        if req.limit < 0:
            raise InvalidRequest("state: compaction step limit must not be negative")
        if req.start:
            if req.revision < store.compact_revision:
                raise RevisionCompacted(store.compact_revision)
            if req.revision != store.compact_revision:
                raise InvalidRequest("state: a compaction step continues the current compaction")
            return CompactionResponse(store.revision,
                                      self._compact_keys(req.revision, req.start, req.limit))
        if req.revision < 0:
            raise InvalidRevision()
        if req.revision <= store.compact_revision:
            raise RevisionCompacted(store.compact_revision)
        if req.revision > store.revision:
            raise FutureRevision(store.revision)
        store.begin_compaction(req.revision)
        self.watches.compacted()
        return CompactionResponse(store.revision,
                                  self._compact_keys(req.revision, b"", req.limit))

    def _compact_keys(self, revision: int, start: bytes, limit: int) -> bytes:
        """One step's physical work (see CompactionRequest); returns where the next starts.

        ``skip_compaction_key_bug`` (planted, tests only): a step of more than one key leaves
        its last key's old records in place, yet answers as if it had done it, so the series
        never comes back to that key. On a replica with the switch on, the state then differs
        from the others' at the same applied index: what the simulator's state-hash check
        must catch."""
        if not (self.skip_compaction_key_bug and limit > 1):
            return self.store.compact_keys(revision, start, limit)[1]
        _, skipped = self.store.compact_keys(revision, start, limit - 1)
        if not skipped:
            return b""
        after = list(itertools.islice(self.store.keys_in(skipped, b"\0"), 2))
        return after[1] if len(after) > 1 else b""

    def _lease_grant(self, req: LeaseGrantRequest) -> LeaseGrantResponse:
        """Raises InvalidTTL, InvalidRequest (id not an int64 >= 0), LeaseExists."""
        if req.ttl <= 0 or req.ttl > self.config.max_lease_ttl_s:
            raise InvalidTTL()
        if req.id < 0 or req.id > _MAX_LEASE_ID:
            raise InvalidRequest("state: lease id must be in 0..2**63-1 (an int64, as etcd's)")
        if req.id in self.leases.leases:
            raise LeaseExists()
        lease_id = req.id or self.leases.pick_id()
        self.leases.grant(lease_id, req.ttl)
        return LeaseGrantResponse(self.store.revision, lease_id, req.ttl)

    def _revoke(self, lease_id: int) -> None:
        keys = sorted(self.leases.leases[lease_id].keys)
        _, changes = self.kv.delete_keys(keys)  # all attached keys at ONE revision
        del self.leases.leases[lease_id]
        self._notify(changes)

    def _lease_checkpoint(self, req: LeaseCheckpointRequest) -> LeaseCheckpointResponse:
        """Record remaining TTLs (unknown ids are skipped: a revoke may have won the race)."""
        if any(cp.remaining_ttl < 0 for cp in req.checkpoints):
            raise InvalidTTL()
        for cp in req.checkpoints:
            lease = self.leases.leases.get(cp.id)
            if lease is not None:
                lease.remaining_ttl = min(cp.remaining_ttl, lease.ttl)
        return LeaseCheckpointResponse(self.store.revision)

    # --- local reads --------------------------------------------------------------------------

    def range(self, req: RangeRequest) -> RangeResponse:
        """Read at the applied state (not through the log). Raises InvalidRequest subclasses,
        RevisionCompacted, FutureRevision."""
        return self.kv.range(req)

    def read_txn(self, req: TxnRequest) -> TxnResponse:
        """Run a txn that only reads (no put/delete in any branch) against the applied state.
        Raises InvalidRequest if it could write."""
        if _writes(req):
            raise InvalidRequest("state: a local read txn must not contain puts or deletes")
        resp, changes = self.kv.txn(req)
        assert not changes  # Invariant: a txn without writes changes nothing
        return resp

    def hash_kv(self, revision: int = 0) -> tuple[int, int, int]:
        """(crc32 of the key space up to ``revision``, compact revision, revision hashed)."""
        return self.store.hash_kv(revision)

    def state_hash(self) -> int:
        """Cheap 32-bit digest of the whole replicated state (KV records, revisions, leases,
        sessions) for comparing replicas at equal applied index; O(leases + sessions)."""
        head = b"%d:%d:%d" % (self.store.revision, self.store.compact_revision, self.store.digest)
        crc = zlib.crc32(head)
        crc = zlib.crc32(b"%d" % self.leases.digest(), crc)
        return zlib.crc32(b"%d" % self.sessions.digest(_OUTCOME_ENCODER.encode), crc)

    def lease_info(self, lease_id: int, keys: bool = False) -> LeaseInfo | None:
        """Granted TTL, checkpointed remaining TTL and (optionally) attached keys; None if the
        lease does not exist."""
        return self.leases.info(lease_id, keys)

    def lease_ids(self) -> tuple[int, ...]:
        return self.leases.ids()

    # --- watches (node-local) -----------------------------------------------------------------

    def watch(self, req: WatchRequest) -> int:
        """Create a watcher (see quorum.state.watch); returns its id."""
        return self.watches.watch(req)

    def drain_watch(self, watch_id: int, max_responses: int = 0) -> list[WatchResponse]:
        return self.watches.drain(watch_id, max_responses)

    def cancel_watch(self, watch_id: int) -> None:
        self.watches.cancel(watch_id)

    # --- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> Iterator[bytes]:
        """A point-in-time image as an iterator of chunks (see quorum.state.snapshot). The view
        is captured now (O(keys) pointer copies); encoding happens as the iterator is consumed,
        so applying may continue meanwhile."""
        from quorum.state.snapshot import capture, stream

        return stream(capture(self))

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the whole replicated state by a snapshot stream. Raises CorruptionError for a
        damaged or incomplete stream (the current state is then kept). Watchers stay and catch
        up from the restored history."""
        from quorum.state.snapshot import load

        store, leases, sessions, applied = load(chunks, self.config)
        self.watches.before_restore()
        self.store, self.leases, self.sessions = store, leases, sessions
        self.kv = KV(store, leases, self.config)
        self.watches.store = store
        self.applied_index = applied
        self.watches.restored()

    @classmethod
    def from_snapshot(cls, chunks: Iterable[bytes], config: StateConfig | None = None) -> StateMachine:
        machine = cls(config)
        machine.restore(chunks)
        return machine


def _writes(txn: TxnRequest) -> bool:
    for op in txn.success + txn.failure:
        if isinstance(op, (PutRequest, DeleteRangeRequest)):
            return True
        if isinstance(op, TxnRequest) and _writes(op):
            return True
    return False


def _all_state_errors() -> dict[str, type[StateError]]:
    found: dict[str, type[StateError]] = {}
    todo: list[type[StateError]] = [StateError]
    while todo:
        cls = todo.pop()
        found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found


def error_response(exc: StateError) -> ErrorResponse:
    """The recordable form of an error (kept per session, so a retry raises it again)."""
    detail = 0
    if isinstance(exc, RevisionCompacted):
        detail = exc.compact_revision
    elif isinstance(exc, FutureRevision):
        detail = exc.current_revision
    return ErrorResponse(exc.code, exc.message, detail)


def raise_error(err: ErrorResponse) -> NoReturn:
    """Raise the StateError an ErrorResponse records."""
    cls = _all_state_errors().get(err.code, StateError)
    if cls is RevisionCompacted:
        raise RevisionCompacted(err.detail, err.message)
    if cls is FutureRevision:
        raise FutureRevision(err.detail, err.message)
    raise cls(err.message)


def _replay(recorded: Outcome) -> Response:
    if isinstance(recorded, ErrorResponse):
        raise_error(recorded)
    return recorded
