"""The lock workload: contenders take a quorum lock and write a fenced resource.

Each contender loops: grant a lease (short TTL) and renew it in the background, acquire
:class:`quorum.client.recipes.lock.Lock` under it (the fencing token is the lock key's create
revision), write the protected resource carrying the token, release. Sometimes a holder
*pauses* after acquiring: its renewals stop and it sleeps past the TTL (a GC pause or a
frozen VM), so the lease expires, another contender takes the lock, and the paused holder
then writes with a stale token. That is the case fencing exists for (Kleppmann, "How to do
distributed locking"; TEST_SCENARIOS I.53).

The resource is two keys updated by one txn. Fenced: the txn only writes when the highest
token the resource has accepted (``lockres/fence``, zero-padded so that byte order is number
order) is not above the writer's; unfenced (``fencing=False``, a planted bug of the
*resource*, for tests): the txn writes unconditionally. Every write's outcome is recorded in
the order the resource processed it (txn revisions) and checked with
:func:`quorum.verify.workloads.check_fencing`: with fencing no stale write may be accepted.

Hold intervals (from acquire's return to the release call) are recorded too and overlaps
between holders reported: expected only when the earlier holder paused past its TTL or lost
its lease; the others are listed as unexplained (a lease can also expire under faults when
renewals cannot reach a leader in time).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping, Sequence

import msgspec

from quorum.client import txn as t
from quorum.client.aio import AsyncClient, LeaseKeeper
from quorum.client.recipes.lock import Lock
from quorum.errors import QuorumError
from quorum.verify.workloads import FencedWrite, check_fencing
from quorum.verify.workloads_base import (
    CALL_TIMEOUT_S,
    RunContext,
    Workload,
    WorkloadVerdict,
    persist,
)
from quorum.verify.workloads_html import simple_page

LOCK_NAME = "verify"
FENCE = b"lockres/fence"
DATA = b"lockres/data"


def _pad(token: int) -> bytes:
    return b"%020d" % token


class Hold(msgspec.Struct, frozen=True, kw_only=True):
    """One holder's time with the lock, on the runner's monotonic clock."""

    client_id: int
    token: int
    acquired: float
    released: float
    paused: bool = False  # the holder stopped renewing and slept past its TTL
    lease_lost: bool = False  # its renewals found the lease gone


class Overlap(msgspec.Struct, frozen=True, kw_only=True):
    first: Hold
    second: Hold
    explained: bool


def hold_overlaps(holds: Sequence[Hold]) -> list[Overlap]:
    """Pairs of holds of different contenders whose intervals intersect, the earlier-acquired
    first. Explained when the earlier holder paused or lost its lease (then the lock service
    rightly gave the lock away). O(n log n + overlaps)."""
    order = sorted(holds, key=lambda h: h.acquired)
    out: list[Overlap] = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            if b.acquired >= a.released:
                break
            if b.client_id != a.client_id:
                out.append(Overlap(first=a, second=b, explained=a.paused or a.lease_lost))
    return out


def resource_order(writes: Sequence[tuple[int, FencedWrite]]) -> list[FencedWrite]:
    """Writes in the order the resource processed them, from (store revision, write) pairs.

    An accepted write created revision R; a refused one evaluated its compare on the state
    at the revision it reports (the store's current one), i.e. after the write that made it.
    """
    return [w for _, w in sorted(writes, key=lambda p: (p[0], not p[1].accepted))]


class _Contender:
    def __init__(self, cid: int, client: AsyncClient, work: LockWorkload,
                 rng: random.Random) -> None:
        self.cid = cid
        self.client = client
        self.work = work
        self.rng = rng

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                await self.one()
            except (TimeoutError, QuorumError, OSError):
                self.work.errors += 1
                await asyncio.sleep(0.1)

    async def one(self) -> None:
        ttl = self.work.ttl_s
        lease = await asyncio.wait_for(self.client.lease_grant(ttl), CALL_TIMEOUT_S)
        keeper = self.client.keep_alive(lease.id, ttl)
        lock = Lock(self.client, LOCK_NAME, lease_id=lease.id)
        try:
            token = await lock.acquire(timeout_s=10.0)
            await self._hold(token, keeper)
        finally:
            await keeper.stop()
            with contextlib.suppress(QuorumError, TimeoutError):
                await asyncio.wait_for(lock.release(), CALL_TIMEOUT_S)
            with contextlib.suppress(QuorumError, TimeoutError):
                await asyncio.wait_for(self.client.lease_revoke(lease.id), CALL_TIMEOUT_S)

    async def _hold(self, token: int, keeper: LeaseKeeper) -> None:
        acquired = time.monotonic()
        paused = self.rng.random() < self.work.pause_probability
        if paused:
            await keeper.stop()  # the whole holder freezes: its renewals stop too
            await asyncio.sleep(self.work.ttl_s + 1.0 + self.rng.random())
        else:
            await asyncio.sleep(self.rng.uniform(0.0, 0.2))
        await self.work.write(self.client, self.cid, token)
        self.work.holds.append(Hold(client_id=self.cid, token=token, acquired=acquired,
                                    released=time.monotonic(), paused=paused,
                                    lease_lost=keeper.lost.is_set()))


class LockWorkload(Workload):
    name = "lock"

    def __init__(self, ctx: RunContext, clients: int, *, ttl_s: int = 2, fencing: bool = True,
                 pause_probability: float = 0.25) -> None:
        super().__init__(ctx)
        self.ttl_s = ttl_s
        self.fencing = fencing
        self.pause_probability = pause_probability
        self.writes: list[tuple[int, FencedWrite]] = []
        self.holds: list[Hold] = []
        self.indeterminate = 0
        self.errors = 0
        self._setup = ctx.client()
        self.contenders = [_Contender(2000 + i, ctx.client(), self, ctx.rng_child())
                           for i in range(clients)]

    async def run(self, until: float) -> None:
        await persist(lambda: self._setup.put(FENCE, _pad(0)))
        await asyncio.gather(*(c.run(until) for c in self.contenders))

    async def write(self, client: AsyncClient, cid: int, token: int) -> None:
        """One write to the protected resource, carrying ``token``."""
        puts = [t.put(FENCE, _pad(token)), t.put(DATA, b"%d:%d" % (cid, token))]
        # fenced: accept only if the highest token seen so far is <= ours
        cmps = [t.value(FENCE) < _pad(token + 1)] if self.fencing else []
        try:
            resp = await asyncio.wait_for(client.txn(cmps, puts, [t.get(FENCE)]),
                                          CALL_TIMEOUT_S)
        except (TimeoutError, QuorumError, OSError):
            self.indeterminate += 1  # it may or may not have been applied: not checked
            return
        self.writes.append((resp.revision, FencedWrite(resource="lockres", token=token,
                                                       accepted=bool(resp.succeeded),
                                                       client_id=cid)))

    async def check(self) -> WorkloadVerdict:
        fencing = check_fencing(resource_order(self.writes))
        overlaps = hold_overlaps(self.holds)
        problems = [f"stale write accepted: token {w.token} from client {w.client_id}"
                    for w in fencing.stale_accepted[:10]]
        if fencing.stale_count > 10:
            problems.append(f"... {fencing.stale_count - 10} more stale writes accepted")
        unexplained = [o for o in overlaps if not o.explained]
        details = {
            "fencing": self.fencing, "accepted": fencing.accepted,
            "rejected": fencing.rejected, "stale_accepted": fencing.stale_count,
            "current_rejected": len(fencing.current_rejected),
            "indeterminate_writes": self.indeterminate, "holds": len(self.holds),
            "paused_holds": sum(h.paused for h in self.holds),
            "overlaps": len(overlaps), "unexplained_overlaps": len(unexplained),
            "errors": self.errors,
        }
        body = msgspec.json.encode({"details": details, "writes": resource_order(self.writes),
                                    "holds": self.holds, "overlaps": overlaps})
        json_path = self.prefix(".json")
        json_path.write_bytes(body)
        html_path = self.prefix(".html")
        html_path.write_text(_page(details, problems, overlaps), encoding="utf-8")
        unknown = fencing.accepted == 0  # nothing was written: nothing was checked
        return WorkloadVerdict(
            name=self.name,
            verdict="FAIL" if problems else ("UNKNOWN" if unknown else "PASS"),
            operations=len(self.writes) + self.indeterminate, ok_operations=len(self.writes),
            problems=problems, details=details,
            report_html=str(html_path), report_json=str(json_path))


def _page(details: Mapping[str, object], problems: list[str], overlaps: list[Overlap]) -> str:
    rows = [(f"{o.first.client_id} (token {o.first.token}"
             f"{', paused' if o.first.paused else ''}{', lease lost' if o.first.lease_lost else ''})",
             f"{o.second.client_id} (token {o.second.token})",
             f"{min(o.first.released, o.second.released) - o.second.acquired:.3f}s",
             "yes" if o.explained else "NO") for o in overlaps[:200]]
    return simple_page("quorum verify: lock workload", problems, details,
                       ("earlier holder", "later holder", "overlap", "explained"), rows)
