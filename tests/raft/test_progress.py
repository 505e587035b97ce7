"""Progress state machine and the in-flight window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quorum.raft.progress import Inflights, Progress, ProgressState, ProgressTracker
from quorum.raft.quorum import JointConfig


def test_inflights_bounded_by_count_and_bytes() -> None:
    window = Inflights(capacity=3)
    for i in (5, 7, 9):
        assert not window.full()
        window.add(i, 10)
    assert window.full()
    window.free_le(7)
    assert window.count() == 1 and not window.full()
    by_bytes = Inflights(capacity=100, max_bytes=25)
    by_bytes.add(1, 10)
    by_bytes.add(2, 10)
    assert not by_bytes.full()
    by_bytes.add(3, 10)
    assert by_bytes.full()
    by_bytes.free_le(1)
    assert not by_bytes.full()


@given(st.lists(st.integers(1, 5), min_size=1, max_size=40), st.integers(0, 200))
def test_inflights_free_le_drops_exactly_the_acknowledged(steps: list[int], ack: int) -> None:
    window = Inflights(capacity=1000)
    last = 0
    added = []
    for step in steps:
        last += step
        window.add(last, 1)
        added.append(last)
    window.free_le(ack)
    assert window.count() == sum(1 for i in added if i > ack)


def make(state: ProgressState, match: int, next_index: int) -> Progress:
    pr = Progress(next_index, Inflights(4))
    pr.match = match
    if state == ProgressState.REPLICATE:
        pr.become_replicate()
    elif state == ProgressState.SNAPSHOT:
        pr.become_snapshot(10)
    return pr


def test_probe_pauses_after_one_append_until_answer() -> None:
    pr = make(ProgressState.PROBE, 3, 5)
    assert not pr.is_paused()
    pr.update_on_entries_send(2, 6, 20)
    assert pr.is_paused()
    assert pr.next == 5  # probing does not move next optimistically
    assert pr.maybe_update(6)
    assert not pr.is_paused() and pr.match == 6 and pr.next == 7


def test_replicate_pipelines_until_window_full() -> None:
    pr = make(ProgressState.REPLICATE, 3, 4)
    for last in (5, 7, 9, 11):
        assert not pr.is_paused()
        pr.update_on_entries_send(2, last, 20)
    assert pr.next == 12 and pr.is_paused()
    pr.maybe_update(7)
    pr.inflights.free_le(7)
    assert not pr.is_paused()


def test_decrement_rules() -> None:
    rep = make(ProgressState.REPLICATE, 5, 10)
    assert not rep.maybe_decr_to(4, 4)  # stale: below match
    assert rep.maybe_decr_to(8, 6) and rep.next == 6
    probe = make(ProgressState.PROBE, 2, 9)
    assert not probe.maybe_decr_to(5, 3)  # not the probe we sent (next - 1 == 8)
    assert probe.maybe_decr_to(8, 4) and probe.next == 5
    low = make(ProgressState.PROBE, 6, 9)
    assert low.maybe_decr_to(8, 0) and low.next == 7  # never below match + 1


def test_snapshot_state_is_paused_and_probes_after() -> None:
    pr = make(ProgressState.SNAPSHOT, 2, 3)
    assert pr.is_paused() and pr.pending_snapshot == 10
    pr.become_probe()
    assert pr.state == ProgressState.PROBE and pr.next == 11  # after the snapshot


def test_tracker_committed_and_quorum_active() -> None:
    trk = ProgressTracker(4)
    trk.voters = JointConfig({1, 2, 3})
    for node_id, match in ((1, 7), (2, 5), (3, 1)):
        trk.progress[node_id] = Progress(match + 1, trk.new_inflights())
        trk.progress[node_id].match = match
    assert trk.committed() == 5
    trk.progress[1].recent_active = True
    assert not trk.quorum_active()
    trk.progress[3].recent_active = True
    assert trk.quorum_active()
    assert [i for i, _ in trk.visit()] == [1, 2, 3]
