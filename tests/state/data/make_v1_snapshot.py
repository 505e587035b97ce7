"""Writes ``v1_snapshot.bin`` and ``v1_snapshot.json``: a snapshot stream in format 1 and the
answers the machine that wrote it gave, for the upgrade test in tests/state/test_packed.py.

Format 1 was written by quorum up to commit ec25af5; this script was run once against that
tree (``git archive ec25af5 quorum | tar -x -C /tmp/v1 && PYTHONPATH=/tmp/v1 python
tests/state/data/make_v1_snapshot.py``). Run with the current tree it writes format 2, so do
not regenerate the committed files with it."""

from __future__ import annotations

import json
from pathlib import Path

from quorum.state import StateMachine
from quorum.state.commands import (
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    PutRequest,
    RangeRequest,
)
from quorum.state.config import StateConfig

HERE = Path(__file__).parent


def machine() -> StateMachine:
    sm = StateMachine(StateConfig(snapshot_chunk_keys=3))
    index = 1
    sm.apply(index, LeaseGrantRequest(60, 7))
    for i in range(200):
        index += 1
        sm.apply(index, PutRequest(b"k%02d" % (i % 9), b"v%d-" % i + b"x" * (i % 40),
                                   lease=7 if i % 5 == 0 else 0))
        if i % 31 == 0:
            index += 1
            sm.apply(index, DeleteRangeRequest(b"k05"))
    index += 1
    sm.apply(index, CompactionRequest(sm.revision - 60))
    return sm


def answers(sm: StateMachine) -> dict[str, object]:
    ranges = []
    for rev in range(sm.compact_revision, sm.revision + 1):
        resp = sm.range(RangeRequest(b"\0", b"\0", revision=rev))
        ranges.append([[kv.key.hex(), kv.value.hex(), kv.create_revision, kv.mod_revision,
                        kv.version, kv.lease] for kv in resp.kvs])
    return {"revision": sm.revision, "compact_revision": sm.compact_revision,
            "applied_index": sm.applied_index, "hash_kv": sm.hash_kv(), "ranges": ranges}


if __name__ == "__main__":
    sm = machine()
    (HERE / "v1_snapshot.bin").write_bytes(b"".join(sm.snapshot()))
    (HERE / "v1_snapshot.json").write_text(json.dumps(answers(sm)) + "\n")
