"""The lease workload: leases with short TTLs and attached keys; renewals stop, keys must go.

Each client loops: grant a lease of ``ttl_s``, put a key attached to it, then either renew it
for a while (``keepalive_once`` every ttl/3) or not at all, stop renewing, and read the key
(linearizable gets every ~0.1 s) until it is gone. Checked per lease
(:func:`check_lease_expiry`):

* not early: a lease expires ``ttl`` after the last renewal *took effect*, which is after that
  renewal was invoked. A read that saw the key gone and returned before
  ``last successful renewal call + ttl / clock_rate_bound`` proves an early expiry. A leader
  change restarts every lease's TTL (etcd's rule: a new leader cannot know how much of a TTL
  ran on the old one, so it extends, never shortens). ``clock_rate_bound`` is how much
  faster than real time a server clock may run in the run (the clock nemesis skews clocks;
  1.0 otherwise);
* not late: a read invoked after ``last renewal attempt returned + ttl + bound`` must not
  see the key. ``bound`` covers what legitimately delays expiry: a leader change restarts the
  TTL (+ttl), there is no leader to expire anything while a fault lasts, and the expiry
  sweep and the revoke proposal take a moment.

A lease whose key put timed out is not checked (the key may never have existed).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import msgspec

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.verify.workloads_base import CALL_TIMEOUT_S, RunContext, Workload, WorkloadVerdict
from quorum.verify.workloads_html import simple_page

POLL_S = 0.1


class LeaseObservation(msgspec.Struct, kw_only=True):
    """What one client saw of one lease (times on the runner's monotonic clock).

    ``renewed_call``: invocation of the last successful grant/renewal; ``renewed_return``:
    return of the last renewal attempted (successful or not); ``present`` the last read that
    saw the key (call, return), ``absent`` the first that did not (call, return)."""

    lease_id: int
    key: str
    ttl_s: float
    renewed_call: float
    renewed_return: float
    present: tuple[float, float] | None = None
    absent: tuple[float, float] | None = None
    renewals: int = 0
    renewed_via: str = ""  # the endpoint that answered the last successful renewal


class LeaseViolation(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: int
    key: str
    kind: str  # "early" or "late"
    detail: str


def check_lease_expiry(observations: Sequence[LeaseObservation], *, bound_s: float,
                       clock_rate_bound: float = 1.0) -> list[LeaseViolation]:
    """Leases whose key vanished before the TTL could have run out, or outlived TTL + bound.

    A lease never seen gone counts as late only when some read after the late limit still
    found its key (a run that stopped polling earlier proves nothing)."""
    out: list[LeaseViolation] = []
    for o in observations:
        earliest = o.renewed_call + o.ttl_s / clock_rate_bound
        if o.absent is not None and o.absent[1] < earliest:
            via = f" (renewed via {o.renewed_via})" if o.renewed_via else ""
            out.append(LeaseViolation(
                lease_id=o.lease_id, key=o.key, kind="early",
                detail=f"gone {earliest - o.absent[1]:.3f}s before the TTL of {o.ttl_s}s "
                       f"since the last renewal{via} could run out"))
        latest = o.renewed_return + o.ttl_s + bound_s
        if o.present is not None and o.present[0] > latest:
            out.append(LeaseViolation(
                lease_id=o.lease_id, key=o.key, kind="late",
                detail=f"still there {o.present[0] - latest:.3f}s after TTL {o.ttl_s}s + "
                       f"bound {bound_s}s since the last renewal"))
    return out


class _LeaseClient:
    def __init__(self, cid: int, client: AsyncClient, work: LeaseWorkload,
                 rng: random.Random) -> None:
        self.cid = cid
        self.client = client
        self.work = work
        self.rng = rng
        self.n = 0

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                obs = await self.one()
            except (TimeoutError, QuorumError, OSError):
                self.work.errors += 1
                await asyncio.sleep(0.1)
                continue
            if obs is not None:
                self.work.observations.append(obs)

    async def one(self) -> LeaseObservation | None:
        ttl = self.work.ttl_s
        self.n += 1
        key = f"lease/{self.cid}/{self.n}".encode()
        call = time.monotonic()
        lease = await asyncio.wait_for(self.client.lease_grant(ttl), CALL_TIMEOUT_S)
        obs = LeaseObservation(lease_id=lease.id, key=key.decode(), ttl_s=float(lease.ttl or ttl),
                               renewed_call=call, renewed_return=time.monotonic())
        try:
            await asyncio.wait_for(self.client.put(key, b"x", lease=lease.id), CALL_TIMEOUT_S)
        except (TimeoutError, QuorumError, OSError):
            self.work.unchecked += 1
            return None
        if self.rng.random() < 0.5:
            await self._renew(obs, self.rng.uniform(0.5, 3.0))
        await self._poll(obs)
        return obs

    async def _renew(self, obs: LeaseObservation, for_s: float) -> None:
        stop = time.monotonic() + for_s
        while time.monotonic() < stop:
            await asyncio.sleep(obs.ttl_s / 3)
            call = time.monotonic()
            try:
                await asyncio.wait_for(self.client.lease_keepalive_once(obs.lease_id),
                                       CALL_TIMEOUT_S)
            except (TimeoutError, QuorumError, OSError):
                obs.renewed_return = time.monotonic()  # it may have taken effect anyway
                continue
            obs.renewed_call, obs.renewed_return = call, time.monotonic()
            obs.renewed_via = self.client.endpoint or ""  # it may relay to the leader
            obs.renewals += 1

    async def _poll(self, obs: LeaseObservation) -> None:
        """Read until the key is gone, or a while past the late limit."""
        give_up = obs.renewed_return + obs.ttl_s + self.work.bound_s + 2.0
        key = obs.key.encode()
        while time.monotonic() < give_up:
            call = time.monotonic()
            try:
                kv = await asyncio.wait_for(self.client.get(key), CALL_TIMEOUT_S)
            except (TimeoutError, QuorumError, OSError):
                continue
            if kv is None:
                obs.absent = (call, time.monotonic())
                return
            obs.present = (call, time.monotonic())
            await asyncio.sleep(POLL_S)


class LeaseWorkload(Workload):
    name = "lease"

    def __init__(self, ctx: RunContext, clients: int, *, ttl_s: int = 2,
                 bound_s: float = 10.0) -> None:
        super().__init__(ctx)
        self.ttl_s = ttl_s
        self.bound_s = bound_s
        self.observations: list[LeaseObservation] = []
        self.unchecked = 0
        self.errors = 0
        self.workers = [_LeaseClient(3000 + i, ctx.client(), self, ctx.rng_child())
                        for i in range(clients)]

    async def run(self, until: float) -> None:
        await asyncio.gather(*(w.run(until) for w in self.workers))

    async def check(self) -> WorkloadVerdict:
        violations = check_lease_expiry(self.observations, bound_s=self.bound_s,
                                        clock_rate_bound=self.ctx.clock_rate_bound)
        problems = [f"lease {v.lease_id:#x} ({v.key}) expired {v.kind}: {v.detail}"
                    for v in violations[:20]]
        gone = [o for o in self.observations if o.absent is not None]
        delays = sorted(o.absent[1] - o.renewed_call for o in gone if o.absent is not None)
        details = {
            "leases": len(self.observations), "expired_seen": len(gone),
            "renewed": sum(o.renewals > 0 for o in self.observations),
            "unchecked": self.unchecked, "errors": self.errors, "ttl_s": self.ttl_s,
            "bound_s": self.bound_s, "clock_rate_bound": self.ctx.clock_rate_bound,
            "expiry_after_last_renewal_s": {
                "min": round(delays[0], 3), "median": round(delays[len(delays) // 2], 3),
                "max": round(delays[-1], 3)} if delays else {},
            "violations": len(violations),
        }
        json_path, html_path = self.prefix(".json"), self.prefix(".html")
        json_path.write_bytes(msgspec.json.encode({
            "details": details, "violations": violations, "observations": self.observations}))
        rows = [(f"{v.lease_id:#x}", v.key, v.kind, v.detail) for v in violations[:200]]
        html_path.write_text(simple_page("quorum verify: lease workload", problems, details,
                                         ("lease", "key", "kind", "detail"), rows),
                             encoding="utf-8")
        unknown = not gone  # no lease was seen to expire: nothing was checked
        return WorkloadVerdict(
            name=self.name, verdict="FAIL" if problems else ("UNKNOWN" if unknown else "PASS"),
            operations=len(self.observations) + self.unchecked,
            ok_operations=len(self.observations), problems=problems, details=details,
            report_html=str(html_path), report_json=str(json_path))
