"""The pluggable state machine interface: what the runtime applies committed entries to.

Implement this to use quorum as an embeddable Raft library for your own state (see
examples/counter.py). The runtime guarantees: ``apply`` is called once per committed entry, in
log order, with strictly increasing indexes (after ``restore``, from the snapshot index + 1);
``snapshot`` is called between applies and must capture the state as of ``applied_index``.

A state machine may also offer ``apply_batch`` (:class:`BatchStateMachine`): the runtime then
packs the proposals of one loop turn into one entry, and the commands of that entry arrive in
one call, in order, sharing the entry's index. Without it, every entry carries one command.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol


class StateMachine(Protocol):
    def apply(self, index: int, data: bytes) -> Any:
        """Apply one committed command; the return value goes back to the proposer.

        Must be deterministic: the same state and command give the same result and state.
        Errors that are part of the result (a failed compare, an unknown key) should be
        returned, not raised; an exception raised here is delivered to the proposer and the
        entry counts as applied (the state must be unchanged in that case).
        """
        ...

    def snapshot(self) -> Iterator[bytes]:
        """The whole state as a stream of chunks, as of the last applied index."""
        ...

    def restore(self, chunks: Iterable[bytes]) -> None:
        """Replace the whole state with a snapshot produced by ``snapshot``."""
        ...


class BatchStateMachine(StateMachine, Protocol):
    def apply_batch(self, index: int, commands: list[bytes]) -> list[Any]:
        """Apply the commands of one committed entry, in order, all at ``index``.

        Returns one result per command. A command that fails with a QuorumError (the state
        unchanged by it, as for ``apply``) has that exception object in its place and the
        following commands still apply; any other exception propagates, as from ``apply``.
        """
        ...


class CounterStateMachine:
    """A tiny example state machine: commands are signed integers (8 bytes, big-endian) added to a
    counter; the result is the new value. Used by the embedded-library example and benchmark."""

    def __init__(self) -> None:
        self.value = 0
        self.applied = 0

    def apply(self, index: int, data: bytes) -> int:
        self.value += int.from_bytes(data, "big", signed=True)
        self.applied = index
        return self.value

    def snapshot(self) -> Iterator[bytes]:
        yield self.value.to_bytes(16, "big", signed=True) + self.applied.to_bytes(8, "big")

    def restore(self, chunks: Iterable[bytes]) -> None:
        blob = b"".join(chunks)
        self.value = int.from_bytes(blob[:16], "big", signed=True)
        self.applied = int.from_bytes(blob[16:24], "big")
