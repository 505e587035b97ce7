"""Client sessions: exactly-once application, stale sequences, bounded LRU memory."""

from __future__ import annotations

import pytest

from quorum.errors import LeaseNotFound, SessionNotFound, StaleSequence
from quorum.state import (
    PutRequest,
    RangeRequest,
    SessionCloseRequest,
    SessionOpenRequest,
    StateConfig,
    StateMachine,
    encode_command,
)


class Client:
    def __init__(self, sm: StateMachine) -> None:
        self.sm = sm

    def apply(self, req: object, session: int = 0, seq: int = 0) -> object:
        return self.sm.apply(self.sm.applied_index + 1, encode_command(req, session, seq))  # type: ignore[arg-type]


def test_retry_of_last_seq_returns_recorded_result_without_reapplying() -> None:
    c = Client(StateMachine())
    sid = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    first = c.apply(PutRequest(b"k", b"v", prev_kv=True), sid, 1)
    again = c.apply(PutRequest(b"k", b"v", prev_kv=True), sid, 1)
    assert again == first
    assert c.sm.revision == 2  # one write on an empty store (revision 1)
    assert c.sm.range(RangeRequest(b"k")).kvs[0].version == 1
    c.apply(PutRequest(b"k", b"w"), sid, 2)
    assert c.sm.revision == 3


def test_older_seq_is_stale_and_changes_nothing() -> None:
    c = Client(StateMachine())
    sid = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    c.apply(PutRequest(b"k", b"1"), sid, 5)
    before = c.sm.state_hash()
    with pytest.raises(StaleSequence):
        c.apply(PutRequest(b"k", b"2"), sid, 4)
    with pytest.raises(StaleSequence):
        c.apply(PutRequest(b"k", b"2"), sid, 0)
    assert c.sm.state_hash() == before


def test_recorded_error_is_raised_again_on_retry() -> None:
    c = Client(StateMachine())
    sid = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    with pytest.raises(LeaseNotFound):
        c.apply(PutRequest(b"k", lease=9), sid, 1)
    with pytest.raises(LeaseNotFound):
        c.apply(PutRequest(b"k", lease=9), sid, 1)
    assert c.sm.revision == 1  # still the empty store's revision


def test_unknown_and_closed_sessions() -> None:
    c = Client(StateMachine())
    with pytest.raises(SessionNotFound):
        c.apply(PutRequest(b"k"), 77, 1)
    sid = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    c.apply(SessionCloseRequest(sid))
    with pytest.raises(SessionNotFound):
        c.apply(PutRequest(b"k"), sid, 1)
    with pytest.raises(SessionNotFound):
        c.apply(SessionCloseRequest(sid))


def test_least_recently_used_session_is_evicted_deterministically() -> None:
    c = Client(StateMachine(StateConfig(max_sessions=2)))
    a = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    b = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    c.apply(PutRequest(b"k"), a, 1)  # a is now more recently used than b
    new = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    assert (a, b, new) == (1, 2, 3)
    with pytest.raises(SessionNotFound):
        c.apply(PutRequest(b"k"), b, 1)
    c.apply(PutRequest(b"k"), a, 2)
    c.apply(PutRequest(b"k"), new, 1)
    assert len(c.sm.sessions.sessions) == 2


def test_sessions_survive_snapshot_restore() -> None:
    c = Client(StateMachine())
    sid = c.apply(SessionOpenRequest()).session_id  # type: ignore[attr-defined]
    first = c.apply(PutRequest(b"k", b"v"), sid, 1)
    with pytest.raises(LeaseNotFound):
        c.apply(PutRequest(b"k", lease=3), sid, 2)
    restored = Client(StateMachine.from_snapshot(c.sm.snapshot()))
    with pytest.raises(LeaseNotFound):
        restored.apply(PutRequest(b"k", lease=3), sid, 2)
    with pytest.raises(StaleSequence):
        restored.apply(PutRequest(b"k", b"v"), sid, 1)
    assert first is not None and restored.sm.state_hash() == c.sm.state_hash()
