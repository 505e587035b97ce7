"""Client sessions: exactly-once application of retried commands (Raft thesis §6.3).

A session is opened by a committed SessionOpen command; its id is the next value of a counter
(deterministic on every replica). Each command of a session carries a ``seq``:

- ``seq`` above the last applied: apply, then record (seq, outcome) as the session's last;
- ``seq`` equal to the last applied: a retry; return the recorded outcome, apply nothing;
- ``seq`` below: StaleSequence (the client already saw a later answer).

Memory is bounded: at most ``max_sessions`` sessions; opening one more evicts the least
recently used, "use" being the applied index of the session's last command. The order lives
in the dict's insertion order (a use moves the session to the end), so eviction is the same
on every replica. A command of an evicted session gets SessionNotFound: the client must open
a new session, and a retry of a command whose answer was lost is then no longer detectable.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from quorum.errors import SessionNotFound, StaleSequence
from quorum.state.commands import ErrorResponse, Response

Outcome = Response | ErrorResponse


class Session:
    __slots__ = ("id", "last_index", "last_seq", "outcome")

    def __init__(self, session_id: int, index: int) -> None:
        self.id = session_id
        self.last_seq = 0
        self.last_index = index
        self.outcome: Outcome | None = None


class SessionTable:
    __slots__ = ("evicted", "max_sessions", "next_id", "sessions")

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.sessions: dict[int, Session] = {}  # Invariant: ordered by last_index ascending
        self.next_id = 1
        self.evicted = 0  # counter, informational

    def open(self, index: int) -> int:
        session_id = self.next_id
        self.next_id += 1
        self.sessions[session_id] = Session(session_id, index)
        while len(self.sessions) > self.max_sessions:
            del self.sessions[next(iter(self.sessions))]  # least recently used
            self.evicted += 1
        return session_id

    def close(self, session_id: int) -> None:
        if self.sessions.pop(session_id, None) is None:
            raise SessionNotFound()

    def lookup(self, session_id: int, seq: int) -> Outcome | None:
        """The recorded outcome if (session_id, seq) was applied already, else None (apply it).
        Raises SessionNotFound, or StaleSequence for a seq below the last applied one."""
        session = self.sessions.get(session_id)
        if session is None:
            raise SessionNotFound()
        if seq == session.last_seq and session.outcome is not None:
            return session.outcome
        if seq <= session.last_seq:
            raise StaleSequence(
                f"state: stale sequence {seq} for session {session_id}: "
                f"{session.last_seq} was applied"
            )
        return None

    def record(self, session_id: int, seq: int, index: int, outcome: Outcome) -> None:
        session = self.sessions.pop(session_id, None)  # re-inserted at the end: most recent
        if session is None:
            return  # the command closed (or, opening another, evicted) its own session
        session.last_seq = seq
        session.last_index = index
        session.outcome = outcome
        self.sessions[session_id] = session

    def digest(self, encode: Callable[[Outcome], bytes]) -> int:
        """Digest of every session (in LRU order, which is part of the replicated state)."""
        crc = zlib.crc32(b"%d" % self.next_id)
        for session in self.sessions.values():
            crc = zlib.crc32(b"%d:%d:%d" % (session.id, session.last_seq, session.last_index), crc)
            if session.outcome is not None:
                crc = zlib.crc32(encode(session.outcome), crc)
        return crc
