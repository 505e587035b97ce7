"""Hypothesis stateful test: random saves, tail overwrites, snapshots, compaction, installs,
crashes and reopens against the model of tests/storage/model.py."""

from __future__ import annotations

import random
from collections.abc import Callable

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from quorum.errors import DiskFullError, FatalIOError
from quorum.raft.types import HardState, Snapshot, SnapshotMetadata
from quorum.storage import DurableStorage, SimFileSystem, SimulatedCrash, StorageOptions

from .model import VOTERS, State, after_install, after_save, describe, entries, first_match

OPTIONS = StorageOptions(segment_bytes=4096, snapshots_kept=2)


class StorageMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.fs = SimFileSystem(random.Random(0))
        self.storage = DurableStorage.open(self.fs, "/d", OPTIONS)
        self.history = [State()]
        self.durable = 0  # index into history of the last acknowledged-durable state
        self.term = 1

    @property
    def state(self) -> State:
        return self.history[-1]

    def record(self, state: State, durable: bool) -> None:
        self.history.append(state)
        if durable:
            self.durable = len(self.history) - 1

    def attempt(self, action: Callable[[], object], state: State, durable: bool) -> bool:
        """Run one storage call; if an armed crash point fires inside it, the call may or may
        not have taken effect: record it as attempted, crash and check recovery."""
        try:
            action()
        except SimulatedCrash:
            self.record(state, durable=False)
            self.recover(torn=True)
            return False
        self.record(state, durable)
        return True

    @rule(events=st.integers(1, 8))
    def arm_crash(self, events: int) -> None:
        """Crash at the n-th persistence event from now, inside whatever call comes next."""
        self.fs.crash_at_event = self.fs.events + events
        self.fs.crash_after = events % 2 == 0

    @rule(
        count=st.integers(1, 12),
        back=st.integers(0, 6),
        new_term=st.booleans(),
        sync=st.booleans(),
        size=st.sampled_from([1, 50, 700]),
    )
    def save(self, count: int, back: int, new_term: bool, sync: bool, size: int) -> None:
        """Append, possibly overwriting an uncommitted tail (a new leader's entries)."""
        floor = max(self.state.hard_state.commit, self.storage.first_index() - 1)
        first = max(floor + 1, self.storage.last_index() + 1 - back)
        self.term += int(new_term)
        es = entries(self.term, first, count, size=size)
        hs = HardState(self.term, 1, self.state.hard_state.commit)
        self.attempt(lambda: self.storage.save(hs, es, must_sync=sync), after_save(self.state, hs, es), sync)

    @rule(room=st.integers(0, 3000), count=st.integers(1, 12), sync=st.booleans())
    def save_on_a_full_disk(self, room: int, count: int, sync: bool) -> None:
        """ENOSPC: either the save fits, or DiskFullError and nothing changed."""
        first = self.storage.last_index() + 1
        es = entries(self.term, first, count, size=300)
        hs = HardState(self.term, 1, self.state.hard_state.commit)
        self.fs.capacity_bytes = self.fs.used_bytes() + room
        try:
            self.attempt(lambda: self.storage.save(hs, es, must_sync=sync), after_save(self.state, hs, es), sync)
        except DiskFullError:
            assert self.storage.last_index() == first - 1
        finally:
            self.fs.capacity_bytes = None

    @rule(count=st.integers(1, 5))
    def fsync_fails(self, count: int) -> None:
        """EIO on fsync is fatal: the save may or may not survive; the node must restart."""
        es = entries(self.term, self.storage.last_index() + 1, count)
        hs = HardState(self.term, 1, self.state.hard_state.commit)
        self.fs.crash_at_event = None
        self.fs.fail_sync_at(1)
        try:
            self.storage.save(hs, es, must_sync=True)
        except FatalIOError:
            pass
        else:
            raise AssertionError("a failed fsync was acknowledged")
        with pytest.raises(FatalIOError):
            self.storage.save(None, [], must_sync=True)
        self.record(after_save(self.state, hs, es), durable=False)
        self.recover(torn=True)

    @rule(step=st.integers(1, 20))
    def commit(self, step: int) -> None:
        """Commit-only hard state change: written, not fsynced."""
        old = self.state.hard_state
        hs = HardState(old.term, old.vote, min(old.commit + step, self.storage.last_index()))
        self.attempt(lambda: self.storage.save(hs, [], must_sync=False), after_save(self.state, hs, []), False)

    @rule(compact=st.booleans())
    def snapshot(self, compact: bool) -> None:
        index = self.state.hard_state.commit
        if index <= self.storage.snapshot_metadata().index or index < self.storage.first_index() - 1:
            return
        def run() -> None:
            self.storage.create_snapshot(index, VOTERS, [b"s", str(index).encode()])
            if compact:
                self.storage.compact(index)

        self.attempt(run, self.state, durable=True)

    @rule(fraction=st.floats(0, 1))
    def compact_partly(self, fraction: float) -> None:
        """Compact to some index between the compaction point and the snapshot."""
        base, snap = self.storage.first_index() - 1, self.storage.snapshot_metadata().index
        if snap <= base:
            return
        index = base + 1 + int(fraction * (snap - base - 1))
        self.attempt(lambda: self.storage.compact(index), self.state, durable=False)

    @rule(ahead=st.integers(1, 30))
    def install(self, ahead: int) -> None:
        index = self.storage.last_index() + ahead
        self.term += 1
        snap = Snapshot(SnapshotMetadata(index, self.term, VOTERS), b"L")
        if self.attempt(lambda: self.storage.apply_snapshot(snap), after_install(self.state, index), True):
            hs = HardState(self.term, 0, index)
            self.attempt(lambda: self.storage.save(hs, [], must_sync=True), after_save(self.state, hs, []), True)

    @rule(torn=st.booleans())
    def crash(self, torn: bool) -> None:
        self.recover(torn)

    def recover(self, torn: bool) -> None:
        self.fs.crash(torn=torn)
        self.storage = DurableStorage.open(self.fs, "/d", OPTIONS)
        m = first_match(self.storage, self.history, self.durable, len(self.history) - 1)
        assert m is not None, (
            f"recovered {describe(self.storage)} matches no state in "
            f"[{self.durable}, {len(self.history) - 1}]"
        )
        self.history = [self.history[m]]
        self.durable = 0
        self.term = max(self.term, self.storage.initial_state()[0].term)

    @rule()
    def reopen(self) -> None:
        self.fs.crash_at_event = None
        self.storage.close()
        self.storage = DurableStorage.open(self.fs, "/d", OPTIONS)
        assert first_match(self.storage, self.history, len(self.history) - 1, len(self.history) - 1) is not None

    @invariant()
    def reads_match_model(self) -> None:
        lo, hi = self.storage.first_index(), self.storage.last_index() + 1
        assert hi - 1 == self.state.last
        for entry in self.storage.entries(lo, hi) if lo < hi else []:
            assert self.state.log[entry.index] == entry


StorageMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_storage_against_model = StorageMachine.TestCase


@pytest.mark.torture
def test_storage_against_model_long() -> None:
    run_state_machine_as_test(
        StorageMachine, settings=settings(max_examples=3000, stateful_step_count=80, deadline=None)
    )
