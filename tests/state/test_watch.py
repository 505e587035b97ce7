"""Watch guarantees, checked against an independent oracle (a replica that never compacts):
ordered, unique, atomic, reliable, resumable, bookmarkable -- with compaction, lagging
watchers, slow consumers and snapshot restores. The planted split-txn bug must be caught."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from quorum.errors import InvalidRange, InvalidRevision, KeyEmpty, StateError, WatchNotFound
from quorum.state import (
    CompactionRequest,
    EventType,
    KeyValue,
    PutRequest,
    RangeRequest,
    StateConfig,
    StateMachine,
    TxnRequest,
    WatchFilter,
    WatchRequest,
    WatchResponse,
    encode_command,
    prefix_end,
)

from .workload import workload

Expected = dict[int, list[tuple[EventType, bytes, bytes, KeyValue | None]]]


class Oracle:
    """The same command stream on a replica that never compacts: its range reads at r-1 and
    r give the true events of revision r."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.views: list[dict[bytes, KeyValue]] = [{}]

    def apply(self, index: int, data: bytes) -> None:
        with contextlib.suppress(StateError):
            self.sm.apply(index, data)
        while len(self.views) <= self.sm.revision:
            rev = len(self.views)
            kvs = self.sm.range(RangeRequest(b"\0", b"\0", revision=rev)).kvs
            self.views.append({kv.key: kv for kv in kvs})

    def events(self, req: WatchRequest, lo: int, hi: int) -> Expected:
        out: Expected = {}
        for rev in range(max(lo, 1), min(hi, len(self.views) - 1) + 1):
            before, after = self.views[rev - 1], self.views[rev]
            evs = []
            for key in sorted(set(before) | set(after)):
                if not _in_range(req, key):
                    continue
                kv = after.get(key)
                if kv is not None and kv.mod_revision == rev:
                    if WatchFilter.NOPUT not in req.filters:
                        evs.append((EventType.PUT, key, kv.value, before.get(key)))
                elif kv is None and key in before and WatchFilter.NODELETE not in req.filters:
                    evs.append((EventType.DELETE, key, b"", before.get(key)))
            if evs:
                out[rev] = evs
        return out


def _in_range(req: WatchRequest, key: bytes) -> bool:
    if not req.range_end:
        return key == req.key
    return req.key <= key and (req.range_end == b"\0" or key < req.range_end)


@dataclass
class Stream:
    req: WatchRequest
    start: int  # first revision the watcher owes
    responses: list[WatchResponse] = field(default_factory=list)


def join_fragments(responses: list[WatchResponse]) -> list[WatchResponse]:
    """What an etcd client does with fragments: join the parts of one revision."""
    out: list[WatchResponse] = []
    parts: list[WatchResponse] = []
    for resp in responses:
        if resp.fragment or parts:
            assert not parts or (resp.revision == parts[0].revision and resp.events), "fragment"
            parts.append(resp)
            if not resp.fragment:
                events = tuple(ev for part in parts for ev in part.events)
                out.append(WatchResponse(resp.watch_id, resp.revision, events))
                parts = []
            continue
        out.append(resp)
    return out


def check_stream(stream: Stream, oracle: Oracle, upto: int, compact: int = 0) -> int:
    """Assert the six guarantees for one watcher's responses; returns the revision to resume
    from (the first one not delivered). ``upto``: the revision everything must have reached
    unless the watcher was canceled."""
    last = stream.start - 1  # events must come above this
    last_event = 0
    seen: set[tuple[int, bytes]] = set()
    resume = stream.start
    canceled = False
    for resp in join_fragments(stream.responses):
        assert not canceled, "a response after the canceled one"
        if resp.canceled:
            canceled = True
            if resp.compact_revision:
                assert resume < resp.compact_revision  # only for history really gone
            else:
                assert "resume from revision" in resp.cancel_reason or "client" in resp.cancel_reason
            continue
        if resp.progress:
            # bookmarkable: every event <= revision was delivered already
            want = oracle.events(stream.req, stream.start, resp.revision)
            assert set(want) <= {r for r, _ in seen}, "progress notification ahead of events"
            assert resp.revision >= last_event, "progress notification behind delivered events"
            last = max(last, resp.revision)
            continue
        rev = resp.revision
        assert rev > last, f"ordered: revision {rev} after {last}"  # also: atomic (no repeat)
        for ev in resp.events:
            assert ev.kv.mod_revision == rev
            assert (rev, ev.kv.key) not in seen, "unique"
            seen.add((rev, ev.kv.key))
        want = oracle.events(stream.req, rev, rev).get(rev, [])
        got = [(ev.type, ev.kv.key, ev.kv.value, ev.prev_kv) for ev in resp.events]
        # atomic: the response holds ALL events of its revision (a split leaves some out)
        assert [g[:3] for g in got] == [w[:3] for w in want], f"atomic/content at {rev}"
        for g, w in zip(got, want):
            if g[3] is not None:
                assert g[3] == w[3], "prev_kv"
            elif stream.req.prev_kv and w[3] is not None:
                # only the event AT a compact revision may have lost its previous version
                assert rev <= compact, f"prev_kv missing at {rev}"
        # reliable: nothing between the previous delivered revision and this one
        gap = oracle.events(stream.req, last + 1, rev - 1)
        assert not gap, f"reliable: events at {sorted(gap)} were skipped"
        last = last_event = rev
        resume = rev + 1
    if not canceled:
        gap = oracle.events(stream.req, last + 1, upto)
        assert not gap, f"reliable: events at {sorted(gap)} never delivered"
        resume = upto + 1
    return resume


WATCHES = [
    WatchRequest(b"k/", prefix_end(b"k/"), prev_kv=True),
    WatchRequest(b"\0", b"\0"),
    WatchRequest(b"k/03"),
    WatchRequest(b"j/", prefix_end(b"j/"), filters=(WatchFilter.NOPUT,)),
    WatchRequest(b"k/", prefix_end(b"k/"), filters=(WatchFilter.NODELETE,), prev_kv=True),
]


def drive(seed: int, config: StateConfig | None = None, split_bug: bool = False,
          restore_every: int = 0) -> tuple[Oracle, list[Stream], StateMachine]:
    rng = random.Random(seed)
    sm = StateMachine(config, split_txn_events_bug=split_bug)
    oracle = Oracle()
    streams: dict[int, Stream] = {}
    for index, (req, session, seq) in enumerate(workload(seed, 500), start=1):
        if rng.random() < 0.03:  # a new watcher, from the past, now, or the future
            base = WATCHES[rng.randrange(len(WATCHES))]
            start = rng.choice([0, 1, max(1, sm.revision - 5), sm.revision + 3])
            wreq = WatchRequest(base.key, base.range_end, start, base.prev_kv, base.filters,
                                fragment=rng.random() < 0.5)
            wid = sm.watch(wreq)
            streams[wid] = Stream(wreq, start or sm.revision + 1)
        data = encode_command(req, session, seq)
        with contextlib.suppress(StateError):
            sm.apply(index, data)
        oracle_req = RangeRequest(b"x") if isinstance(req, CompactionRequest) else req
        oracle.apply(index, encode_command(oracle_req, session, seq))
        for wid in sorted(streams):
            if wid in sm.watches.watcher_ids():
                if rng.random() < 0.05:
                    sm.watches.request_progress(wid)
                if rng.random() < 0.3:
                    got = sm.drain_watch(wid, rng.choice([0, 1, 3]))
                    streams[wid].responses += got
                    if got and got[-1].canceled:  # resumable: continue where it stopped
                        resume(sm, streams, streams[wid].req, got[-1])
        if restore_every and index % restore_every == 0:
            sm.restore(list(sm.snapshot()))
    for wid in sorted(streams):
        while wid in sm.watches.watcher_ids():
            got = sm.drain_watch(wid)
            streams[wid].responses += got
            if not got and wid not in sm.watches.ready():
                break
    return oracle, list(streams.values()), sm


def resume(sm: StateMachine, streams: dict[int, Stream], req: WatchRequest,
           last: WatchResponse) -> None:
    if last.compact_revision:
        start = last.compact_revision
    elif "resume from revision" in last.cancel_reason:
        start = int(last.cancel_reason.rsplit(" ", 1)[1])
    else:
        return
    new = WatchRequest(req.key, req.range_end, start, req.prev_kv, req.filters,
                       fragment=req.fragment)
    streams[sm.watch(new)] = Stream(new, start)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("config", [StateConfig(watch_replay_events=7),
                                    StateConfig(watch_buffer_events=6),
                                    StateConfig(watch_fragment_bytes=60)])
def test_watch_guarantees_hold(seed: int, config: StateConfig) -> None:
    oracle, streams, sm = drive(seed, config)
    delivered = sum(len(r.events) for s in streams for r in s.responses)
    assert delivered > 50
    for stream in streams:
        check_stream(stream, oracle, sm.revision, sm.compact_revision)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(100, 10**6), replay=st.integers(1, 50), buffer=st.integers(1, 40))
def test_watch_guarantees_hold_for_random_runs(seed: int, replay: int, buffer: int) -> None:
    config = StateConfig(watch_replay_events=replay, watch_buffer_events=buffer)
    oracle, streams, sm = drive(seed, config)
    for stream in streams:
        check_stream(stream, oracle, sm.revision, sm.compact_revision)


def test_the_campaign_covers_compaction_overflow_and_progress() -> None:
    kinds: set[str] = set()
    for seed in range(6):
        for config in (StateConfig(watch_replay_events=7), StateConfig(watch_buffer_events=6)):
            _, streams, _ = drive(seed, config)
            for resp in (r for s in streams for r in s.responses):
                if resp.compact_revision:
                    kinds.add("compacted")
                elif resp.canceled:
                    kinds.add("overflow")
                elif resp.progress:
                    kinds.add("progress")
    assert kinds == {"compacted", "overflow", "progress"}


def test_watch_guarantees_hold_across_snapshot_restores() -> None:
    oracle, streams, sm = drive(11, StateConfig(watch_replay_events=5), restore_every=40)
    for stream in streams:
        check_stream(stream, oracle, sm.revision, sm.compact_revision)


def test_planted_split_txn_bug_is_caught_by_the_atomicity_check() -> None:
    failures = 0
    for seed in range(6):
        oracle, streams, sm = drive(seed, split_bug=True)
        for stream in streams:
            try:
                check_stream(stream, oracle, sm.revision, sm.compact_revision)
            except AssertionError as exc:
                assert "atomic" in str(exc) or "ordered" in str(exc)
                failures += 1
    assert failures > 0


def test_compacted_start_revision_is_an_explicit_cancel_and_resume_works() -> None:
    sm = StateMachine()
    for i in range(10):
        sm.apply(i + 1, encode_command(PutRequest(b"k", b"%d" % i)))
    sm.apply(11, encode_command(CompactionRequest(6)))
    wid = sm.watch(WatchRequest(b"k", start_revision=2))
    [resp] = sm.drain_watch(wid)
    assert resp.canceled and resp.compact_revision == 6
    with pytest.raises(WatchNotFound):
        sm.drain_watch(wid)
    wid = sm.watch(WatchRequest(b"k", start_revision=resp.compact_revision))
    revs = [r.revision for r in sm.drain_watch(wid)]
    assert revs == [6, 7, 8, 9, 10, 11]  # the puts had revisions 2..11


def test_compaction_overtaking_a_lagging_watcher_cancels_it() -> None:
    sm = StateMachine(StateConfig(watch_replay_events=2))
    for i in range(10):
        sm.apply(i + 1, encode_command(PutRequest(b"k", b"%d" % i)))
    wid = sm.watch(WatchRequest(b"k", start_revision=1))
    first = sm.drain_watch(wid)
    assert [r.revision for r in first] == [2, 3]  # revision 1 (the empty store) has none
    sm.apply(11, encode_command(CompactionRequest(8)))
    [resp] = sm.drain_watch(wid)
    assert resp.canceled and resp.compact_revision == 8


def test_slow_watcher_is_canceled_with_reason_never_skipped() -> None:
    sm = StateMachine(StateConfig(watch_buffer_events=5))
    wid = sm.watch(WatchRequest(b"k", b"\0"))
    for i in range(9):
        sm.apply(i + 1, encode_command(PutRequest(b"k%d" % i, b"v")))
    got = sm.drain_watch(wid)
    assert [r.revision for r in got[:-1]] == [2, 3, 4, 5, 6]
    assert got[-1].canceled and "resume from revision 7" in got[-1].cancel_reason
    resumed = sm.watch(WatchRequest(b"k", b"\0", start_revision=7))
    assert [r.revision for r in sm.drain_watch(resumed)] == [7, 8, 9, 10]


def test_one_revision_always_fits_an_empty_buffer() -> None:
    sm = StateMachine(StateConfig(watch_buffer_events=2))
    wid = sm.watch(WatchRequest(b"k", b"\0"))
    sm.apply(1, encode_command(TxnRequest((), tuple(PutRequest(b"k%d" % i) for i in range(4)))))
    [resp] = sm.drain_watch(wid)
    assert len(resp.events) == 4 and not resp.canceled


def test_future_start_revision_and_progress_notifications() -> None:
    sm = StateMachine()
    # the puts get revisions 2, 3, 4; the watch starts at the last one
    wid = sm.watch(WatchRequest(b"k", start_revision=4, progress_notify=True))
    sm.apply(1, encode_command(PutRequest(b"k", b"1")))
    sm.watches.progress_tick()
    sm.apply(2, encode_command(PutRequest(b"k", b"2")))
    sm.apply(3, encode_command(PutRequest(b"k", b"3")))
    got = sm.drain_watch(wid)
    assert [(r.revision, r.progress) for r in got] == [(2, True), (4, False)]
    sm.watches.progress_tick()  # had events since the last tick: no notification
    sm.watches.progress_tick()  # idle: notification at the current revision
    assert [(r.revision, r.progress) for r in sm.drain_watch(wid)] == [(4, True)]


def test_bad_watch_requests() -> None:
    sm = StateMachine()
    with pytest.raises(InvalidRevision):
        sm.watch(WatchRequest(b"k", start_revision=-1))
    with pytest.raises(KeyEmpty):
        sm.watch(WatchRequest(b""))
    with pytest.raises(InvalidRange):
        sm.watch(WatchRequest(b"b", b"a"))
    with pytest.raises(WatchNotFound):
        sm.drain_watch(99)


def test_client_cancel_delivers_buffered_events_then_the_cancel() -> None:
    sm = StateMachine()
    wid = sm.watch(WatchRequest(b"k"))
    sm.apply(1, encode_command(PutRequest(b"k", b"1")))
    sm.cancel_watch(wid)
    sm.apply(2, encode_command(PutRequest(b"k", b"2")))
    got = sm.drain_watch(wid)
    assert [(r.revision, r.canceled) for r in got] == [(2, False), (2, True)]
    assert got[1].events == ()


def test_restore_from_a_later_snapshot_replays_the_missed_revisions() -> None:
    lagging, ahead = StateMachine(), StateMachine()
    for i in range(1, 4):
        for sm in (lagging, ahead):
            sm.apply(i, encode_command(PutRequest(b"k", b"%d" % i)))
    wid = lagging.watch(WatchRequest(b"k", prev_kv=True))
    for i in range(4, 9):  # the lagging replica misses these, then gets a snapshot
        ahead.apply(i, encode_command(PutRequest(b"k", b"%d" % i)))
    lagging.restore(ahead.snapshot())
    got = lagging.drain_watch(wid)
    assert [r.revision for r in got] == [5, 6, 7, 8, 9]  # the puts of indexes 4..8
    assert got[0].events[0].prev_kv is not None and got[0].events[0].prev_kv.value == b"3"
    ahead.apply(9, encode_command(CompactionRequest(8)))
    gone = lagging.watch(WatchRequest(b"k", start_revision=lagging.revision + 1))
    lagging.restore(ahead.snapshot())
    assert lagging.drain_watch(gone) == []  # nothing new: still owed revision 10, not lost
    lagging.apply(10, encode_command(PutRequest(b"k", b"x")))
    assert [r.revision for r in lagging.drain_watch(gone)] == [10]


def test_restore_past_a_watchers_history_cancels_it_as_compacted() -> None:
    lagging, ahead = StateMachine(), StateMachine()
    lagging.apply(1, encode_command(PutRequest(b"k", b"1")))
    ahead.apply(1, encode_command(PutRequest(b"k", b"1")))
    wid = lagging.watch(WatchRequest(b"k"))
    for i in range(2, 7):
        ahead.apply(i, encode_command(PutRequest(b"k", b"%d" % i)))
    ahead.apply(7, encode_command(CompactionRequest(5)))
    lagging.restore(ahead.snapshot())
    [resp] = lagging.drain_watch(wid)
    assert resp.canceled and resp.compact_revision == 5


def test_pending_tells_whether_drain_has_work() -> None:
    sm = StateMachine()
    sm.apply(1, encode_command(PutRequest(b"k", b"1")))
    live = sm.watch(WatchRequest(b"k"))
    past = sm.watch(WatchRequest(b"k", start_revision=1))
    assert not sm.watches.pending(live) and sm.watches.pending(past)
    assert sm.watches.ready() == [past]
    sm.apply(2, encode_command(PutRequest(b"k", b"2")))
    assert sm.watches.pending(live)
    sm.drain_watch(live)
    sm.drain_watch(past)
    assert not sm.watches.pending(live) and not sm.watches.pending(past)
    with pytest.raises(WatchNotFound):
        sm.watches.pending(99)


@pytest.mark.parametrize("seed", range(3))
def test_revision_log_replay_equals_history_scan(seed: int) -> None:
    from itertools import groupby

    from quorum.state.watch import Watcher

    _, _, sm = drive(seed)
    hub, store = sm.watches, sm.store
    lo_bound = max(store.compact_revision, store.log_from, 1)
    checked = 0
    for req in WATCHES:
        watcher = Watcher(0, req, lo_bound, synced=False)
        for lo in range(lo_bound, store.revision + 1, 7):
            via_log = list(hub._replay(watcher, lo, store.revision))
            scanned = hub._history_changes(watcher, lo, store.revision)
            via_scan = [(rev, [ch for _, ch in grp])
                        for rev, grp in groupby(scanned, key=lambda item: item[0])]
            assert via_log == via_scan
            checked += len(via_log)
    assert checked > 100


def test_fragmenting_watchers_get_large_revisions_in_parts() -> None:
    sm = StateMachine(StateConfig(watch_fragment_bytes=200))
    parts = sm.watch(WatchRequest(b"k", b"\0", fragment=True))
    whole = sm.watch(WatchRequest(b"k", b"\0"))
    sm.apply(1, encode_command(TxnRequest((), tuple(PutRequest(b"k%d" % i, b"v" * 50)
                                                    for i in range(10)))))
    got = sm.drain_watch(parts)
    assert len(got) > 1 and all(r.fragment for r in got[:-1]) and not got[-1].fragment
    assert {r.revision for r in got} == {2}
    [single] = sm.drain_watch(whole)
    assert tuple(ev for r in got for ev in r.events) == single.events


def test_fragment_check_catches_a_lost_part() -> None:
    sm = StateMachine(StateConfig(watch_fragment_bytes=200))
    wid = sm.watch(WatchRequest(b"k", b"\0", fragment=True))
    sm.apply(1, encode_command(TxnRequest((), tuple(PutRequest(b"k%d" % i, b"v" * 50)
                                                    for i in range(10)))))
    got = sm.drain_watch(wid)
    oracle = Oracle()
    oracle.apply(1, encode_command(TxnRequest((), tuple(PutRequest(b"k%d" % i, b"v" * 50)
                                                        for i in range(10)))))
    stream = Stream(WatchRequest(b"k", b"\0"), 1, got)
    check_stream(stream, oracle, 1)
    with pytest.raises(AssertionError):
        check_stream(Stream(stream.req, 1, got[1:]), oracle, 1)
