"""Reads on one thread while a single writer saves, overwrites and compacts on another."""

from __future__ import annotations

import random
import sys
import threading

from quorum.errors import Compacted, Unavailable
from quorum.raft.types import HardState
from quorum.storage import DurableStorage, SimFileSystem, StorageOptions

from .model import VOTERS, entries


def test_reader_never_sees_a_torn_memory_log() -> None:
    storage = DurableStorage.open(SimFileSystem(random.Random(1)), "/d", StorageOptions())
    done = threading.Event()
    problems: list[str] = []

    def write() -> None:
        term = 1
        for round_ in range(600):
            last = storage.last_index()
            if round_ % 7 == 0 and last > 3:  # a new leader overwrites the last 3 entries
                term += 1
                storage.save(HardState(term, 0, last - 3), entries(term, last - 2, 5), True)
            else:
                storage.save(HardState(term, 0, last), entries(term, last + 1, 4), True)
            if round_ % 5 == 4:
                commit = storage.hard_state.commit
                storage.create_snapshot(commit, VOTERS, [b"s"])
                storage.compact(commit)
        done.set()

    def read() -> None:
        while not done.is_set():
            lo, hi = storage.first_index(), storage.last_index() + 1
            try:
                got = storage.entries(lo, hi)
                terms = [storage.term(e.index) for e in got[-3:]]
            except (Compacted, Unavailable):
                continue  # the log moved between the two calls: allowed
            if [e.index for e in got] != list(range(lo, lo + len(got))):
                problems.append(f"non-contiguous read at {lo}")
            if any(t < 1 for t in terms):
                problems.append("bad term")

    writer, reader = threading.Thread(target=write), threading.Thread(target=read)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often so that races would show
    try:
        reader.start()
        writer.start()
        writer.join(timeout=60)
        reader.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert done.is_set() and not problems, problems[:5]
