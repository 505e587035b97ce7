"""An empty store is at revision 1, as etcd's is, and answers what etcd 3.4 answers on a fresh
store (checked against `etcd --data-dir $(mktemp -d)` with etcdctl): a read's revision is 1,
the first write gets 2, compacting at 1 is allowed, a watch from 1 gets the first write.

etcd's client recipes depend on it: election and mutex wait for the keys created before their
own with ``max_create_revision = own - 1``, and 0 there means "no bound"."""

from __future__ import annotations

from typing import Any

import pytest

from quorum.errors import FutureRevision, RevisionCompacted
from quorum.state import (
    CompactionRequest,
    PutRequest,
    RangeRequest,
    SortOrder,
    SortTarget,
    StateMachine,
    WatchRequest,
    encode_command,
    prefix_end,
)
from quorum.state.watch import WatchHub


def apply(sm: StateMachine, req: Any) -> Any:
    return sm.apply(sm.applied_index + 1, encode_command(req))


def test_an_empty_store_is_at_revision_1_and_the_first_write_gets_2() -> None:
    sm = StateMachine()
    assert sm.revision == 1 and sm.compact_revision == 0
    assert sm.range(RangeRequest(b"x")).revision == 1  # etcdctl get x: header revision 1
    assert sm.range(RangeRequest(b"x", revision=1)).kvs == ()  # readable, empty
    with pytest.raises(FutureRevision) as info:
        sm.range(RangeRequest(b"x", revision=2))
    assert info.value.current_revision == 1
    assert apply(sm, PutRequest(b"x", b"1")).revision == 2
    kv = sm.range(RangeRequest(b"x")).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 2, 1)
    assert sm.range(RangeRequest(b"x", revision=1)).kvs == ()  # before the first write


def test_the_first_lock_key_of_a_store_has_a_bound_that_excludes_itself() -> None:
    """What etcd's Mutex.Lock / Election.Campaign ask after writing their key: the newest key
    of the prefix created before theirs, with max_create_revision = own - 1. That bound must be
    at least 1 (0 means "no bound"), or the first lock of a store waits for its own key."""
    sm = StateMachine()
    apply(sm, PutRequest(b"lock/a", b""))
    mine = sm.range(RangeRequest(b"lock/a")).kvs[0].create_revision
    assert mine - 1 >= 1
    older = sm.range(RangeRequest(b"lock/", prefix_end(b"lock/"), limit=1,
                                  sort_target=SortTarget.CREATE, sort_order=SortOrder.DESCEND,
                                  max_create_revision=mine - 1))
    assert older.kvs == ()  # nobody ahead: the lock is granted at once


def test_compaction_of_an_empty_store() -> None:
    sm = StateMachine()
    with pytest.raises(FutureRevision):
        apply(sm, CompactionRequest(2))
    apply(sm, CompactionRequest(1))  # etcdctl compact 1 on a fresh etcd: "compacted revision 1"
    assert sm.compact_revision == 1 and sm.revision == 1
    assert sm.range(RangeRequest(b"x", revision=1)).kvs == ()  # the compact revision is readable
    with pytest.raises(RevisionCompacted) as info:
        apply(sm, CompactionRequest(1))
    assert info.value.compact_revision == 1
    assert apply(sm, PutRequest(b"x", b"1")).revision == 2
    wid = sm.watch(WatchRequest(b"x", start_revision=1))  # from the compact revision: allowed
    [resp] = sm.drain_watch(wid)
    assert not resp.canceled and resp.revision == 2 and resp.events[0].kv.value == b"1"


def test_hash_kv_of_an_empty_store() -> None:
    sm = StateMachine()
    digest, compact, rev = sm.hash_kv()
    assert (compact, rev) == (0, 1)
    assert sm.hash_kv(1) == (digest, 0, 1)
    with pytest.raises(FutureRevision):
        sm.hash_kv(2)
    apply(sm, PutRequest(b"x", b"1"))
    assert sm.hash_kv(1) == (digest, 0, 1)  # the history up to 1 is still the empty one
    assert sm.hash_kv()[0] != digest and sm.hash_kv()[2] == 2


@pytest.mark.parametrize("start", [0, 1])
def test_a_watch_on_an_empty_store_gets_the_first_write(start: int) -> None:
    sm = StateMachine()
    wid = sm.watch(WatchRequest(b"k", b"\0", start_revision=start))
    assert sm.drain_watch(wid) == []
    apply(sm, PutRequest(b"k", b"v"))
    [resp] = sm.drain_watch(wid)
    assert resp.revision == 2 and [ev.kv.key for ev in resp.events] == [b"k"]
    assert resp.events[0].kv.create_revision == 2


def _forbid_scans(monkeypatch: pytest.MonkeyPatch) -> None:
    def scan(*_: Any) -> Any:
        raise AssertionError("replayed by a history scan, not from the revision log")
    monkeypatch.setattr(WatchHub, "_history_changes", scan)


@pytest.mark.parametrize("restored", [False, True])
def test_a_watch_from_revision_1_replays_from_the_revision_log(
        monkeypatch: pytest.MonkeyPatch, restored: bool) -> None:
    """Revision 1 holds no write, so the log of a fresh store (and of one restored from an
    empty image: a new cluster's bootstrap snapshot) covers it: "everything since 1" costs
    the revisions replayed, not a scan of every key's history."""
    sm = StateMachine.from_snapshot(StateMachine().snapshot()) if restored else StateMachine()
    for i in range(5):
        apply(sm, PutRequest(b"k%d" % i, b"v"))
    _forbid_scans(monkeypatch)
    wid = sm.watch(WatchRequest(b"k", b"\0", start_revision=1))
    assert [r.revision for r in sm.drain_watch(wid)] == [2, 3, 4, 5, 6]


def test_a_restored_non_empty_image_scans_below_its_revision(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side of the rule above: an image with records has no log for them, so a
    replay below its revision must scan (and the scan is what the watch gets)."""
    sm = StateMachine()
    apply(sm, PutRequest(b"k", b"1"))
    sm = StateMachine.from_snapshot(sm.snapshot())
    assert sm.store.log_from == 3
    _forbid_scans(monkeypatch)
    wid = sm.watch(WatchRequest(b"k", start_revision=1))
    with pytest.raises(AssertionError, match="history scan"):
        sm.drain_watch(wid)


def test_an_empty_store_snapshot_restores_at_revision_1() -> None:
    sm = StateMachine.from_snapshot(StateMachine().snapshot())
    assert (sm.revision, sm.compact_revision) == (1, 0)
    assert sm.hash_kv() == StateMachine().hash_kv()
    assert apply(sm, PutRequest(b"x")).revision == 2


def test_an_image_from_when_stores_started_at_0_keeps_its_numbering() -> None:
    """A cluster bootstrapped before stores started at 1 has a bootstrap snapshot at revision
    0; restoring it keeps 0, so its first write is 1 as it was (revisions already handed to
    clients never move). The upgrade tests check this against data dirs the old code wrote."""
    old = StateMachine()
    old.store.revision = 0  # what an old release's empty store held
    sm = StateMachine.from_snapshot(old.snapshot())
    assert sm.revision == 0
    assert apply(sm, PutRequest(b"x")).revision == 1
    wid = sm.watch(WatchRequest(b"x", start_revision=1))
    assert [r.revision for r in sm.drain_watch(wid)] == [1]
