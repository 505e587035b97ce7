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
    """Persist -> send -> apply -> advance. Never reorder these steps.

    - ``early_messages`` depend on nothing unpersisted (a leader's appends, thesis §10.2.1),
      so they leave first and replication overlaps the local fsync;
    - ``messages`` (votes, append acks) promise durability, so they wait for ``persist``;
    - committed entries are applied only after persistence (a single node commits its own
      entries only once they are durable, so nothing is applied that a crash could lose).
    """
    core.send(rd.early_messages)
    await persist(rd)
    core.send(rd.messages)
    core.apply(rd)
    core.advance(rd)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that must complete without suspending (simulator, tests)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("coroutine suspended; run_sync needs non-suspending awaitables")
