"""The persist thread: one dedicated thread that runs the node's storage writes in order.

The event loop hands it a call and awaits an asyncio future, which the thread settles with a
single ``call_soon_threadsafe`` once the call returns (no ``concurrent.futures`` future, no
executor bookkeeping, no future chaining: the hand-off sits on every write's critical path,
twice per replicated entry in a cluster). Calls run one at a time, in submission order, so
storage writes never overlap (DurableStorage requires its writers to be serialized).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


class Persister:
    """Runs callables on its own thread, one at a time, in submission order.

    ``run`` must be called from a running event loop; ``close`` waits for the calls already
    submitted, then ends the thread (later ``run`` calls raise RuntimeError).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._closed = False
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; the returned future gets its result or exception."""
        if self._closed:
            raise RuntimeError("persister is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, fut, fn, args))
        return fut

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._thread.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, fut, fn, args = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:  # delivered to the awaiting coroutine
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, fut, result, error)


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
