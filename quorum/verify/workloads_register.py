"""The register workload: read / write / compare-and-set on a few keys, checked for
linearizability per key (Herlihy & Wing) with :mod:`quorum.verify.linearizability`."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

from quorum.client import txn as t
from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.verify.history import Recorder
from quorum.verify.linearizability import Verdict, check
from quorum.verify.models import RegisterModel
from quorum.verify.report import write_report
from quorum.verify.workloads_base import (
    CALL_TIMEOUT_S,
    NOT_APPLIED,
    READER_PAUSE_S,
    RunContext,
    Workload,
    WorkloadVerdict,
    verdict_of,
)


class _RegisterClient:
    """One sequential client: random read / write / cas on a few keys (``read_only``: reads
    alone, paced, from the one node its client is bound to)."""

    def __init__(self, cid: int, client: AsyncClient, recorder: Recorder, keys: list[str],
                 rng: random.Random, read_only: bool = False) -> None:
        self.cid = cid
        self.read_only = read_only
        self.client = client
        self.recorder = recorder
        self.keys = keys
        self.rng = rng
        self.n = 0
        self.last: dict[str, int | None] = {}  # last value this client read per key

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            await self.one()

    async def one(self) -> None:
        key = self.rng.choice(self.keys)
        self.n += 1
        value = self.cid * 1_000_000 + self.n
        roll = 0.0 if self.read_only else self.rng.random()
        if roll < 0.4:
            await self._op("read", key, None, lambda: self._read(key))
            if self.read_only:
                await asyncio.sleep(READER_PAUSE_S)
        elif roll < 0.8:
            await self._op("write", key, value,
                           lambda: self.client.put(key.encode(), str(value).encode()))
        else:
            expected = self.last.get(key)
            await self._op("cas", key, [expected, value], lambda: self._cas(key, expected, value))

    async def _read(self, key: str) -> int | None:
        kv = await self.client.get(key.encode())
        value = int(kv.value) if kv is not None else None
        self.last[key] = value
        return value

    async def _cas(self, key: str, expected: int | None, new: int) -> bool:
        k = key.encode()
        cmp = t.version(k) == 0 if expected is None else t.value(k) == str(expected).encode()
        resp = await self.client.txn([cmp], [t.put(k, str(new).encode())], [])
        return bool(resp.succeeded)

    async def _op(self, kind: str, key: str, arg: Any, call: Callable[[], Any]) -> None:
        op_id = self.recorder.invoke(self.cid, kind, key, arg)
        try:
            out = await asyncio.wait_for(call(), CALL_TIMEOUT_S)
        except (TimeoutError, QuorumError, OSError) as exc:
            if kind == "read" or isinstance(exc, NOT_APPLIED):
                self.recorder.fail(op_id, repr(exc))
            else:
                self.recorder.timeout(op_id)  # may or may not have taken effect
            await asyncio.sleep(0.05)
            return
        self.recorder.complete(op_id, out if kind != "write" else None)


class RegisterWorkload(Workload):
    name = "register"

    def __init__(self, ctx: RunContext, clients: int, keys: int) -> None:
        super().__init__(ctx)
        self.recorder = Recorder(clock=ctx.clock)
        names = [f"reg/{i}" for i in range(keys)]
        self.workers = [_RegisterClient(i, ctx.client(), self.recorder, names, ctx.rng_child())
                        for i in range(clients)]
        self.workers += [_RegisterClient(100 + j, c, self.recorder, names, ctx.rng_child(),
                                         read_only=True)
                         for j, c in enumerate(ctx.pinned_readers())]

    async def run(self, until: float) -> None:
        await asyncio.gather(*(w.run(until) for w in self.workers))

    async def check(self) -> WorkloadVerdict:
        history = self.recorder.history()
        result = await asyncio.to_thread(check, RegisterModel(), history, max_steps=5_000_000)
        json_path, html_path = write_report(self.prefix(""), result, history, RegisterModel(),
                                            "quorum verify: register workload")
        problems = []
        if result.verdict == Verdict.ILLEGAL:
            problems.append("the client history is not linearizable")
        return WorkloadVerdict(
            name=self.name,
            verdict=verdict_of(problems, unknown=result.verdict != Verdict.OK),
            operations=len(history), ok_operations=sum(op.status.name == "OK" for op in history),
            problems=problems,
            details={"linearizability": result.verdict.name,
                     "indeterminate": sum(op.indeterminate for op in history)},
            report_html=str(html_path), report_json=str(json_path),
        )
