"""``Client``: a blocking facade over :class:`AsyncClient`.

It runs an event loop in a daemon thread and forwards each call to it, so the async client's
pipelining and failover work unchanged; calls from several threads are fine (each one waits
for its own answer). Watches come back as blocking iterators.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from quorum.api.native import messages as m
from quorum.client.aio import AsyncClient
from quorum.client.watch import Watcher
from quorum.errors import UsageError
from quorum.state.commands import Event

T = TypeVar("T")

# the AsyncClient coroutine methods the facade forwards, name for name
_FORWARDED = (
    "connect", "range", "get", "get_prefix", "put", "delete", "txn", "compact",
    "request_progress", "lease_grant", "lease_revoke", "lease_keepalive_once",
    "lease_time_to_live", "lease_list", "member_list", "member_add", "member_remove",
    "member_update", "member_promote", "status", "move_leader", "snapshot", "hash_kv", "hash",
    "call",
)


class SyncWatcher:
    """A blocking watch iterator: ``for batch in watcher`` (see :class:`Watcher`)."""

    def __init__(self, client: Client, watcher: Watcher) -> None:
        self._client = client
        self._watcher = watcher

    def __iter__(self) -> Iterator[m.WatchEvents]:
        return self

    def __next__(self) -> m.WatchEvents:
        try:
            return self._client.run(self._watcher.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def events(self) -> Iterator[Event]:
        for batch in self:
            yield from batch.events

    def cancel(self) -> None:
        self._client.run(self._watcher.cancel())


class Client:
    """Blocking client: ``with Client(["127.0.0.1:2379"]) as c: c.put(b"k", b"v")``.

    Every AsyncClient coroutine method is available under the same name and arguments,
    returning the result instead of a coroutine; errors are the same typed exceptions.
    """

    def __init__(self, endpoints: Sequence[str], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="quorum-client")
        self._thread.start()
        self.aio: AsyncClient = self.run(_make_client(list(endpoints), options))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the client's loop and wait for its result. Raises UsageError when
        called from the loop's own thread (it would wait for itself forever)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise UsageError("Client.run() called from its own event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name not in _FORWARDED:
            raise AttributeError(name)
        method = getattr(self.aio, name)

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self.run(method(*args, **kwargs))

        blocking.__name__ = name
        blocking.__doc__ = method.__doc__
        return blocking

    def watch(self, key: bytes, range_end: bytes = b"", **kwargs: Any) -> SyncWatcher:
        watcher = self.run(_make_watcher(self.aio, key, range_end, kwargs))
        return SyncWatcher(self, watcher)

    def close(self) -> None:
        """Close the connection and stop the loop thread. The object is unusable after."""
        if self._loop.is_closed():
            return
        self.run(self.aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make_client(endpoints: list[str], options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(endpoints, **options)  # created on its loop (it owns asyncio objects)


async def _make_watcher(
    client: AsyncClient, key: bytes, range_end: bytes, kwargs: dict[str, Any]
) -> Watcher:
    watcher = client.watch(key, range_end, **kwargs)
    await watcher.start()
    return watcher
