"""Delivery order survives a reconnect even when the old connection delivers late.

A stalling proxy sits between A and B. It freezes A's connection (as a partition would: no
FIN, no RST, bytes held in flight), A's keepalive gives up and reconnects through a fresh
connection, messages flow again, and only then does the proxy release what the frozen
connection held. Those stale messages reach B after newer ones unless B, on the newer HELLO
from the same peer, stopped delivering from the older connection.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from quorum.transport import inbound
from quorum.transport.config import TransportConfig

from .harness import LOOPBACK, Node, app, run

KEEPALIVE = TransportConfig(ping_interval_s=0.02, ping_timeout_s=0.1, backoff_initial_s=0.01,
                            backoff_max_s=0.02)


class StallingProxy:
    """Forwards connections to ``target``; ``stall()`` freezes the current ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.frozen = False
        self.epoch = 0  # stall() freezes the connections opened before it
        self.held: list[tuple[asyncio.StreamWriter, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return (host, port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        opened = self.epoch  # connections opened after stall() flow normally

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if self.frozen and opened < self.epoch:
                    self.held.append((dst, data))  # in flight, not delivered (yet)
                else:
                    dst.write(data)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    def stall(self) -> None:
        self.frozen = True
        self.epoch += 1

    def release(self) -> None:
        """Unfreeze; deliver what was held, to whichever socket is still open."""
        self.frozen = False
        for dst, data in self.held:
            if not dst.is_closing():
                dst.write(data)
        self.held.clear()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


async def _scenario() -> list[int]:
    a, b = Node(1, config=KEEPALIVE), Node(2, config=KEEPALIVE)
    await a.transport.start()
    await b.transport.start()
    proxy = StallingProxy(b.address)
    a.transport.update_peers({2: await proxy.start()})
    index = 0

    async def send_until(predicate: object, what: str) -> None:
        nonlocal index
        while not predicate():  # type: ignore[operator]
            index += 1
            a.transport.send([app(1, 2, index)])
            await asyncio.sleep(0.002)
            assert index < 20_000, f"timed out waiting for: {what}"

    await send_until(lambda: len(b.received) >= 20, "traffic through the proxy")
    proxy.stall()
    await send_until(lambda: a.transport.link_stats()[2].connects >= 2, "A reconnects")
    delivered = len(b.received)
    await send_until(lambda: len(b.received) >= delivered + 20, "traffic on the new link")
    assert proxy.held, "the frozen connection held nothing: the scenario proves nothing"
    proxy.release()
    await send_until(lambda: len(b.received) >= delivered + 40, "more traffic after release")
    await a.transport.close()
    await b.transport.close()
    await proxy.close()
    return [m.entries[0].index for m in b.received]


def test_stale_connection_cannot_reorder_delivery(loop_name: str) -> None:
    got: list[int] = []

    async def scenario() -> None:
        got.extend(await _scenario())

    run(scenario(), loop_name)
    assert got == sorted(set(got)), "delivery order differs from send order"


def test_planted_bug_without_superseding_reorders(monkeypatch: pytest.MonkeyPatch) -> None:
    # Break the rule on purpose: a newer stream no longer supersedes the peer's older one.
    monkeypatch.setattr(inbound.InboundConnection, "_take_over", lambda self: None)
    monkeypatch.setattr(inbound.InboundConnection, "_superseded", lambda self: False)
    got: list[int] = []

    async def scenario() -> None:
        got.extend(await _scenario())

    run(scenario())
    assert got != sorted(set(got)), "the planted bug went unnoticed"


@pytest.mark.torture
@pytest.mark.parametrize("seed", range(5))
def test_chaos_campaign_keeps_order_and_recovers(seed: int, loop_name: str) -> None:
    """Many random freeze / release / cut rounds: order holds and traffic always resumes."""
    rng = random.Random(seed)
    got: list[int] = []

    async def scenario() -> None:
        a, b = Node(1, config=KEEPALIVE), Node(2, config=KEEPALIVE)
        await a.transport.start()
        await b.transport.start()
        proxy = StallingProxy(b.address)
        a.transport.update_peers({2: await proxy.start()})
        index = 0
        for _ in range(30):
            action = rng.choice(["freeze", "release", "cut", "calm"])
            if action == "freeze":
                proxy.stall()
            elif action == "release":
                proxy.release()
            elif action == "cut":
                for writer in proxy.writers:
                    writer.close()
                proxy.writers.clear()
            for _ in range(rng.randint(5, 60)):
                index += 1
                a.transport.send([app(1, 2, index)])
                await asyncio.sleep(0.002)
        proxy.release()
        healed_at = index
        while not b.received or b.received[-1].entries[0].index <= healed_at:
            index += 1  # distinct indexes: a duplicate would be a transport bug too
            a.transport.send([app(1, 2, index)])
            await asyncio.sleep(0.01)
            assert index < healed_at + 3000, "traffic never resumed"
        got.extend(m.entries[0].index for m in b.received)
        await a.transport.close()
        await b.transport.close()
        await proxy.close()

    run(scenario(), loop_name)
    assert got == sorted(set(got)), "delivery order differs from send order"
