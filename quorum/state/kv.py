"""Request semantics on top of the MVCC index: range, put, delete range, txn, lease revoke.

Every write request runs in three steps so that a failing request changes nothing:

1. static validation (key present, sizes, op counts, duplicate keys, range ends);
2. dynamic checks against the state *before* the request (lease exists, key exists for
   ignore_value/ignore_lease, range revisions neither compacted nor future) -- for a txn,
   only along the branch its compares select, all compares (nested ones too) being evaluated
   on the pre-txn state, as etcd does;
3. execution, which cannot fail. All writes of one request share one revision
   (store revision + 1); a request that ends up writing nothing leaves the revision alone.

A write returns the list of changes ``(key, new_record, previous_live_record)`` in execution
order; the state machine hands them to the watch hub.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from quorum.errors import (
    DuplicateKey,
    InvalidRange,
    InvalidRequest,
    KeyEmpty,
    KeyNotFound,
    LeaseNotFound,
    LeaseProvided,
    RequestTooLarge,
    TooManyOps,
    ValueProvided,
)
from quorum.state.commands import (
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseOp,
    SortOrder,
    SortTarget,
    TxnRequest,
    TxnResponse,
)
from quorum.state.config import StateConfig
from quorum.state.lease import LeaseTable
from quorum.state.mvcc import CREATE, LEASE, MOD, VALUE, VERSION, MVCCStore, Record

Change = tuple[bytes, Record, Record | None]
_TOMBSTONE_FIELDS = (0, 0, b"", 0)  # create, version, value, lease of a deletion record
_SORT_FIELD = {SortTarget.VERSION: VERSION, SortTarget.CREATE: CREATE, SortTarget.MOD: MOD,
               SortTarget.VALUE: VALUE}
_COMPARE_FIELD = {CompareTarget.VERSION: VERSION, CompareTarget.CREATE: CREATE,
                  CompareTarget.MOD: MOD, CompareTarget.VALUE: VALUE, CompareTarget.LEASE: LEASE}
_OVERHEAD_BYTES = 16  # per op, so that many empty ops still count toward the request size


def to_kv(key: bytes, rec: Record, keys_only: bool = False) -> KeyValue:
    value = b"" if keys_only else rec[VALUE]
    return KeyValue(key, value, rec[CREATE], rec[MOD], rec[VERSION], rec[LEASE])


def _contains(intervals: Sequence[tuple[bytes, bytes]], key: bytes) -> bool:
    for start, end in intervals:
        if start <= key and (end == b"\0" or key < end or (not end and key == start)):
            return True
    return False


class KV:
    """Range/put/delete/txn over an MVCCStore and a LeaseTable. Single-threaded."""

    __slots__ = ("config", "leases", "store")

    def __init__(self, store: MVCCStore, leases: LeaseTable, config: StateConfig) -> None:
        self.store = store
        self.leases = leases
        self.config = config

    # --- static validation --------------------------------------------------------------------

    def validate(self, op: RequestOp) -> None:
        """Static checks of one request (recursively for a txn). Raises an InvalidRequest."""
        size = self._validate_op(op, 0)
        if size > self.config.max_request_bytes:
            raise RequestTooLarge()
        if isinstance(op, TxnRequest):
            # Only one branch of the top-level txn runs: each is checked on its own.
            _collect(op.success)
            _collect(op.failure)

    def _validate_op(self, op: RequestOp, size: int) -> int:
        if isinstance(op, PutRequest):
            if not op.key:
                raise KeyEmpty()
            if op.ignore_value and op.value:
                raise ValueProvided()
            if op.ignore_lease and op.lease:
                raise LeaseProvided()
            return size + len(op.key) + len(op.value) + _OVERHEAD_BYTES
        if isinstance(op, (RangeRequest, DeleteRangeRequest)):
            validate_range(op.key, op.range_end)
            return size + len(op.key) + len(op.range_end) + _OVERHEAD_BYTES
        return self._validate_txn(op, size)

    def _validate_txn(self, txn: TxnRequest, size: int) -> int:
        limit = self.config.max_txn_ops
        if len(txn.compare) > limit or len(txn.success) > limit or len(txn.failure) > limit:
            raise TooManyOps()
        for cmp in txn.compare:
            validate_range(cmp.key, cmp.range_end)
            if (cmp.target == CompareTarget.VALUE) != isinstance(cmp.value, bytes):
                raise InvalidRequest("state: compare operand type does not match its target")
            operand = len(cmp.value) if isinstance(cmp.value, bytes) else 8
            size += len(cmp.key) + len(cmp.range_end) + operand + _OVERHEAD_BYTES
        for op in txn.success + txn.failure:
            size = self._validate_op(op, size)
            if size > self.config.max_request_bytes:
                raise RequestTooLarge()
        return size

    # --- dynamic checks (pre-state) -----------------------------------------------------------

    def check_put(self, req: PutRequest) -> None:
        if req.lease and req.lease not in self.leases.leases:
            raise LeaseNotFound()
        if (req.ignore_value or req.ignore_lease) and self.store.latest(req.key) is None:
            raise KeyNotFound()

    def check_range(self, req: RangeRequest) -> None:
        if req.revision > 0:
            self.store.check_revision(req.revision)

    # --- reads --------------------------------------------------------------------------------

    def range(self, req: RangeRequest) -> RangeResponse:
        """A read at ``req.revision`` (<= 0: current). Raises InvalidRequest subclasses,
        RevisionCompacted, FutureRevision."""
        self.validate(req)
        self.check_range(req)
        return self._range(req, self.store.revision, self.store.revision)

    def _range(self, req: RangeRequest, view_rev: int, resp_rev: int) -> RangeResponse:
        rev = req.revision if req.revision > 0 else view_rev
        order = req.sort_order
        if order == SortOrder.NONE and req.sort_target != SortTarget.KEY:
            order = SortOrder.ASCEND  # etcd: a non-key target without order sorts ascending
        natural = req.sort_target == SortTarget.KEY and order != SortOrder.DESCEND
        filtered = bool(req.min_mod_revision or req.max_mod_revision
                        or req.min_create_revision or req.max_create_revision)
        want = req.limit + 1 if req.limit > 0 and natural else 0  # 0 = keep everything
        count = 0
        hits: list[tuple[bytes, Record]] = []
        for key, rec in self.store.live_in(req.key, req.range_end, rev):
            count += 1  # Invariant: count = keys live in range at rev (etcd: before filters)
            if req.count_only or (want and len(hits) >= want):
                continue
            if filtered and not _passes(req, rec):
                continue
            hits.append((key, rec))
        if req.count_only:
            return RangeResponse(resp_rev, (), False, count)
        if not natural:
            hits = _sorted(hits, req.sort_target, order)
        more = 0 < req.limit < len(hits)
        if more:
            hits = hits[: req.limit]
        kvs = tuple(to_kv(k, r, req.keys_only) for k, r in hits)
        return RangeResponse(resp_rev, kvs, more, count)

    # --- single writes ------------------------------------------------------------------------

    def put(self, req: PutRequest) -> tuple[PutResponse, list[Change]]:
        """Put one key at a new revision. Raises InvalidRequest subclasses, LeaseNotFound,
        KeyNotFound (ignore_value/ignore_lease on a missing key); nothing changes then."""
        self.validate(req)
        self.check_put(req)
        rev = self.store.revision + 1
        changes: list[Change] = []
        prev = self._put(req, rev, changes)
        self.store.commit(rev)
        return PutResponse(rev, to_kv(req.key, prev) if req.prev_kv and prev else None), changes

    def delete_range(self, req: DeleteRangeRequest) -> tuple[DeleteRangeResponse, list[Change]]:
        self.validate(req)
        rev = self.store.revision + 1
        changes: list[Change] = []
        resp = self._delete(req, rev, rev, changes)
        if changes:
            self.store.commit(rev)
        else:
            resp = DeleteRangeResponse(self.store.revision)
        return resp, changes

    def delete_keys(self, keys: list[bytes]) -> tuple[int, list[Change]]:
        """Delete the given live keys at one new revision (lease revoke); returns revision."""
        rev = self.store.revision + 1
        changes: list[Change] = []
        for key in keys:
            prev = self.store.latest(key)
            if prev is not None:
                self._tombstone(key, prev, rev, changes)
        if changes:
            self.store.commit(rev)
        return self.store.revision, changes

    def _put(self, req: PutRequest, rev: int, changes: list[Change]) -> Record | None:
        key = req.key
        prev = self.store.latest(key)
        value, lease = req.value, req.lease
        if prev is None:
            rec: Record = (rev, rev, 1, value, lease)
            old_lease = 0
        else:
            old_lease = prev[LEASE]
            if req.ignore_value:
                value = prev[VALUE]
            if req.ignore_lease:
                lease = old_lease
            rec = (rev, prev[CREATE], prev[VERSION] + 1, value, lease)
        self.store.write(key, rec)
        if old_lease != lease:
            self.leases.detach(old_lease, key)
            self.leases.attach(lease, key)
        changes.append((key, rec, prev))
        return prev

    def _delete(self, req: DeleteRangeRequest, rev: int, resp_rev: int,
                changes: list[Change]) -> DeleteRangeResponse:
        # Materialize first: writing tombstones must not disturb the scan.
        targets = list(self.store.live_in(req.key, req.range_end, rev))
        for key, prev in targets:
            self._tombstone(key, prev, rev, changes)
        prev_kvs = tuple(to_kv(k, r) for k, r in targets) if req.prev_kv else ()
        return DeleteRangeResponse(resp_rev, len(targets), prev_kvs)

    def _tombstone(self, key: bytes, prev: Record, rev: int, changes: list[Change]) -> None:
        rec: Record = (rev, *_TOMBSTONE_FIELDS)
        self.store.write(key, rec)
        self.leases.detach(prev[LEASE], key)
        changes.append((key, rec, prev))

    # --- transactions -------------------------------------------------------------------------

    def txn(self, req: TxnRequest) -> tuple[TxnResponse, list[Change]]:
        """Run a txn atomically at one revision. Raises (with nothing changed) what its
        requests along the selected branches would raise, and DuplicateKey / TooManyOps."""
        self.validate(req)
        path = self._path(req)
        self._check_path(req, iter(path))
        writes = self._path_writes(req, iter(path))
        rev = self.store.revision + 1 if writes else self.store.revision
        changes: list[Change] = []
        resp = self._exec_txn(req, iter(path), rev, changes)
        if changes:
            self.store.commit(rev)
        return resp, changes

    def _path(self, txn: TxnRequest) -> list[bool]:
        """Compare outcomes in depth-first order, all on the pre-txn state (etcd's txn path)."""
        ok = all(self._holds(cmp) for cmp in txn.compare)
        path = [ok]
        for op in txn.success if ok else txn.failure:
            if isinstance(op, TxnRequest):
                path += self._path(op)
        return path

    def _check_path(self, txn: TxnRequest, path: Iterator[bool]) -> None:
        for op in txn.success if next(path) else txn.failure:
            if isinstance(op, PutRequest):
                self.check_put(op)
            elif isinstance(op, RangeRequest):
                self.check_range(op)
            elif isinstance(op, TxnRequest):
                self._check_path(op, path)

    def _path_writes(self, txn: TxnRequest, path: Iterator[bool]) -> bool:
        writes = False
        for op in txn.success if next(path) else txn.failure:
            if isinstance(op, PutRequest):
                writes = True
            elif isinstance(op, DeleteRangeRequest):
                rev = self.store.revision
                writes = writes or next(self.store.live_in(op.key, op.range_end, rev), None) is not None
            elif isinstance(op, TxnRequest):
                writes = self._path_writes(op, path) or writes
        return writes

    def _exec_txn(self, txn: TxnRequest, path: Iterator[bool], rev: int,
                  changes: list[Change]) -> TxnResponse:
        ok = next(path)
        responses: list[ResponseOp] = []
        for op in txn.success if ok else txn.failure:
            if isinstance(op, RangeRequest):
                responses.append(self._range(op, rev, rev))
            elif isinstance(op, PutRequest):
                prev = self._put(op, rev, changes)
                responses.append(PutResponse(rev, to_kv(op.key, prev) if op.prev_kv and prev else None))
            elif isinstance(op, DeleteRangeRequest):
                responses.append(self._delete(op, rev, rev, changes))
            else:
                responses.append(self._exec_txn(op, path, rev, changes))
        return TxnResponse(rev, ok, tuple(responses))

    def _holds(self, cmp: Compare) -> bool:
        rev = self.store.revision
        recs = [rec for _, rec in self.store.live_in(cmp.key, cmp.range_end, rev)]
        if not recs:
            if cmp.target == CompareTarget.VALUE:
                return False  # etcd: a value compare on a missing key always fails
            return _compare(cmp, 0)
        field = _COMPARE_FIELD[cmp.target]
        return all(_compare(cmp, rec[field]) for rec in recs)


def _compare(cmp: Compare, actual: int | bytes) -> bool:
    operand = cmp.value
    if cmp.result == CompareResult.EQUAL:
        return actual == operand
    if cmp.result == CompareResult.NOT_EQUAL:
        return actual != operand
    if cmp.result == CompareResult.GREATER:
        return actual > operand  # type: ignore[operator]  # same type by validation
    return actual < operand  # type: ignore[operator]


def validate_range(key: bytes, range_end: bytes) -> None:
    if not key:
        raise KeyEmpty()
    if range_end and range_end != b"\0" and range_end < key:
        raise InvalidRange()


def _passes(req: RangeRequest, rec: Record) -> bool:
    mod, create = rec[MOD], rec[CREATE]
    if req.min_mod_revision and mod < req.min_mod_revision:
        return False
    if req.max_mod_revision and mod > req.max_mod_revision:
        return False
    if req.min_create_revision and create < req.min_create_revision:
        return False
    return not (req.max_create_revision and create > req.max_create_revision)


def _sorted(hits: list[tuple[bytes, Record]], target: SortTarget,
            order: SortOrder) -> list[tuple[bytes, Record]]:
    reverse = order == SortOrder.DESCEND
    if target == SortTarget.KEY:
        return hits[::-1] if reverse else hits
    field = _SORT_FIELD[target]
    # Stable sort over the key-ordered list: ties stay in key order (deterministic).
    return sorted(hits, key=lambda hit: hit[1][field], reverse=reverse)


def _interval(op: DeleteRangeRequest) -> tuple[bytes, bytes]:
    return op.key, op.range_end


def _collect(ops: Sequence[RequestOp]) -> tuple[set[bytes], list[tuple[bytes, bytes]]]:
    """(put keys, delete intervals) of ``ops`` and their nested txns, raising DuplicateKey when
    a key is put twice, or put inside a deleted interval, on a path that could run both. The
    two branches of one nested txn exclude each other, so they never conflict with each other.

    Stricter than etcd in one corner: a put in one nested txn and a delete of that key in a
    LATER sibling txn is also refused, so a key never gets two records at one revision."""
    level_dels = [(op.key, op.range_end) for op in ops if isinstance(op, DeleteRangeRequest)]
    nested = [(*_collect(op.success), *_collect(op.failure))
              for op in ops if isinstance(op, TxnRequest)]
    all_dels = level_dels + [iv for n in nested for iv in n[1] + n[3]]
    puts: set[bytes] = set()
    for i, (then_puts, _, else_puts, _) in enumerate(nested):
        other_dels = level_dels + [iv for j, n in enumerate(nested) if j != i for iv in n[1] + n[3]]
        for key in then_puts:
            if key in puts or _contains(other_dels, key):
                raise DuplicateKey()
        for key in else_puts:
            if (key in puts and key not in then_puts) or _contains(other_dels, key):
                raise DuplicateKey()
        puts |= then_puts | else_puts
    for op in ops:
        if isinstance(op, PutRequest):
            if op.key in puts or _contains(all_dels, op.key):
                raise DuplicateKey()
            puts.add(op.key)
    return puts, all_dels
