"""The list-append workload (Jepsen's ``append``), checked with :mod:`quorum.verify.elle`.

Each key holds a comma-separated list of integers. A transaction is 1-4 micro-ops
``["append", k, v]`` (v unique) or ``["r", k, None]``. How a transaction runs on quorum:

* read-only: one read-only txn of gets (a linearizable read: it goes through ReadIndex), the
  lists it returns are the reads;
* with appends: an optimistic transaction. One read-only txn reads every key involved with
  its ``mod_revision``; the micro-ops are applied to those lists locally (a read after an
  append of the same transaction sees it); then one txn compares every key's mod revision
  (``version == 0`` for an absent key) and writes the new lists. If a compare fails nothing
  was written and the attempt is made again (at most ``ATTEMPTS`` times, then the operation
  is recorded as failed). Because the commit compares every key the transaction read, the
  reads are exactly the state at the commit's revision: the transaction is atomic at one
  point between its invocation and completion, which is what strict serializability asks.

A commit that timed out is indeterminate (recorded INFO): Elle then considers both outcomes.
Keys rotate every ``KEY_PERIOD_S`` seconds (a sliding window of ``keys`` keys) so that lists
stay short and reads stay cheap in long runs.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from quorum.client import txn as t
from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.state.commands import KeyValue, RangeResponse
from quorum.verify.elle import check_list_append
from quorum.verify.history import Recorder, Status
from quorum.verify.report import write_report
from quorum.verify.workloads_base import (
    CALL_TIMEOUT_S,
    READER_PAUSE_S,
    RunContext,
    Workload,
    WorkloadVerdict,
    verdict_of,
)

ATTEMPTS = 3
KEY_PERIOD_S = 5.0
MAX_MICRO_OPS = 4


class _CompareFailed(Exception):
    """The optimistic commit lost a race: nothing was written."""


def _parse(kv: KeyValue | None) -> list[int]:
    if kv is None or not kv.value:
        return []
    return [int(x) for x in kv.value.decode().split(",")]


class _AppendClient:
    def __init__(self, cid: int, client: AsyncClient, recorder: Recorder, keys: int,
                 rng: random.Random, started: float, read_only: bool = False) -> None:
        self.cid = cid
        self.read_only = read_only  # reads alone, paced, from the node its client is bound to
        self.client = client
        self.recorder = recorder
        self.keys = keys
        self.rng = rng
        self.started = started
        self.n = 0

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            await self.one()
            if self.read_only:
                await asyncio.sleep(READER_PAUSE_S)

    def _txn(self) -> list[list[Any]]:
        base = int((time.monotonic() - self.started) / KEY_PERIOD_S)
        ops: list[list[Any]] = []
        for _ in range(self.rng.randint(1, MAX_MICRO_OPS)):
            key = f"append/{base + self.rng.randrange(self.keys)}"
            if not self.read_only and self.rng.random() < 0.5:
                self.n += 1
                ops.append(["append", key, self.cid * 10_000_000 + self.n])
            else:
                ops.append(["r", key, None])
        return ops

    async def one(self) -> None:
        ops = self._txn()
        op_id = self.recorder.invoke(self.cid, "txn", "", ops)
        writes = any(m[0] == "append" for m in ops)
        try:
            out = await asyncio.wait_for(self._execute(ops), CALL_TIMEOUT_S * ATTEMPTS)
        except _CompareFailed:
            self.recorder.fail(op_id, "compare failed")
            return
        except (TimeoutError, QuorumError, OSError) as exc:
            if writes and not isinstance(exc, _PreReadFailed):
                self.recorder.timeout(op_id)  # the commit may have happened
            else:
                self.recorder.fail(op_id, repr(exc))
            await asyncio.sleep(0.05)
            return
        self.recorder.complete(op_id, out)

    async def _read(self, keys: list[str]) -> dict[str, KeyValue | None]:
        resp = await self.client.txn([], [t.get(k.encode()) for k in keys], [])
        out: dict[str, KeyValue | None] = {}
        for k, r in zip(keys, resp.responses, strict=True):
            assert isinstance(r, RangeResponse)
            out[k] = r.kvs[0] if r.kvs else None
        return out

    async def _execute(self, ops: list[list[Any]]) -> list[list[Any]]:
        keys = sorted({m[1] for m in ops})
        for _ in range(ATTEMPTS):
            try:
                current = await self._read(keys)
            except QuorumError as exc:
                raise _PreReadFailed(str(exc)) from exc
            lists = {k: _parse(current[k]) for k in keys}
            out: list[list[Any]] = []
            for f, k, v in ops:
                if f == "append":
                    lists[k].append(v)
                    out.append([f, k, v])
                else:
                    out.append([f, k, list(lists[k])])
            written = sorted({m[1] for m in ops if m[0] == "append"})
            if not written:
                return out
            if await self._commit(current, lists, written):
                return out
        raise _CompareFailed()

    async def _commit(self, current: dict[str, KeyValue | None], lists: dict[str, list[int]],
                      written: list[str]) -> bool:
        cmps = [t.version(k.encode()) == 0 if kv is None
                else t.mod_revision(k.encode()) == kv.mod_revision
                for k, kv in current.items()]
        puts = [t.put(k.encode(), ",".join(map(str, lists[k])).encode()) for k in written]
        resp = await self.client.txn(cmps, puts, [])
        return bool(resp.succeeded)


class _PreReadFailed(QuorumError):
    """The read before the commit failed: nothing was written."""


class AppendWorkload(Workload):
    name = "append"

    def __init__(self, ctx: RunContext, clients: int, keys: int) -> None:
        super().__init__(ctx)
        self.recorder = Recorder(clock=ctx.clock)
        started = time.monotonic()
        self.workers = [_AppendClient(1000 + i, ctx.client(), self.recorder, max(keys, 2),
                                      ctx.rng_child(), started) for i in range(clients)]
        self.workers += [_AppendClient(1100 + j, c, self.recorder, max(keys, 2), ctx.rng_child(),
                                       started, read_only=True)
                         for j, c in enumerate(ctx.pinned_readers())]

    async def run(self, until: float) -> None:
        await asyncio.gather(*(w.run(until) for w in self.workers))

    async def check(self) -> WorkloadVerdict:
        history = self.recorder.history()
        result = await asyncio.to_thread(check_list_append, history)
        json_path, html_path = write_report(self.prefix(""), result, history,
                                            title="quorum verify: list-append workload")
        problems = [f"{a.kind}: {a.description}" for a in result.anomalies[:10]]
        if len(result.anomalies) > 10:
            problems.append(f"... {len(result.anomalies) - 10} more anomalies")
        ok = sum(op.status is Status.OK for op in history)
        return WorkloadVerdict(
            name=self.name, verdict=verdict_of(problems), operations=len(history),
            ok_operations=ok, problems=problems,
            details={"anomalies": result.kinds, "transactions": result.txn_count,
                     "edges": result.edge_count,
                     "indeterminate": sum(op.indeterminate for op in history),
                     "failed": sum(op.status is Status.FAIL for op in history)},
            report_html=str(html_path), report_json=str(json_path),
        )
