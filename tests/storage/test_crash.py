"""Crash at every persistence point of a workload; recovery must yield an acknowledged prefix.

Every write, fsync, truncate, create, rename, remove and directory fsync the storage performs
is a crash point (SimFileSystem.crash_at_event), tested both before and after the event takes
effect and with torn or clean loss of unsynced data. The workload covers appends, commit-only
updates without fsync, a conflicting-tail overwrite, segment rotation, snapshot creation,
compaction with segment release, and a snapshot installed from a leader.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from quorum.errors import CorruptionError
from quorum.raft.types import HardState, Snapshot, SnapshotMetadata
from quorum.storage import DurableStorage, SimFileSystem, SimulatedCrash, StorageOptions
from quorum.storage.wal import PLANTED_BUGS

from .model import VOTERS, State, after_install, after_save, describe, entries, first_match

DATA_DIR = "/node"


@dataclass(frozen=True)
class Step:
    run: Callable[[DurableStorage], object]
    apply: Callable[[State], State]
    durable: bool  # once it returns, its effect must survive any crash


def save(term: int, vote: int, commit: int, first: int, count: int, sync: bool = True) -> Step:
    hs = HardState(term, vote, commit)
    es = entries(term, first, count, size=300) if count else []
    return Step(
        lambda s: s.save(hs, es, must_sync=sync), lambda st: after_save(st, hs, es), durable=sync
    )


def snapshot(index: int) -> Step:
    def run(s: DurableStorage) -> None:
        s.create_snapshot(index, VOTERS, [b"state-at-", str(index).encode()])
        s.compact(index)

    return Step(run, lambda st: st, durable=True)


def install(index: int, term: int) -> Step:
    snap = Snapshot(SnapshotMetadata(index, term, VOTERS), b"leader-state" * 20)
    return Step(lambda s: s.apply_snapshot(snap), lambda st: after_install(st, index), durable=True)


WORKLOAD = [
    save(1, 1, 0, 1, 5),
    save(1, 1, 3, 6, 5, sync=False),  # entries without fsync: may be lost, only as a suffix
    save(1, 1, 5, 0, 0, sync=False),  # commit-only hard state change: no fsync needed
    save(2, 2, 5, 8, 6),  # a new term overwrites the conflicting tail from index 8
    save(2, 2, 9, 14, 10),  # crosses a segment boundary (small segments below)
    snapshot(9),
    save(2, 2, 16, 24, 8),
    snapshot(16),  # second snapshot: segments below the first one are released
    save(3, 0, 20, 32, 12),
    snapshot(20),
    install(60, 4),  # a leader's snapshot replaces the log
    save(4, 0, 60, 61, 3),
    save(4, 0, 62, 0, 0, sync=False),
]
OPTIONS = StorageOptions(segment_bytes=4096)


def history_of(workload: list[Step]) -> list[State]:
    states = [State()]
    for step in workload:
        states.append(step.apply(states[-1]))
    return states


def run_until_crash(fs: SimFileSystem, options: StorageOptions) -> tuple[int, int]:
    """Run the workload; return (last durable step, step in progress or len) at the crash."""
    storage = DurableStorage.open(fs, DATA_DIR, options)
    durable = 0
    for number, step in enumerate(WORKLOAD, start=1):
        try:
            step.run(storage)
        except SimulatedCrash:
            return durable, number
        if step.durable:
            durable = number
    return durable, len(WORKLOAD)


def count_events(options: StorageOptions) -> int:
    fs = SimFileSystem(random.Random(0))
    run_until_crash(fs, options)
    return fs.events


def crash_and_check(event: int, after: bool, torn: bool, seed: int, options: StorageOptions) -> str:
    """One crash run; returns "" when recovery is correct, else a description."""
    fs = SimFileSystem(random.Random(seed))
    opened = DurableStorage.open(fs, DATA_DIR, options)  # the initial segment is not a point
    opened.close()
    fs.crash_at_event, fs.crash_after = fs.events + event, after
    durable, attempted = run_until_crash(fs, options)
    fs.crash(torn=torn)
    where = f"event={event} after={after} torn={torn} seed={seed}"
    failure = check_recovery(copy.deepcopy(fs), options, durable, attempted, where)
    # Recovery itself may write (cut a torn tail, finish an install): crash inside it too.
    for nested in range(1, recovery_events(fs, options) + 1):
        crashed = copy.deepcopy(fs)
        crashed.crash_at_event = crashed.events + nested
        try:
            DurableStorage.open(crashed, DATA_DIR, options)
        except SimulatedCrash:
            crashed.crash(torn=torn)
        nested_where = f"{where} then crash at recovery event {nested}"
        failure = failure or check_recovery(crashed, options, durable, attempted, nested_where)
    return failure


def recovery_events(fs: SimFileSystem, options: StorageOptions) -> int:
    probe = copy.deepcopy(fs)
    before = probe.events
    try:
        DurableStorage.open(probe, DATA_DIR, options)
    except CorruptionError:
        return 0  # reported by check_recovery
    return probe.events - before


def check_recovery(
    fs: SimFileSystem, options: StorageOptions, durable: int, attempted: int, where: str
) -> str:
    try:
        recovered = DurableStorage.open(fs, DATA_DIR, options)
    except CorruptionError as exc:  # a correct store never looks corrupt after a crash
        return f"{where}: durable step {durable}, crashed in step {attempted}: {exc}"
    if first_match(recovered, history_of(WORKLOAD), durable, attempted) is None:
        return (
            f"{where}: durable step {durable}, crashed in step {attempted}, "
            f"recovered {describe(recovered)}"
        )
    return ""


def campaign(options: StorageOptions, seeds: range) -> list[str]:
    total = count_events(options)
    failures = []
    for event in range(1, total + 1):
        for after in (False, True):
            for seed in seeds:
                failure = crash_and_check(event, after, torn=seed % 2 == 1, seed=seed, options=options)
                if failure:
                    failures.append(failure)
    return failures


def test_workload_touches_every_kind_of_persistence_point() -> None:
    fs = SimFileSystem(random.Random(0))
    run_until_crash(fs, OPTIONS)
    kinds = {"write", "sync", "truncate", "create", "rename", "remove", "fsync_dir"}
    assert kinds <= {kind for kind, count in fs.event_kinds.items() if count}
    storage = DurableStorage.open(fs, DATA_DIR, OPTIONS)
    assert storage.wal.segments[0].seq > 1, "the workload must release segments"
    assert len(fs.listdir(f"{DATA_DIR}/snap")) == 2, "the workload must prune snapshots"


def test_crash_at_every_persistence_point_recovers_an_acknowledged_prefix() -> None:
    failures = campaign(OPTIONS, range(8))
    assert not failures, "\n".join(failures[:20])


def test_crash_points_with_preallocated_segments() -> None:
    """Preallocated segments end in zeros and are cut back at rotation: same guarantees."""
    failures = campaign(StorageOptions(segment_bytes=4096, preallocate=True), range(4))
    assert not failures, "\n".join(failures[:20])


def test_crash_points_with_space_reserved_ahead() -> None:
    """Space reserved in steps ahead of the writes (the node runtime's setting): segments
    grow by zeroed steps, appends land inside them, rotation cuts the rest: same guarantees."""
    failures = campaign(StorageOptions(segment_bytes=4096, preallocate_ahead=700), range(4))
    assert not failures, "\n".join(failures[:20])


@pytest.mark.torture
def test_crash_at_every_persistence_point_many_seeds() -> None:
    failures = campaign(OPTIONS, range(64))
    assert not failures, "\n".join(failures[:20])


@pytest.mark.parametrize("bug", sorted(PLANTED_BUGS))
def test_every_planted_durability_bug_is_caught_by_the_crash_campaign(bug: str) -> None:
    """Acknowledging before fsync, or skipping the fsync that orders segments, must lose or
    damage acknowledged data in some crash: otherwise the campaign proves nothing."""
    planted = StorageOptions(segment_bytes=4096, planted_bugs=frozenset({bug}))
    failures = campaign(planted, range(2))
    assert failures, f"planted bug {bug!r} went unnoticed"


def test_planted_skip_fsync_flag_is_the_same_bug() -> None:
    assert "skip_fsync" in StorageOptions(planted_skip_fsync=True).wal_options().planted_bugs
