"""The compaction actor: compactions in small steps under faults, what the runs check about
them, and the planted bugs that those checks catch."""

from __future__ import annotations

import gc
import logging
import random
import re
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from quorum.sim.run import profile_options, run_seed
from quorum.sim.watch import WatchWorkload, committed_history
from quorum.sim.world import SimNode, Violation, World
from quorum.state import commands as sc
from quorum.state.watch import WatchHub, WatchResponse


@pytest.fixture(autouse=True)
def quiet_and_fast() -> Iterator[None]:
    logging.disable(logging.WARNING)
    old = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    yield
    gc.set_threshold(*old)
    logging.disable(logging.NOTSET)


def _interrupted_series(trace: list[str]) -> int:
    """Series with a crash, a new leader or a restart between their first step and their
    end (the interleaving the actor is there to create)."""
    open_at: dict[str, int] = {}
    count = 0
    for i, line in enumerate(trace):
        if m := re.search(r"compact at revision (\d+)", line):
            open_at[m.group(1)] = i
        elif (m := re.search(r"compaction at (\d+) (done|stopped)", line)) and m.group(1) in open_at:
            between = trace[open_at.pop(m.group(1)):i]
            count += any(re.search(r" crash$| leads term | start \(", x) for x in between)
    return count


@pytest.mark.parametrize("profile", ["default", "compaction"])
def test_compactions_run_in_steps_among_faults_and_hold_every_invariant(profile: str) -> None:
    results, traces = [], []
    for seed in range(3):
        trace: list[str] = []
        results.append(run_seed(seed, profile_options(profile), trace=trace.append))
        traces.extend(trace)
    for r in results:
        assert r.ok, f"{r.violation}: {r.detail}\nreplay: {r.replay}"
        assert r.lin_verdict == "OK"
        assert r.compactions >= 2
    assert sum(r.compactions_completed for r in results) >= 3
    # several steps per compaction on average: each step is a log entry of its own
    assert sum(r.compaction_steps for r in results) >= 3 * sum(r.compactions_completed
                                                              for r in results)
    assert _interrupted_series(traces) >= 1


def test_watchers_resumed_below_a_compaction_are_cancelled_and_checked() -> None:
    results = [run_seed(seed, profile_options("compaction")) for seed in range(3)]
    assert all(r.ok for r in results), [(r.violation, r.detail) for r in results]
    assert all(r.watch_compacted > 0 for r in results)
    assert all(r.watch_responses > 100 for r in results)
    # overlapping series: the newer compaction supersedes the older one's remaining steps
    assert sum(r.compaction_ends.get("RevisionCompacted", 0) for r in results) > 0


def test_a_run_with_compactions_replays_identically() -> None:
    runs: list[tuple[list[str], Any]] = []
    for _ in range(2):
        trace: list[str] = []
        runs.append((trace, run_seed(4, profile_options("compaction"), trace=trace.append)))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1].history == runs[1][1].history
    assert any("compact at revision" in line for line in runs[0][0])


# --- planted bugs -----------------------------------------------------------------------------

def test_a_compaction_step_that_differs_between_replicas_breaks_the_state_hash() -> None:
    """Odd-id replicas leave the last key of each step uncompacted (planted): the state-hash
    invariant must flag it within a few seeds, and the same seed without the bug is clean."""
    bug = frozenset({"skip_compaction_key"})
    for seed in range(3):
        result = run_seed(seed, profile_options("default", bugs=bug))
        if not result.ok:
            break
    else:
        pytest.fail("skip_compaction_key: no violation in 3 seeds")
    assert result.violation == "state-hash", result.detail
    assert "--bugs skip_compaction_key" in result.replay
    clean = run_seed(seed, profile_options("default"))
    assert clean.ok, f"seed {seed} fails without the bug too: {clean.violation} {clean.detail}"
    assert clean.compaction_steps > 0


def test_a_compacted_cancel_naming_no_applied_compaction_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the hub cancels with its current revision instead of the compaction's. The
    checker alone would excuse the gap (the stream did start below that revision), so the
    watcher would silently skip events that still exist; the workload's check catches it."""

    def wrong_revision(self: WatchHub, watcher: Any) -> None:
        self._cancel(watcher, WatchResponse(watcher.id, self.store.revision, canceled=True,
                                            compact_revision=self.store.revision))

    monkeypatch.setattr(WatchHub, "_cancel_compacted", wrong_revision)
    result = run_seed(1, profile_options("compaction"))
    assert not result.ok
    assert result.violation == "watch-compacted", result.detail
    monkeypatch.undo()
    assert run_seed(1, profile_options("compaction")).ok


# --- the history that compaction drops is kept for the watch check ---------------------------

class _Box:
    def __init__(self) -> None:
        self.value: Any = None

    def resolve(self, value: Any) -> None:
        self.value = value

    def fail(self, exc: BaseException) -> None:
        self.value = exc


def _leader(world: World) -> SimNode:
    for _ in range(200):
        world.run_until(world.now + 10)
        if world.leader():
            return world.nodes[world.leader()]
    raise AssertionError("no leader")


def _commit(world: World, leader: SimNode, request: sc.Request) -> Any:
    assert leader.core is not None
    box = _Box()
    leader.core.propose(sc.encode_command(request), box)
    world.drive(leader)
    for _ in range(100):
        if box.value is not None:
            return box.value
        world.run_until(world.now + 10)
    raise AssertionError("not applied")


def test_harvest_keeps_the_history_a_compaction_drops() -> None:
    world = World(3, 3)
    leader = _leader(world)
    for i in range(12):
        _commit(world, leader, sc.PutRequest(b"k%d" % (i % 3), b"%d" % i))
    _commit(world, leader, sc.DeleteRangeRequest(b"k0"))
    before = committed_history(world)
    workload = WatchWorkload(world, random.Random(0))
    workload.harvest(leader)
    assert leader.kv is not None
    revision = leader.kv.store.revision
    assert isinstance(_commit(world, leader, sc.CompactionRequest(revision)),
                      sc.CompactionResponse)
    world.run_until(world.now + 200)
    after = committed_history(world)
    assert len(after) < len(before)  # the compaction did drop history
    assert committed_history(world, workload.harvested) == before
    assert revision in world.compactions
    # planted: the saved history disagrees with a record the replicas still hold
    kept = max(after)
    tampered = {rev: dict(evs) for rev, evs in workload.harvested.items()}
    key = after[kept][0].key
    tampered[kept][key] = msgspec.structs.replace(tampered[kept][key], value="forged")
    with pytest.raises(Violation) as err:
        committed_history(world, tampered)
    assert err.value.kind == "watch-history"
