"""Test helpers: a LocalBackend served over the native protocol on loopback, a controllable
clock for lease expiry, and a TCP proxy that can lose an answer on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quorum.api.local import LocalBackend
from quorum.api.native.server import NativeServer, serve_native
from quorum.client import AsyncClient

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
    """Run one async test body with a hard deadline (a hang fails instead of blocking)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


class FakeClock:
    """Monotonic seconds the test moves by hand (lease expiry without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Env:
    backend: LocalBackend
    server: NativeServer
    clock: FakeClock
    clients: list[AsyncClient] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def client(self, **options: Any) -> AsyncClient:
        options.setdefault("timeout_s", 5.0)
        c = AsyncClient([self.endpoint], **options)
        self.clients.append(c)
        return c

    async def expire(self, seconds: float) -> tuple[int, ...]:
        """Move the clock and let the backend expire the leases whose deadline passed."""
        self.clock.advance(seconds)
        return await self.backend.expire_leases()


@contextlib.asynccontextmanager
async def serving(port: int = 0) -> AsyncIterator[Env]:
    clock = FakeClock()
    backend = LocalBackend(clock=clock)
    server = await serve_native(backend, "127.0.0.1", port)
    env = Env(backend, server, clock)
    try:
        yield env
    finally:
        for c in env.clients:
            await c.close()
        await server.close()
        await backend.close()


class LossyProxy:
    """Forwards bytes between clients and ``target``. When ``drop_next_answer`` is set, the
    next server->client bytes are swallowed and that client connection is cut: the request
    reached the server, the answer never reached the client."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_next_answer = False
        self.dropped = 0
        self.blackhole = False  # swallow everything both ways, keep connections open
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
            try:
                while data := await src.read(65536):
                    if self.blackhole:
                        continue  # like a SIGSTOPped server: connected, silent
                    if answers and self.drop_next_answer:
                        self.drop_next_answer = False
                        self.dropped += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
