"""process_ready's order of work (DESIGN §2): which steps may move, and which never do."""

from __future__ import annotations

from typing import Any

import pytest

from quorum.node.ready import process_ready, run_sync
from quorum.raft.types import (
    Entry,
    HardState,
    Message,
    MessageType,
    Ready,
    Snapshot,
    SnapshotMetadata,
)


class _Core:
    """Records the calls process_ready makes (what it uses of a NodeCore)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def send(self, messages: list[Message]) -> None:
        if messages:
            self.calls.append("send " + ",".join(m.type.name for m in messages))

    def apply(self, rd: Ready) -> None:
        self.calls.append("apply")

    def advance(self, rd: Ready) -> None:
        self.calls.append("advance")


def _order(rd: Ready) -> list[str]:
    core = _Core()

    async def persist(_rd: Ready) -> None:
        core.calls.append("persist")

    run_sync(process_ready(core, rd, persist))  # type: ignore[arg-type]
    return core.calls


ENTRY = Entry(term=1, index=5, data=b"x")
NOTICE = Message(MessageType.APP, to=2, from_=1, term=1, index=5, commit=5)
APPEND = Message(MessageType.APP, to=2, from_=1, term=1, index=4, entries=(ENTRY,))
ACK = Message(MessageType.APP_RESP, to=1, from_=2, term=1, index=5)


def test_a_ready_with_entries_sends_early_persists_sends_applies_advances() -> None:
    rd = Ready(1, entries=[ENTRY], committed_entries=[Entry(term=1, index=4)],
               early_messages=[APPEND], messages=[ACK], hard_state=HardState(1, 1, 4),
               must_sync=True)
    assert _order(rd) == ["send APP", "persist", "send APP_RESP", "apply", "advance"]


def test_a_commit_only_ready_applies_before_it_persists_and_sends() -> None:
    """Nothing to fsync and entries to apply: the clients are answered first."""
    rd = Ready(1, committed_entries=[ENTRY], early_messages=[NOTICE], messages=[ACK],
               hard_state=HardState(1, 1, 5), must_sync=False)
    assert _order(rd) == ["apply", "send APP", "persist", "send APP_RESP", "advance"]


@pytest.mark.parametrize("extra", [
    {"must_sync": True, "hard_state": HardState(2, 1, 5)},  # a new term or vote: fsync first
    {"snapshot": Snapshot(SnapshotMetadata(index=5, term=1))},
    {"entries": [Entry(term=1, index=6, data=b"y")], "must_sync": True},
])
def test_anything_to_make_durable_keeps_the_apply_after_persist(extra: dict[str, Any]) -> None:
    rd = Ready(1, committed_entries=[ENTRY], early_messages=[NOTICE], messages=[ACK], **extra)
    calls = _order(rd)
    assert calls.index("persist") < calls.index("apply")
    assert calls.index("persist") < calls.index("send APP_RESP")


def test_a_ready_with_nothing_to_apply_keeps_the_usual_order() -> None:
    rd = Ready(1, early_messages=[NOTICE], messages=[ACK], hard_state=HardState(1, 1, 5))
    assert _order(rd) == ["send APP", "persist", "send APP_RESP", "apply", "advance"]
