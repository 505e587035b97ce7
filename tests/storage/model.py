"""A reference model for storage tests: the log as a plain dict, one state per operation.

A crash may lose any operation that was not made durable, but the survivors always form a
prefix of the history (each save is one record). So after a crash and recovery, the storage
must equal the model state after some operation m with ``durable <= m <= attempted``, where
``durable`` is the last operation whose durability was acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quorum.raft.types import ConfState, Entry, HardState
from quorum.storage import DurableStorage


@dataclass(frozen=True)
class State:
    hard_state: HardState = field(default_factory=HardState)
    log: dict[int, Entry] = field(default_factory=dict)
    last: int = 0  # last index (a snapshot install moves it without entries)


def after_save(state: State, hs: HardState | None, entries: list[Entry]) -> State:
    log = dict(state.log)
    last = state.last
    if entries:
        for index in range(entries[0].index, last + 1):
            log.pop(index, None)
        log.update({e.index: e for e in entries})
        last = entries[-1].index
    return State(hs or state.hard_state, log, last)


def after_install(state: State, index: int) -> State:
    return State(state.hard_state, {}, index)


def describe(storage: DurableStorage) -> str:
    hs, _ = storage.initial_state()
    return (
        f"hs={hs} first={storage.first_index()} last={storage.last_index()} "
        f"snap={storage.snapshot_metadata().index}"
    )


def matches(storage: DurableStorage, state: State) -> bool:
    """Does the recovered storage equal ``state`` on everything it still holds?"""
    hs, _ = storage.initial_state()
    snap = storage.snapshot_metadata().index
    want = state.hard_state
    if (hs.term, hs.vote, hs.commit) != (want.term, want.vote, max(want.commit, snap)):
        return False
    if storage.last_index() != max(state.last, snap) or snap > state.last:
        return False
    lo, hi = storage.first_index(), storage.last_index() + 1
    got = storage.entries(lo, hi) if lo < hi else []
    return all(state.log.get(e.index) == e for e in got)


def first_match(storage: DurableStorage, history: list[State], lo: int, hi: int) -> int | None:
    """The first m in [lo, hi] (clamped to the history) whose state the storage equals."""
    for m in range(lo, min(hi, len(history) - 1) + 1):
        if matches(storage, history[m]):
            return m
    return None


VOTERS = ConfState(voters=(1, 2, 3))


def entries(term: int, first: int, count: int, size: int = 40) -> list[Entry]:
    return [Entry(term, i, data=bytes([i % 251]) * size) for i in range(first, first + count)]
