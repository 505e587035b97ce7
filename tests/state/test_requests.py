"""Request semantics and bad input: etcd's rules, typed errors, state unchanged on error."""

from __future__ import annotations

from typing import Any

import pytest

from quorum.errors import (
    ConfigError,
    DuplicateKey,
    FutureRevision,
    InvalidCommand,
    InvalidRange,
    InvalidRequest,
    InvalidRevision,
    InvalidTTL,
    KeyEmpty,
    KeyNotFound,
    LeaseExists,
    LeaseNotFound,
    LeaseProvided,
    RequestTooLarge,
    RevisionCompacted,
    StateError,
    TooManyOps,
    UsageError,
    ValueProvided,
)
from quorum.state import (
    CompactionRequest,
    Compare,
    CompareResult,
    CompareTarget,
    DeleteRangeRequest,
    LeaseCheckpoint,
    LeaseCheckpointRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    SortOrder,
    SortTarget,
    StateConfig,
    StateMachine,
    TxnRequest,
    encode_command,
    prefix_end,
)


class Driver:
    def __init__(self, config: StateConfig | None = None) -> None:
        self.sm = StateMachine(config)
        self.index = 0

    def __call__(self, req: Any) -> Any:
        self.index += 1
        return self.sm.apply(self.index, encode_command(req))

    def get(self, key: bytes, end: bytes = b"", **kw: Any) -> Any:
        return self.sm.range(RangeRequest(key, end, **kw))


@pytest.fixture
def d() -> Driver:
    return Driver()


def cmp(key: bytes, target: CompareTarget, result: CompareResult, value: int | bytes,
        end: bytes = b"") -> Compare:
    return Compare(key, target, result, value, end)


# --- revisions and versions ----------------------------------------------------------------------


def test_revision_bumps_once_per_write_and_versions_reset_on_delete(d: Driver) -> None:
    assert d.sm.revision == 1  # an empty store is at revision 1, as etcd's
    assert d(PutRequest(b"k", b"1")).revision == 2
    assert d(PutRequest(b"k", b"2")).revision == 3
    kv = d.get(b"k").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 3, 2)
    assert d(DeleteRangeRequest(b"k")).deleted == 1
    assert d(DeleteRangeRequest(b"k")).revision == 4  # deleting nothing: no new revision
    assert d.sm.revision == 4
    d(PutRequest(b"k", b"3"))
    kv = d.get(b"k").kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)


def test_range_forms_prefix_all_and_limits(d: Driver) -> None:
    for key in (b"a", b"a/1", b"a/2", b"a0", b"b"):
        d(PutRequest(key, key))
    assert [kv.key for kv in d.get(b"a/", prefix_end(b"a/")).kvs] == [b"a/1", b"a/2"]
    assert [kv.key for kv in d.get(b"a0", b"\0").kvs] == [b"a0", b"b"]
    assert prefix_end(b"\xff\xff") == b"\0" and prefix_end(b"a\xff") == b"b"
    resp = d.get(b"a", b"\0", limit=2)
    assert resp.more and resp.count == 5 and len(resp.kvs) == 2
    resp = d.get(b"a", b"\0", limit=2, sort_order=SortOrder.DESCEND)
    assert [kv.key for kv in resp.kvs] == [b"b", b"a0"] and resp.more
    resp = d.get(b"a", b"\0", count_only=True)
    assert resp.count == 5 and resp.kvs == ()
    resp = d.get(b"a", b"\0", keys_only=True)
    assert all(kv.value == b"" for kv in resp.kvs)


def test_sort_by_create_revision_for_lock_queues(d: Driver) -> None:
    # the lock/election recipes: the waiter with the lowest create_revision owns the lock
    d(PutRequest(b"lock/c", b""))
    d(PutRequest(b"lock/a", b""))
    d(PutRequest(b"lock/b", b""))
    d(PutRequest(b"lock/c", b"again"))  # does not change its create_revision
    resp = d.get(b"lock/", prefix_end(b"lock/"), limit=1, sort_target=SortTarget.CREATE,
                 sort_order=SortOrder.ASCEND)
    assert [kv.key for kv in resp.kvs] == [b"lock/c"]
    # the waiter just before mine (max_create_revision = mine - 1), newest first
    mine = d.get(b"lock/b").kvs[0].create_revision
    resp = d.get(b"lock/", prefix_end(b"lock/"), limit=1, sort_target=SortTarget.CREATE,
                 sort_order=SortOrder.DESCEND, max_create_revision=mine - 1)
    assert [kv.key for kv in resp.kvs] == [b"lock/a"]


def test_min_max_mod_revision_filters(d: Driver) -> None:
    for i in range(5):
        d(PutRequest(b"k%d" % i, b""))
    resp = d.get(b"k", b"\0", min_mod_revision=2, max_mod_revision=4)
    assert [kv.mod_revision for kv in resp.kvs] == [2, 3, 4]
    assert resp.count == 5  # etcd: count is the keys in range, before the filters


def test_historical_reads_compaction_and_future(d: Driver) -> None:
    for i in range(2, 7):  # the first write is revision 2: the value is its revision
        d(PutRequest(b"k", b"%d" % i))
    assert d.get(b"k", revision=2).kvs[0].value == b"2"
    d(CompactionRequest(3))
    with pytest.raises(RevisionCompacted) as info:
        d.get(b"k", revision=2)
    assert info.value.compact_revision == 3
    assert str(info.value) == "etcdserver: mvcc: required revision has been compacted"
    assert d.get(b"k", revision=3).kvs[0].value == b"3"
    with pytest.raises(FutureRevision):
        d.get(b"k", revision=7)
    assert d.get(b"k", revision=-5).kvs[0].value == b"6"  # <= 0 = current, like etcd
    with pytest.raises(RevisionCompacted):
        d(CompactionRequest(3))
    with pytest.raises(FutureRevision):
        d(CompactionRequest(99))
    with pytest.raises(InvalidRevision):
        d(CompactionRequest(-1))


def test_compaction_drops_deleted_keys_but_keeps_reads_equal(d: Driver) -> None:
    d(PutRequest(b"a", b"1"))
    d(PutRequest(b"b", b"1"))
    d(DeleteRangeRequest(b"a"))
    d(PutRequest(b"b", b"2"))
    before = [d.get(b"\0", b"\0", revision=r).kvs for r in (4, 5)]
    d(CompactionRequest(4))
    assert [d.get(b"\0", b"\0", revision=r).kvs for r in (4, 5)] == before
    d(CompactionRequest(5))
    assert d.sm.store.key_count() == 1  # a's tombstone is gone after the next compaction


# --- txn ----------------------------------------------------------------------------------------


def test_txn_compares_every_target(d: Driver) -> None:
    d(LeaseGrantRequest(10, 5))
    d(PutRequest(b"k", b"v", lease=5))
    d(PutRequest(b"k", b"w", lease=5))
    checks = [
        (cmp(b"k", CompareTarget.VERSION, CompareResult.EQUAL, 2), True),
        (cmp(b"k", CompareTarget.CREATE, CompareResult.EQUAL, 2), True),
        (cmp(b"k", CompareTarget.MOD, CompareResult.GREATER, 2), True),
        (cmp(b"k", CompareTarget.MOD, CompareResult.LESS, 3), False),
        (cmp(b"k", CompareTarget.VALUE, CompareResult.EQUAL, b"w"), True),
        (cmp(b"k", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"w"), False),
        (cmp(b"k", CompareTarget.LEASE, CompareResult.EQUAL, 5), True),
        (cmp(b"missing", CompareTarget.CREATE, CompareResult.EQUAL, 0), True),  # lock recipe
        (cmp(b"missing", CompareTarget.VALUE, CompareResult.NOT_EQUAL, b"x"), False),
    ]
    for compare, expected in checks:
        assert d(TxnRequest((compare,))).succeeded is expected, compare


def test_txn_compare_over_range_needs_every_key(d: Driver) -> None:
    d(PutRequest(b"r/1", b"x"))
    d(PutRequest(b"r/2", b"x"))
    all_x = cmp(b"r/", CompareTarget.VALUE, CompareResult.EQUAL, b"x", prefix_end(b"r/"))
    assert d(TxnRequest((all_x,))).succeeded
    d(PutRequest(b"r/3", b"y"))
    assert not d(TxnRequest((all_x,))).succeeded


def test_txn_is_one_revision_and_sees_its_own_writes(d: Driver) -> None:
    d(PutRequest(b"a", b"0"))
    resp = d(TxnRequest((), (PutRequest(b"b", b"1"), DeleteRangeRequest(b"a"),
                             RangeRequest(b"\0", b"\0"))))
    assert resp.revision == 3 and d.sm.revision == 3
    assert [kv.key for kv in resp.responses[2].kvs] == [b"b"]
    assert all(r.revision == 3 for r in resp.responses)


def test_read_only_and_failed_txn_do_not_bump_revision(d: Driver) -> None:
    d(PutRequest(b"a", b"0"))
    resp = d(TxnRequest((cmp(b"a", CompareTarget.VALUE, CompareResult.EQUAL, b"no"),),
                        (PutRequest(b"a", b"1"),), (RangeRequest(b"a"),)))
    assert not resp.succeeded and resp.revision == 2 and d.sm.revision == 2
    assert d(TxnRequest((), (DeleteRangeRequest(b"zz"),))).revision == 2


def test_nested_txn_compares_use_the_state_before_the_txn(d: Driver) -> None:
    inner = TxnRequest((cmp(b"a", CompareTarget.VERSION, CompareResult.EQUAL, 0),),
                       (PutRequest(b"inner", b"then"),), (PutRequest(b"inner", b"else"),))
    resp = d(TxnRequest((), (PutRequest(b"a", b"x"), inner)))
    assert resp.responses[1].succeeded  # a did not exist before the txn
    assert d.get(b"inner").kvs[0].value == b"then"


@pytest.mark.parametrize("ops", [
    (PutRequest(b"a"), PutRequest(b"a")),
    (DeleteRangeRequest(b"a", b"c"), PutRequest(b"b")),
    (PutRequest(b"b"), DeleteRangeRequest(b"a", b"\0")),
    (TxnRequest((), (PutRequest(b"a"),)), PutRequest(b"a")),
    (TxnRequest((), (PutRequest(b"a"),)), TxnRequest((), (PutRequest(b"a"),))),
    (DeleteRangeRequest(b"a"), TxnRequest((), (PutRequest(b"a"),))),
    (TxnRequest((), (DeleteRangeRequest(b"a"),)), TxnRequest((), (PutRequest(b"a"),))),
    (TxnRequest((), (PutRequest(b"a"),)), TxnRequest((), (DeleteRangeRequest(b"a"),))),
])
def test_duplicate_keys_in_txn_are_rejected(d: Driver, ops: tuple[Any, ...]) -> None:
    before = d.sm.state_hash()
    with pytest.raises(DuplicateKey):
        d(TxnRequest((), ops))
    assert d.sm.state_hash() == before and d.sm.revision == 1


@pytest.mark.parametrize("ops", [
    (DeleteRangeRequest(b"a", b"c"), DeleteRangeRequest(b"b")),  # overlapping deletes: fine
    (TxnRequest((), (PutRequest(b"a"),), (PutRequest(b"a"),)),),  # exclusive branches
    (TxnRequest((), (PutRequest(b"a"),), (DeleteRangeRequest(b"a"),)),),
])
def test_allowed_overlaps(d: Driver, ops: tuple[Any, ...]) -> None:
    d(TxnRequest((), ops))


def test_top_level_branches_are_checked_separately(d: Driver) -> None:
    d(TxnRequest((), (PutRequest(b"a"),), (PutRequest(b"a"),)))


def test_failing_op_inside_txn_changes_nothing(d: Driver) -> None:
    d(PutRequest(b"a", b"1"))
    before = d.sm.state_hash()
    with pytest.raises(LeaseNotFound):
        d(TxnRequest((), (PutRequest(b"b", b"x"), PutRequest(b"c", b"x", lease=42))))
    with pytest.raises(FutureRevision):
        d(TxnRequest((), (PutRequest(b"b", b"x"), RangeRequest(b"a", revision=9))))
    assert d.sm.state_hash() == before and d.sm.revision == 2


# --- puts with ignore flags and leases ----------------------------------------------------------


def test_ignore_value_and_ignore_lease(d: Driver) -> None:
    d(LeaseGrantRequest(10, 1))
    d(PutRequest(b"k", b"v", lease=1))
    d(PutRequest(b"k", ignore_value=True, ignore_lease=True))
    kv = d.get(b"k").kvs[0]
    assert (kv.value, kv.lease, kv.version) == (b"v", 1, 2)
    with pytest.raises(KeyNotFound):
        d(PutRequest(b"nope", ignore_value=True))
    with pytest.raises(ValueProvided):
        d(PutRequest(b"k", b"x", ignore_value=True))
    with pytest.raises(LeaseProvided):
        d(PutRequest(b"k", lease=1, ignore_lease=True))


def test_lease_revoke_deletes_keys_at_one_revision_and_moves_keys(d: Driver) -> None:
    assert d(LeaseGrantRequest(10)).id == 1
    assert d(LeaseGrantRequest(10, 2)).id == 2
    assert d(LeaseGrantRequest(10)).id == 3  # skips the explicitly taken id
    for key in (b"x", b"y", b"z"):
        d(PutRequest(key, b"", lease=1))
    d(PutRequest(b"z", b"", lease=2))  # moves z to lease 2
    info = d.sm.lease_info(1, keys=True)
    assert info is not None and info.keys == (b"x", b"y")
    resp = d(LeaseRevokeRequest(1))
    assert resp.revision == 6
    assert [kv.key for kv in d.get(b"\0", b"\0").kvs] == [b"z"]
    assert d.sm.lease_info(1) is None
    with pytest.raises(LeaseNotFound):
        d(LeaseRevokeRequest(1))
    with pytest.raises(LeaseExists):
        d(LeaseGrantRequest(10, 2))


def test_lease_checkpoint_is_recorded_and_clamped(d: Driver) -> None:
    d(LeaseGrantRequest(100, 1))
    d(LeaseCheckpointRequest((LeaseCheckpoint(1, 40), LeaseCheckpoint(9, 5))))
    info = d.sm.lease_info(1)
    assert info is not None and (info.granted_ttl, info.remaining_ttl) == (100, 40)
    d(LeaseCheckpointRequest((LeaseCheckpoint(1, 500),)))
    info = d.sm.lease_info(1)
    assert info is not None and info.remaining_ttl == 100
    with pytest.raises(InvalidTTL):
        d(LeaseCheckpointRequest((LeaseCheckpoint(1, -1),)))


# --- bad input: typed error, state unchanged -------------------------------------------------------

SMALL = StateConfig(max_request_bytes=1024, max_txn_ops=4, max_lease_ttl_s=1000)

BAD: list[tuple[Any, type[StateError]]] = [
    (PutRequest(b""), KeyEmpty),
    (PutRequest(b"k", b"v" * 2000), RequestTooLarge),
    (PutRequest(b"k" * 2000), RequestTooLarge),
    (PutRequest(b"k", lease=77), LeaseNotFound),
    (PutRequest(b"k", lease=-1), LeaseNotFound),
    (DeleteRangeRequest(b""), KeyEmpty),
    (DeleteRangeRequest(b"b", b"a"), InvalidRange),
    (RangeRequest(b"b", b"a"), InvalidRange),
    (RangeRequest(b"", b"\0"), KeyEmpty),
    (TxnRequest((), tuple(PutRequest(b"k%d" % i) for i in range(5))), TooManyOps),
    (TxnRequest(tuple(Compare(b"k", CompareTarget.VERSION, CompareResult.EQUAL, 0)
                      for _ in range(5))), TooManyOps),
    (TxnRequest((), (PutRequest(b"a", b"v" * 600), PutRequest(b"b", b"v" * 600))),
     RequestTooLarge),
    (TxnRequest((Compare(b"", CompareTarget.VERSION, CompareResult.EQUAL, 0),)), KeyEmpty),
    (TxnRequest((Compare(b"k", CompareTarget.VALUE, CompareResult.EQUAL, 3),)), InvalidRequest),
    (TxnRequest((Compare(b"k", CompareTarget.VERSION, CompareResult.EQUAL, b"x"),)),
     InvalidRequest),
    (TxnRequest((), (TxnRequest((), (PutRequest(b""),)),)), KeyEmpty),
    (CompactionRequest(-3), InvalidRevision),
    (CompactionRequest(50), FutureRevision),
    (LeaseGrantRequest(0), InvalidTTL),
    (LeaseGrantRequest(-5), InvalidTTL),
    (LeaseGrantRequest(1001), InvalidTTL),
    (LeaseGrantRequest(10, -4), InvalidRequest),
    (LeaseRevokeRequest(123), LeaseNotFound),
]


@pytest.mark.parametrize(("req", "error"), BAD)
def test_bad_input_raises_typed_error_and_changes_nothing(req: Any,
                                                          error: type[StateError]) -> None:
    d = Driver(SMALL)
    d(PutRequest(b"k", b"v"))
    d(LeaseGrantRequest(10, 1))
    before = (d.sm.state_hash(), d.sm.hash_kv(), d.sm.revision)
    with pytest.raises(error):
        d(req)
    assert (d.sm.state_hash(), d.sm.hash_kv(), d.sm.revision) == before
    d(PutRequest(b"k", b"w"))  # still usable
    assert d.sm.revision == before[2] + 1


@pytest.mark.parametrize("data", [b"", b"\x07garbage", b"\x01\xc1", b"\x01" + b"\x93\x01"])
def test_undecodable_commands_are_rejected(data: bytes) -> None:
    sm = StateMachine()
    with pytest.raises(InvalidCommand):
        sm.apply(1, data)
    assert sm.applied_index == 1 and sm.revision == 1


def test_oversized_command_bytes_rejected_before_decoding() -> None:
    sm = StateMachine(SMALL)
    with pytest.raises(RequestTooLarge):
        sm.apply(1, b"\x01" + b"x" * 10_000)


def test_apply_index_must_grow() -> None:
    sm = StateMachine()
    sm.apply(3, encode_command(PutRequest(b"a")))
    with pytest.raises(UsageError):
        sm.apply(3, encode_command(PutRequest(b"b")))
    sm.skip(4)
    assert sm.applied_index == 4 and sm.revision == 2


@pytest.mark.parametrize("field", ["max_request_bytes", "max_txn_ops", "max_sessions",
                                   "watch_buffer_events", "snapshot_chunk_keys"])
def test_config_validation(field: str) -> None:
    with pytest.raises(ConfigError):
        StateMachine(StateConfig(**{field: 0}))


def test_default_limits_are_etcds() -> None:
    d = Driver()
    d(TxnRequest((), tuple(PutRequest(b"k%d" % i) for i in range(128))))
    with pytest.raises(TooManyOps):
        d(TxnRequest((), tuple(PutRequest(b"j%d" % i) for i in range(129))))
    d(PutRequest(b"big", b"v" * (1536 * 1024 - 100)))
    with pytest.raises(RequestTooLarge):
        d(PutRequest(b"big", b"v" * (1536 * 1024)))
    assert d.sm.revision == 3
