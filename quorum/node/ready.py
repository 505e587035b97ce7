"""The one place that orders a Ready's work (docs/raft.md, DESIGN §2).

Both the asyncio server and the deterministic simulator call ``process_ready``. The simulator
passes a ``persist`` coroutine that never suspends and runs this coroutine to completion with
``run_sync``, so the same code path is exercised in simulation and production.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from quorum.node.core import NodeCore
from quorum.raft.types import Ready

T = TypeVar("T")


async def process_ready(
    core: NodeCore, rd: Ready, persist: Callable[[Ready], Awaitable[None]]
) -> None:
    """Persist -> send -> apply -> advance. Never reorder these steps, with one exception.

    - ``early_messages`` depend on nothing unpersisted (a leader's appends, thesis §10.2.1),
      so they leave first and replication overlaps the local fsync;
    - ``messages`` (votes, append acks) promise durability, so they wait for ``persist``;
    - committed entries are applied only after persistence (a single node commits its own
      entries only once they are durable, so nothing is applied that a crash could lose).

    The exception: a Ready that has entries to apply and nothing to make durable (see
    ``_commit_only``) applies first, then sends and persists.
    """
    if _commit_only(rd):
        core.apply(rd)
        core.send(rd.early_messages)
        await persist(rd)
        core.send(rd.messages)
    else:
        core.send(rd.early_messages)
        await persist(rd)
        core.send(rd.messages)
        core.apply(rd)
    core.advance(rd)


def _commit_only(rd: Ready) -> bool:
    """True for a Ready with committed entries and no entries, no snapshot and no term or
    vote to fsync (``must_sync`` off): typically the leader's commit of the writes it is
    about to answer. Applying first is safe: every committed entry was made durable by an
    earlier Ready (this one appends nothing) and, being committed, is durable on a
    majority; what persist writes here is at most the new commit index, without an fsync,
    which a crash may lose whether it is written before or after the apply (a restarted
    node learns the commit index again from the leader). It answers the clients before
    the commit index is written (~50 us) and before the early messages (commit notices,
    sent lazily by the runtime anyway) are handed to the transport."""
    return (bool(rd.committed_entries) and not rd.entries and rd.snapshot is None
            and not rd.must_sync)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must complete without suspending (simulator, tests)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("coroutine suspended; run_sync needs non-suspending awaitables")
