"""Fencing and watch-guarantee checkers: a clean run passes, each planted violation is named."""

from __future__ import annotations

from quorum.verify.workloads import (
    FencedWrite,
    RevisionObservation,
    WatcherLog,
    WatchEvent,
    WatchResponse,
    WatchStream,
    check_fencing,
    check_revisions,
    check_watches,
)

# --- fencing --------------------------------------------------------------------------------


def fw(token: int, accepted: bool, resource: str = "file") -> FencedWrite:
    return FencedWrite(resource=resource, token=token, accepted=accepted)


def test_fencing_respected() -> None:
    # holder 33 pauses; holder 34 writes; 33 wakes and is refused.
    report = check_fencing([fw(33, True), fw(34, True), fw(33, False), fw(34, True)])
    assert report.stale_count == 0 and report.accepted == 3 and report.rejected == 1
    assert report.current_rejected == []


def test_stale_token_accepted_is_counted() -> None:
    report = check_fencing([fw(33, True), fw(34, True), fw(33, True), fw(32, True)])
    assert report.stale_count == 2
    assert [w.token for w in report.stale_accepted] == [33, 32]


def test_stale_holder_before_new_holder_writes_is_allowed() -> None:
    # The resource has not seen 34 yet, so 33 is still current from its point of view.
    assert check_fencing([fw(34, True, "a"), fw(33, True, "b"), fw(34, True, "b")]).stale_count == 0


def test_current_token_refused_is_reported_separately() -> None:
    report = check_fencing([fw(5, True), fw(5, False), fw(6, False)])
    assert report.stale_count == 0
    assert [w.token for w in report.current_rejected] == [5, 6]


# --- watches --------------------------------------------------------------------------------


def ev(rev: int, key: str, value: str | None = None, type: str = "put") -> WatchEvent:
    return WatchEvent(revision=rev, key=key, type=type, value=value if value else f"{key}{rev}")


# rev 2: put a; rev 3: put b (other key); rev 4: txn puts a/x and a/y; rev 5: delete a;
# rev 6: put a/x
COMMITTED = {
    2: [ev(2, "a")],
    3: [ev(3, "b")],
    4: [ev(4, "a/x"), ev(4, "a/y")],
    5: [WatchEvent(revision=5, key="a", type="delete")],
    6: [ev(6, "a/x")],
}
A_DEL = WatchEvent(revision=5, key="a", type="delete")


def watcher(*streams: WatchStream, key: str = "a", range_end: str = "b") -> WatcherLog:
    return WatcherLog(watcher_id="w1", key=key, range_end=range_end, streams=list(streams))


def stream(start: int, *responses: list[WatchEvent] | int) -> WatchStream:
    out = [WatchResponse(progress_revision=r) if isinstance(r, int) else WatchResponse(events=r)
           for r in responses]
    return WatchStream(start_revision=start, responses=out)


def kinds(log: WatcherLog) -> list[str]:
    return sorted({v.kind for v in check_watches(COMMITTED, [log])})


def test_clean_watch_with_reconnect_and_progress() -> None:
    log = watcher(
        stream(1, [ev(2, "a")], 3, [ev(4, "a/x"), ev(4, "a/y")]),
        stream(5, [A_DEL], [ev(6, "a/x")], 6),
    )
    assert check_watches(COMMITTED, [log]) == []


def test_key_ranges() -> None:
    single = watcher(stream(1, [ev(2, "a")], [A_DEL]), range_end="")
    assert kinds(single) == []
    everything = watcher(stream(3, [ev(3, "b")], [ev(4, "a/x"), ev(4, "a/y")]), key="",
                         range_end="\0")
    assert kinds(everything) == []
    # the same stream opened at 1 should have delivered revision 2 ('a' matches too)
    from_start = watcher(stream(1, [ev(3, "b")]), key="", range_end="\0")
    assert kinds(from_start) == ["reliable"]


def test_ordered_violation() -> None:
    log = watcher(stream(1, [ev(2, "a")], [ev(4, "a/x"), ev(4, "a/y")], [ev(2, "a")]))
    # the repeat is also a duplicate and splits revision 2 across responses
    assert kinds(log) == ["atomic", "ordered", "unique"]


def test_unique_violation() -> None:
    log = watcher(stream(1, [ev(2, "a"), ev(2, "a")]))
    assert kinds(log) == ["unique"]


def test_atomic_violation_split_across_responses() -> None:
    log = watcher(stream(1, [ev(2, "a")], [ev(4, "a/x")], [ev(4, "a/y")]))
    assert kinds(log) == ["atomic"]


def test_reliable_violation_gap() -> None:
    log = watcher(stream(1, [ev(2, "a")], [A_DEL]))
    assert kinds(log) == ["reliable"]
    (v,) = check_watches(COMMITTED, [log])
    assert v.revision == 4


def test_resumable_violation_skipped_revisions() -> None:
    log = watcher(stream(1, [ev(2, "a")]), stream(5, [A_DEL]))
    assert kinds(log) == ["reliable", "resumable"]


def test_resumable_violation_events_below_start() -> None:
    log = watcher(stream(1, [ev(2, "a")]), stream(3, [ev(2, "a")]))
    assert "resumable" in kinds(log)


def test_bookmarkable_violation_progress_before_events() -> None:
    log = watcher(stream(1, [ev(2, "a")], 4, [ev(4, "a/x"), ev(4, "a/y")]))
    assert kinds(log) == ["bookmarkable"]


def test_bookmarkable_violation_progress_behind_events() -> None:
    log = watcher(stream(1, [ev(2, "a")], [ev(4, "a/x"), ev(4, "a/y")], 3))
    assert kinds(log) == ["bookmarkable"]


def test_phantom_event() -> None:
    log = watcher(stream(1, [ev(2, "a", value="not-what-was-written")]))
    # the real event of revision 2 was not delivered either
    assert kinds(log) == ["phantom", "reliable"]


def test_every_watcher_checked_separately() -> None:
    good = watcher(stream(1, [ev(2, "a")]))
    bad = WatcherLog(watcher_id="w2", key="a", range_end="b",
                     streams=[stream(1, [ev(2, "a"), ev(2, "a")])])
    found = check_watches(COMMITTED, [good, bad])
    assert {v.watcher_id for v in found} == {"w2"}


def test_atomic_violation_part_of_a_revision_never_arrives() -> None:
    log = watcher(stream(1, [ev(2, "a")], [ev(4, "a/x")], [A_DEL]))
    assert kinds(log) == ["atomic", "reliable"]


def compacted(start: int, at: int) -> WatchStream:
    return WatchStream(start_revision=start, compact_revision=at)


def test_compacted_start_excuses_the_gap() -> None:
    # The watcher saw revision 2, reconnected at 3, but 3..4 were compacted away (at 5).
    log = watcher(stream(1, [ev(2, "a")]), compacted(3, 5), stream(5, [A_DEL], [ev(6, "a/x")]))
    assert check_watches(COMMITTED, [log]) == []


def test_compaction_does_not_excuse_what_follows() -> None:
    log = watcher(compacted(1, 5), stream(5, [ev(6, "a/x")]))
    assert kinds(log) == ["reliable"]  # revision 5 (delete a) is not compacted: lost


def test_compaction_claimed_for_a_live_revision() -> None:
    log = watcher(stream(1, [ev(2, "a")]), compacted(3, 3), stream(3, [ev(4, "a/x"),
                                                                        ev(4, "a/y")]))
    assert kinds(log) == ["resumable"]


def test_resume_after_compaction_must_start_at_it() -> None:
    log = watcher(compacted(1, 3), stream(5, [A_DEL]))
    assert kinds(log) == ["reliable", "resumable"]  # skipped revision 4


# --- revisions ------------------------------------------------------------------------------


def rev(op_id: int, call: float, ret: float, revision: int) -> RevisionObservation:
    return RevisionObservation(client_id=op_id, op_id=op_id, call_time=call, return_time=ret,
                               revision=revision)


def test_revisions_monotonic_in_real_time() -> None:
    obs = [rev(1, 0, 1, 5), rev(2, 2, 3, 5), rev(3, 2.5, 4, 7), rev(4, 3, 9, 6)]
    assert check_revisions(obs) == []  # 4 overlaps 3, so it may read before 3's revision


def test_revision_going_backwards_is_reported() -> None:
    obs = [rev(1, 0, 1, 5), rev(2, 2, 3, 9), rev(3, 4, 5, 8), rev(4, 0.5, 6, 1)]
    (v,) = check_revisions(obs)
    assert (v.op_id, v.revision, v.earlier_op_id, v.earlier_revision) == (3, 8, 2, 9)


def test_touching_intervals_are_concurrent_for_revisions() -> None:
    assert check_revisions([rev(1, 0, 2, 9), rev(2, 2, 3, 4)]) == []
    assert len(check_revisions([rev(1, 0, 2, 9), rev(2, 2.01, 3, 4)])) == 1
