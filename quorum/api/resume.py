"""Carry on, inside a task, a coroutine that was started by hand.

Both client ports run a connection's first steps synchronously (``coro.send(None)``) so that
the common case costs no task; when the coroutine then has to wait, a task takes it over
from where it stopped with ``resume``."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any


class _Continue:
    """Awaitable that drives a coroutine already started by hand: it passes the future the
    coroutine is waiting on up to the task, and the task's wake-ups (or a cancellation) back
    down. Equivalent to ``yield from`` on the half-run coroutine."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._first
        while True:
            try:
                try:
                    sent = yield value
                except BaseException as exc:  # cancellation and the like: deliver inside
                    value = coro.throw(exc)
                else:
                    value = coro.send(sent)
            except StopIteration:
                return


async def resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Run the rest of ``coro``, which yielded ``waiting_on`` at its first wait."""
    await _Continue(coro, waiting_on)
