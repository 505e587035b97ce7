"""Client histories under lost answers are linearizable (quorum.verify's checker).

Several sequential lanes run reads, writes and compare-and-swaps on a few registers through
a proxy that keeps losing answers (the request was applied, the answer never arrived). The
client retries inside its sessions, so every completed operation took effect exactly once
and the recorded history must be linearizable. The planted variant retries writes outside
any session: a lost-answer cas is then applied, re-sent, fails against its own new value and
is reported as failed, which the checker must reject.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from quorum.client import AsyncClient
from quorum.client import txn as t
from quorum.errors import ConnectionLost, RequestTimeout
from quorum.verify.history import Operation, Recorder
from quorum.verify.linearizability import Verdict, check
from quorum.verify.models import RegisterModel

from .helpers import Env, LossyProxy, run, serving

KEYS = ("a", "b")


async def _lane(
    c: AsyncClient, lane: int, rec: Recorder, rng: random.Random, proxy: LossyProxy, ops: int
) -> None:
    for _ in range(ops):
        key = rng.choice(KEYS)
        kind = rng.choice(("read", "write", "cas", "cas"))
        value: Any = str(rng.randrange(4))
        arg: Any = [str(rng.randrange(4)), value] if kind == "cas" else value
        if rng.random() < 0.15:
            proxy.drop_next_answer = True
        op = rec.invoke(lane, kind, key, None if kind == "read" else arg)
        try:
            if kind == "read":
                kv = await c.get(key.encode())
                rec.complete(op, None if kv is None else kv.value.decode())
            elif kind == "write":
                await c.put(key.encode(), value.encode())
                rec.complete(op)
            else:
                resp = await c.txn(
                    [t.value(key.encode()) == arg[0].encode()], [t.put(key.encode(), value.encode())]
                )
                rec.complete(op, resp.succeeded)
        except (RequestTimeout, ConnectionLost):
            rec.timeout(op)


async def _history(env: Env, seed: int, lanes: int = 4, ops: int = 40) -> list[Operation]:
    loop = asyncio.get_running_loop()
    proxy = LossyProxy(env.server.port)
    await proxy.start()
    rec = Recorder(clock=loop.time)
    rng = random.Random(seed)
    clients = [AsyncClient([proxy.endpoint], timeout_s=5, retry_backoff_s=0.002) for _ in range(lanes)]
    env.clients += clients
    await asyncio.gather(*(_lane(c, i, rec, rng, proxy, ops) for i, c in enumerate(clients)))
    await proxy.close()
    assert proxy.dropped >= 5  # answers really were lost along the way
    return rec.history()


@pytest.mark.parametrize("seed", [11, 12])
def test_history_with_lost_answers_is_linearizable(seed: int) -> None:
    async def body() -> None:
        async with serving() as env:
            history = await _history(env, seed)
            result = check(RegisterModel(), history)
            assert result.verdict is Verdict.OK, result.failing()

    run(body())


def test_planted_bug_sessionless_retries_are_not_linearizable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def sessionless(self: AsyncClient, body: Any, deadline: float) -> Any:
        return await self._attempts(body, 0, 0, False, deadline)

    monkeypatch.setattr(AsyncClient, "_session_write", sessionless)

    async def body() -> None:
        async with serving() as env:
            verdicts = [check(RegisterModel(), await _history(env, seed)).verdict for seed in (11, 12, 13)]
            assert Verdict.ILLEGAL in verdicts

    run(body())
