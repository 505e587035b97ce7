"""Stateful property test: quorum.state against the reference model in tests/state/model.py.

Every operation (put, delete range, range with limits/sorting/filters at any revision, txn,
compaction, lease grant/revoke/expire, client sessions with retries, snapshot+restore) is applied to both; answers and
errors must agree, and after every step the whole key space, the leases' keys and the
revisions must agree.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from quorum.errors import DuplicateKey, LeaseNotFound, StaleSequence, StateError
from quorum.state import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    DeleteRangeResponse,
    KeyValue,
    LeaseExpireRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    SessionOpenRequest,
    SortOrder,
    SortTarget,
    StateMachine,
    TxnRequest,
    TxnResponse,
    encode_command,
    prefix_end,
)

from .model import Model, same_error

KEYS = [b"a", b"ab", b"abc", b"b", b"ba", b"c", b"d"]
keys = st.sampled_from(KEYS)
values = st.sampled_from([b"", b"x", b"y", b"zz", b"\x00\xff"])


@st.composite
def ranges(draw: Any) -> tuple[bytes, bytes]:
    key = draw(keys)
    kind = draw(st.sampled_from(["single", "all", "prefix", "upto"]))
    if kind == "single":
        return key, b""
    if kind == "all":
        return key, b"\0"
    if kind == "prefix":
        return key, prefix_end(key)
    return key, draw(st.sampled_from([k for k in KEYS if k >= key] + [b"z"]))


def _sort(kvs: list[KeyValue], target: SortTarget, order: SortOrder) -> list[KeyValue]:
    if order == SortOrder.NONE and target != SortTarget.KEY:
        order = SortOrder.ASCEND
    desc = order == SortOrder.DESCEND
    if target == SortTarget.KEY:
        return kvs[::-1] if desc else kvs
    field = {SortTarget.VERSION: "version", SortTarget.CREATE: "create_revision",
             SortTarget.MOD: "mod_revision", SortTarget.VALUE: "value"}[target]
    return sorted(kvs, key=lambda kv: getattr(kv, field), reverse=desc)


class KVMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sm = StateMachine()
        self.model = Model()
        self.index = 0
        self.sessions: dict[int, tuple[int, Any]] = {}  # id -> (last seq, its response)

    def apply(self, req: Any) -> tuple[Any, StateError | None]:
        self.index += 1
        try:
            return self.sm.apply(self.index, encode_command(req)), None
        except StateError as exc:
            return None, exc

    # --- single ops ---------------------------------------------------------------------------

    @rule(key=keys, value=values, lease_pick=st.integers(0, 3), prev=st.booleans(),
          ignore=st.sampled_from(["", "", "", "value", "lease"]))
    def put(self, key: bytes, value: bytes, lease_pick: int, prev: bool, ignore: str) -> None:
        live = sorted(self.model.leases)
        lease = live[lease_pick % len(live)] if lease_pick and live else (lease_pick * 1000)
        req = PutRequest(key, b"" if ignore == "value" else value,
                         0 if ignore == "lease" else lease, prev,
                         ignore == "value", ignore == "lease")
        expected_err: StateError | None = None
        try:
            self.model.check_put(key, req.lease, req.ignore_value, req.ignore_lease)
        except StateError as exc:
            expected_err = exc
        resp, err = self.apply(req)
        assert same_error(err, expected_err), (err, expected_err)
        if err is None:
            rev = self.model.rev + 1
            prev_kv = self.model.put(key, req.value, req.lease, rev, req.ignore_value,
                                     req.ignore_lease)
            self.model.rev = rev
            assert resp == PutResponse(rev, prev_kv if prev else None)

    @rule(rng=ranges(), prev=st.booleans())
    def delete(self, rng: tuple[bytes, bytes], prev: bool) -> None:
        resp, err = self.apply(DeleteRangeRequest(rng[0], rng[1], prev))
        assert err is None
        gone = self.model.delete(rng[0], rng[1], self.model.rev + 1)
        if gone:
            self.model.rev += 1
        assert resp == DeleteRangeResponse(self.model.rev, len(gone), tuple(gone) if prev else ())

    @rule(rng=ranges(), back=st.integers(-1, 6), limit=st.integers(0, 3),
          order=st.sampled_from(SortOrder), sort_target=st.sampled_from(SortTarget),
          keys_only=st.booleans(), count_only=st.booleans(), min_mod=st.integers(0, 4))
    def range(self, rng: tuple[bytes, bytes], back: int, limit: int, order: SortOrder,
              sort_target: SortTarget, keys_only: bool, count_only: bool, min_mod: int) -> None:
        target = sort_target
        rev = 0 if back < 0 else max(self.model.rev - back, 1) if back < 6 else self.model.rev + 1
        req = RangeRequest(rng[0], rng[1], limit, rev, order, target, keys_only, count_only,
                           min_mod_revision=min_mod)
        expected_err: StateError | None = None
        try:
            kvs = self.model.range(rng[0], rng[1], rev)
        except StateError as exc:
            expected_err = exc
        try:
            resp: RangeResponse | None = self.sm.range(req)
            err = None
        except StateError as exc:
            resp, err = None, exc
        assert same_error(err, expected_err), (err, expected_err)
        if err is not None:
            return
        count = len(kvs)
        kvs = [kv for kv in kvs if kv.mod_revision >= min_mod]
        kvs = _sort(kvs, target, order)
        more = 0 < limit < len(kvs)
        kvs = kvs[:limit] if limit else kvs
        if keys_only:
            kvs = [KeyValue(kv.key, b"", kv.create_revision, kv.mod_revision, kv.version,
                            kv.lease) for kv in kvs]
        if count_only:
            kvs, more = [], False
        assert resp == RangeResponse(self.model.rev, tuple(kvs), more, count)

    # --- txn ----------------------------------------------------------------------------------

    ops = st.lists(st.one_of(
        st.builds(PutRequest, keys, values, prev_kv=st.booleans()),
        ranges().map(lambda r: DeleteRangeRequest(r[0], r[1], prev_kv=True)),
        ranges().map(lambda r: RangeRequest(r[0], r[1])),
    ), max_size=3)

    @rule(key=keys, cmp_target=st.sampled_from(CompareTarget),
          result=st.sampled_from(CompareResult), number=st.integers(0, 4), value=values,
          success=ops, failure=ops)
    def txn(self, key: bytes, cmp_target: CompareTarget, result: CompareResult, number: int,
            value: bytes, success: list[Any], failure: list[Any]) -> None:
        target = cmp_target
        operand: int | bytes = value if target == CompareTarget.VALUE else number
        req = TxnRequest((Compare(key, target, result, operand),), tuple(success), tuple(failure))
        resp, err = self.apply(req)
        if _has_dup(success) or _has_dup(failure):
            assert isinstance(err, DuplicateKey)
            return
        assert err is None, err
        ok = self._holds(req.compare[0])
        branch = success if ok else failure
        writes = any(isinstance(op, PutRequest) or (
            isinstance(op, DeleteRangeRequest) and self.model.range(op.key, op.range_end, 0))
            for op in branch)
        rev = self.model.rev + 1 if writes else self.model.rev
        expected: list[Any] = []
        for op in branch:
            if isinstance(op, PutRequest):
                prev = self.model.put(op.key, op.value, 0, rev)
                expected.append(PutResponse(rev, prev if op.prev_kv else None))
            elif isinstance(op, DeleteRangeRequest):
                gone = self.model.delete(op.key, op.range_end, rev)
                expected.append(DeleteRangeResponse(rev, len(gone), tuple(gone)))
            else:
                kvs = [kv for k in sorted(self.model.hist)
                       if self.model.in_range(op.key, op.range_end, k)
                       and (kv := self.model.kv(k, rev)) is not None]
                expected.append(RangeResponse(rev, tuple(kvs), False, len(kvs)))
        self.model.rev = rev
        assert resp == TxnResponse(rev, ok, tuple(expected))

    def _holds(self, cmp: Compare) -> bool:
        kv = self.model.kv(cmp.key, self.model.rev)
        if kv is None:
            if cmp.target == CompareTarget.VALUE:
                return False
            kv = KeyValue(cmp.key)
        actual = {CompareTarget.VERSION: kv.version, CompareTarget.CREATE: kv.create_revision,
                  CompareTarget.MOD: kv.mod_revision, CompareTarget.VALUE: kv.value,
                  CompareTarget.LEASE: kv.lease}[cmp.target]
        return {CompareResult.EQUAL: actual == cmp.value,
                CompareResult.NOT_EQUAL: actual != cmp.value,
                CompareResult.GREATER: actual > cmp.value,  # type: ignore[operator]
                CompareResult.LESS: actual < cmp.value}[cmp.result]  # type: ignore[operator]

    # --- compaction ---------------------------------------------------------------------------

    @rule(back=st.integers(-1, 5))
    def compact(self, back: int) -> None:
        rev = self.model.rev - back
        _, err = self.apply(CompactionRequest(rev))
        expected_err: StateError | None = None
        try:
            self.model.compact_to(rev)
        except StateError as exc:
            expected_err = exc
        if rev < 0:
            assert err is not None
            return
        assert same_error(err, expected_err), (err, expected_err)

    # --- leases -------------------------------------------------------------------------------

    @rule(ttl=st.integers(-1, 30), explicit=st.sampled_from([0, 0, 7, 1000]))
    def lease_grant(self, ttl: int, explicit: int) -> None:
        resp, err = self.apply(LeaseGrantRequest(ttl, explicit))
        if ttl <= 0 or explicit in self.model.leases:
            assert err is not None
            return
        assert err is None, err
        lease_id = explicit
        if not lease_id:
            while self.model.next_lease in self.model.leases:
                self.model.next_lease += 1
            lease_id = self.model.next_lease
            self.model.next_lease += 1
        self.model.leases[lease_id] = ttl
        assert resp.id == lease_id and resp.ttl == ttl

    @rule(pick=st.integers(0, 5), expire=st.booleans())
    def lease_revoke(self, pick: int, expire: bool) -> None:
        live = sorted(self.model.leases)
        lease_id = live[pick % len(live)] if live and pick else 999
        req = LeaseExpireRequest((lease_id,)) if expire else LeaseRevokeRequest(lease_id)
        resp, err = self.apply(req)
        if lease_id not in self.model.leases:
            assert expire or isinstance(err, LeaseNotFound)
            return
        assert err is None
        keys_of = self.model.lease_keys(lease_id)
        for key in keys_of:
            self.model.delete(key, b"", self.model.rev + 1)
        if keys_of:
            self.model.rev += 1
        del self.model.leases[lease_id]
        assert resp.revision == self.model.rev

    # --- client sessions ------------------------------------------------------------------------

    @rule()
    def session_open(self) -> None:
        resp, err = self.apply(SessionOpenRequest())
        assert err is None
        assert resp.session_id not in self.sessions
        self.sessions[resp.session_id] = (0, None)

    @precondition(lambda self: self.sessions)
    @rule(pick=st.integers(0, 5), key=keys, value=values,
          mode=st.sampled_from(["next", "next", "retry", "stale"]))
    def session_put(self, pick: int, key: bytes, value: bytes, mode: str) -> None:
        sid = sorted(self.sessions)[pick % len(self.sessions)]
        last_seq, last_resp = self.sessions[sid]
        if last_resp is None:
            mode = "next"
        seq = {"next": last_seq + 1, "retry": last_seq, "stale": last_seq - 1}[mode]
        self.index += 1
        try:
            resp = self.sm.apply(self.index, encode_command(PutRequest(key, value), sid, seq))
            err = None
        except StateError as exc:
            resp, err = None, exc
        if mode == "stale":
            assert isinstance(err, StaleSequence)
        elif mode == "retry":
            assert err is None and resp == last_resp  # recorded answer, nothing applied
        else:
            assert err is None
            rev = self.model.rev + 1
            self.model.put(key, value, 0, rev)
            self.model.rev = rev
            assert resp == PutResponse(rev)
            self.sessions[sid] = (seq, resp)

    # --- snapshot -----------------------------------------------------------------------------

    @precondition(lambda self: self.index % 3 == 0)
    @rule(cut=st.integers(1, 50))
    def snapshot_restore(self, cut: int) -> None:
        data = b"".join(self.sm.snapshot())
        pieces = [data[i:i + cut] for i in range(0, len(data), cut)]  # re-chunked stream
        restored = StateMachine.from_snapshot(iter(pieces))
        assert restored.state_hash() == self.sm.state_hash()
        assert restored.hash_kv() == self.sm.hash_kv()
        assert restored.applied_index == self.sm.applied_index
        self.sm = restored  # continue on the restored copy: it must behave the same

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def same_state(self) -> None:
        assert self.sm.revision == self.model.rev
        assert self.sm.compact_revision == self.model.compact
        got = self.sm.range(RangeRequest(b"\0", b"\0")).kvs
        assert list(got) == self.model.range(b"\0", b"\0", 0)
        assert self.sm.lease_ids() == tuple(sorted(self.model.leases))
        for lease_id in self.model.leases:
            info = self.sm.lease_info(lease_id, keys=True)
            assert info is not None and list(info.keys) == self.model.lease_keys(lease_id)

    @invariant()
    def history_retained(self) -> None:
        # every revision from the compact revision up is readable and equals the model
        for rev in range(max(self.model.compact, 1), self.model.rev + 1):
            got = self.sm.range(RangeRequest(b"\0", b"\0", revision=rev)).kvs
            assert list(got) == self.model.range(b"\0", b"\0", rev)


def _has_dup(ops: list[Any]) -> bool:
    puts = [op.key for op in ops if isinstance(op, PutRequest)]
    dels = [op for op in ops if isinstance(op, DeleteRangeRequest)]
    if len(puts) != len(set(puts)):
        return True
    return any(Model().in_range(d.key, d.range_end, k) for d in dels for k in puts)


TestKVModel = KVMachine.TestCase
TestKVModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                suppress_health_check=[HealthCheck.too_slow])


def test_the_model_test_catches_a_planted_compaction_bug(monkeypatch: Any) -> None:
    """The checker can fail: a compaction that also drops the newest record at or below the
    compact revision (keys vanish from reads at the compact revision) must be found."""
    import pytest
    from hypothesis.stateful import run_state_machine_as_test

    from quorum.state.mvcc import MVCCStore, entry_of

    original = MVCCStore._compact_key

    def lossy(self: MVCCStore, key: bytes, revision: int) -> int:
        removed = original(self, key, revision)
        records = self.history(key)
        if len(records) > 1 and records[0][0] <= revision:
            self._hist[key] = entry_of(records[1:])
        return removed

    monkeypatch.setattr(MVCCStore, "_compact_key", lossy)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(KVMachine, settings=settings(
            max_examples=300, stateful_step_count=40, deadline=None, database=None,
            phases=(Phase.generate,), report_multiple_bugs=False, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow]))
