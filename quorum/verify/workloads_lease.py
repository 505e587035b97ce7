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
* not late: only a leader expires leases, each new leader restarts the TTL, and a leader
  that cannot act (killed, paused, cut off, stalled) expires nothing. So the check counts
  how long each term's leader was *seen* leading after the last renewal
  (``quorum.verify.leaders``: every node's status is sampled through the run): a term may
  use at most one TTL and a check-quorum step-down (at the slowest clock rate injected),
  the sweep interval and the time the expiry takes to commit, plus what the faults during
  its leadership may have stalled it (:func:`late_allowance`). A read invoked while the
  key should be gone by that account, and still seeing it, is a late expiry. Time in which
  no leader was seen leading proves nothing and is never held against the lease.

A lease whose key put timed out is not checked (the key may never have existed).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence

import msgspec

from quorum.client.aio import AsyncClient
from quorum.errors import QuorumError
from quorum.verify.leaders import LeaderSpan, leader_spans
from quorum.verify.workloads_base import (
    CALL_TIMEOUT_S,
    FaultSpan,
    RunContext,
    Workload,
    WorkloadVerdict,
)
from quorum.verify.workloads_html import simple_page

POLL_S = 0.1
# How often the leader looks for expired leases (ClusterBackend's lease_check_interval_s).
SWEEP_S = 0.5
# For the expiry the leader proposed to commit and be applied, and a read to be served after
# it: one replication round and a ReadIndex round on a loaded machine.
COMMIT_S = 1.0
# Two answers of a leader further apart than this do not show it able to act in between
# (quorum.verify.leaders.leader_spans): five sampling rounds.
COVER_GAP_S = 0.5
# Reads of a key stop this long after its TTL ran out (after the last renewal): it is then
# judged on what was seen.
POLL_LIMIT_S = 20.0


class LeaseObservation(msgspec.Struct, kw_only=True):
    """What one client saw of one lease (times on the runner's monotonic clock).

    ``renewed_call``: invocation of the last successful grant/renewal; ``renewed_return``:
    return of the last renewal attempted (successful or not), ``attempt_call`` its
    invocation; ``present`` the last read that saw the key (call, return), ``absent`` the
    first that did not (call, return)."""

    lease_id: int
    key: str
    ttl_s: float
    renewed_call: float
    renewed_return: float
    present: tuple[float, float] | None = None
    absent: tuple[float, float] | None = None
    renewals: int = 0
    renewed_via: str = ""  # the endpoint that answered the last successful renewal
    attempt_call: float = 0.0  # 0: the same as renewed_call


class LeaseViolation(msgspec.Struct, frozen=True, kw_only=True):
    lease_id: int
    key: str
    kind: str  # "early" or "late"
    detail: str


class LateAllowance(msgspec.Struct, frozen=True, kw_only=True):
    """How long a lease may legitimately outlive its last renewal ``since``, judged at the
    read invoked at ``until``: ``terms`` leader terms were seen leading in between, for
    ``led_s`` in all (the rest of the time nobody was); ``term`` (led by ``leader_id``) for
    ``term_led_s``. Each term may use ``per_term_s`` plus what faults overlapping that
    term's leadership may have stalled it (``stall_s`` for ``term``): ``term`` is the term
    closest to (or furthest beyond) its allowance."""

    since: float
    until: float
    terms: int
    led_s: float
    term: int
    leader_id: int
    term_led_s: float
    per_term_s: float
    stall_s: float

    @property
    def late(self) -> bool:
        return self.term_led_s > self.per_term_s + self.stall_s

    def describe(self) -> str:
        return (f"still there {self.until - self.since:.3f}s after the last renewal: the "
                f"leader of term {self.term} (n{self.leader_id}) was seen leading "
                f"{self.term_led_s:.3f}s of it, "
                f"more than {self.per_term_s:.3f}s (TTL and a step-down at the slowest "
                f"clock, sweep, commit) + {self.stall_s:.3f}s that faults may have stalled it; "
                f"{self.terms} term(s) seen, no leader seen for "
                f"{self.until - self.since - self.led_s:.3f}s")


def _union(intervals: Sequence[tuple[float, float]]) -> float:
    total, reach = 0.0, -math.inf
    for lo, hi in sorted(intervals):
        lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def renewal_effect_bound(o: LeaseObservation, faults: Sequence[FaultSpan]) -> float:
    """The latest moment the last renewal can have taken effect: when it returned, unless a
    node was paused while it was in flight; a request held in a paused node's socket is
    served when the node resumes (a duplicate sent after a failover as well)."""
    call = o.attempt_call or o.renewed_call
    latest = o.renewed_return
    for f in faults:
        if f.kind == "pause" and f.start <= o.renewed_return and f.end >= call:
            latest = max(latest, f.end)
    return latest


def late_allowance(o: LeaseObservation, until: float, spans: Sequence[LeaderSpan],
                   faults: Sequence[FaultSpan], *, election_s: float,
                   clock_rate_min: float = 1.0) -> LateAllowance:
    """The account of :func:`check_lease_expiry` for one lease read at ``until``.

    Derivation. After its last renewal took effect (``since``), the lease's deadline on the
    leader of the moment is at most ``since + ttl``; a leader promoted later restarts it at
    its promotion (ClusterBackend: LeaseTracker.promote), which came before it was first
    seen leading. A leader that leads, able to act, for ``ttl`` (its clock may run slow:
    ``ttl / clock_rate_min`` of real time) past the later of the two finds the lease in a
    sweep (every SWEEP_S) and commits its expiry (COMMIT_S), unless it lost its majority
    meanwhile: it then still answers as leader until check quorum steps it down, up to two
    election timeouts on its clock (Raft thesis §6.2: it checks once per timeout whether a
    majority was heard from during the last one). So in each term, the time the leader is
    seen leading before the key is gone is at most ``per_term_s``, plus the time faults
    kept it from committing although it answered (:func:`_stall`; a pause of the leader
    itself longer than COVER_GAP_S leaves a gap in its answers, not counted as leading).
    The lease is late when some term's leader was seen leading longer than that; time when
    no leader was seen, and the number of leader changes, are never held against it."""
    since = renewal_effect_bound(o, faults)
    # Keyed by (term, leader), which Raft makes the same as by term; but a node's status can
    # pair a new term with the leader it had before (its term moves when it steps a message,
    # its leader when that step's Ready was persisted), and such a pair must not add to the
    # real leader's time.
    by_term: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for sp in spans:
        if _overlap(sp.start, sp.end, since, until) > 0:
            by_term.setdefault((sp.term, sp.leader_id), []).append(
                (max(sp.start, since), min(sp.end, until)))
    # a deposed leader that has not yet heard of its successor still answers as leader:
    # terms may overlap, and the time led in all is their union
    led = _union([iv for ivs in by_term.values() for iv in ivs])
    per_term = (o.ttl_s + 2 * election_s) / clock_rate_min + SWEEP_S + COMMIT_S
    worst: tuple[float, tuple[int, int], float, float] = (-math.inf, (0, 0), 0.0, 0.0)
    for key, ivs in by_term.items():
        term_led = _union(ivs)
        stall = _stall(ivs, faults, 2 * election_s / clock_rate_min)
        worst = max(worst, (term_led - per_term - stall, key, term_led, stall))
    return LateAllowance(since=since, until=until, terms=len(by_term), led_s=led,
                         term=worst[1][0], leader_id=worst[1][1], term_led_s=worst[2],
                         per_term_s=per_term, stall_s=worst[3])


def _stall(led: Sequence[tuple[float, float]], faults: Sequence[FaultSpan],
           step_down_s: float) -> float:
    """How long faults may have kept a leader from committing while it was seen leading in
    ``led``. Any fault can cost it its majority (a partition cutting it off; a follower
    killed, paused or cut off while the other one cannot answer yet, e.g. a member that is
    still catching up); it then either gets it back when the fault heals or steps down
    within ``step_down_s`` (check quorum), which ends its term: each fault stalls it for at
    most its overlap with ``led``, and at most ``step_down_s``."""
    return sum(min(step_down_s, sum(_overlap(f.start, f.end, lo, hi) for lo, hi in led))
               for f in faults)


def check_lease_expiry(observations: Sequence[LeaseObservation], *,
                       spans: Sequence[LeaderSpan], election_s: float,
                       faults: Sequence[FaultSpan] = (), clock_rate_bound: float = 1.0,
                       clock_rate_min: float = 1.0) -> list[LeaseViolation]:
    """Leases whose key vanished before the TTL could have run out, or outlived it by more
    than the leaders seen after the last renewal can account for (:func:`late_allowance`).

    ``spans``: when which leader was seen leading (``quorum.verify.leaders.leader_spans``);
    ``faults``: what the nemesis applied; ``election_s``: the servers' election timeout at
    clock rate 1. A lease is judged late on the last read that still
    saw its key; one never seen gone is judged the same way (a run that stopped polling
    early proves nothing by itself)."""
    out: list[LeaseViolation] = []
    for o in observations:
        earliest = o.renewed_call + o.ttl_s / clock_rate_bound
        if o.absent is not None and o.absent[1] < earliest:
            via = f" (renewed via {o.renewed_via})" if o.renewed_via else ""
            out.append(LeaseViolation(
                lease_id=o.lease_id, key=o.key, kind="early",
                detail=f"gone {earliest - o.absent[1]:.3f}s before the TTL of {o.ttl_s}s "
                       f"since the last renewal{via} could run out"))
        if o.present is None:
            continue
        allowance = late_allowance(o, o.present[0], spans, faults, election_s=election_s,
                                   clock_rate_min=clock_rate_min)
        if allowance.late:
            out.append(LeaseViolation(lease_id=o.lease_id, key=o.key, kind="late",
                                      detail=allowance.describe()))
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
        hidden = None
        if self.work.hidden_renewal_s > 0:  # the planted bug: renewals nobody records
            hidden = asyncio.create_task(self._hidden_renewals(obs, self.work.hidden_renewal_s))
        try:
            await self._poll(obs)
        finally:
            if hidden is not None:
                hidden.cancel()
                await asyncio.gather(hidden, return_exceptions=True)
        return obs

    async def _renew(self, obs: LeaseObservation, for_s: float) -> None:
        stop = time.monotonic() + for_s
        while time.monotonic() < stop:
            await asyncio.sleep(obs.ttl_s / 3)
            call = obs.attempt_call = time.monotonic()
            try:
                await asyncio.wait_for(self.client.lease_keepalive_once(obs.lease_id),
                                       CALL_TIMEOUT_S)
            except (TimeoutError, QuorumError, OSError):
                obs.renewed_return = time.monotonic()  # it may have taken effect anyway
                continue
            obs.renewed_call, obs.renewed_return = call, time.monotonic()
            obs.renewed_via = self.client.endpoint or ""  # it may relay to the leader
            obs.renewals += 1

    async def _hidden_renewals(self, obs: LeaseObservation, for_s: float) -> None:
        """Keep the lease alive for ``for_s`` more without recording it: to the checker the
        server then seems to expire the lease late (the planted bug its late check must
        catch; a real server bug of the kind would be an expiry sweep that skips a lease)."""
        stop = time.monotonic() + for_s
        while time.monotonic() < stop:
            await asyncio.sleep(obs.ttl_s / 3)
            with contextlib.suppress(TimeoutError, QuorumError, OSError):
                await asyncio.wait_for(self.client.lease_keepalive_once(obs.lease_id),
                                       CALL_TIMEOUT_S)

    async def _poll(self, obs: LeaseObservation) -> None:
        """Read until the key is gone, or POLL_LIMIT_S past the TTL (the check then judges
        what was seen: see :func:`late_allowance`)."""
        give_up = obs.renewed_return + obs.ttl_s + POLL_LIMIT_S
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

    def __init__(self, ctx: RunContext, clients: int, *, ttl_s: int = 2, election_s: float,
                 hidden_renewal_s: float = 0.0) -> None:
        """``election_s``: the servers' election timeout (at clock rate 1);
        ``hidden_renewal_s`` > 0 plants a client bug: every lease is kept alive that much
        longer by renewals the observations do not record, so it must be found late."""
        super().__init__(ctx)
        self.ttl_s = ttl_s
        self.election_s = election_s
        self.hidden_renewal_s = hidden_renewal_s
        self.observations: list[LeaseObservation] = []
        self.unchecked = 0
        self.errors = 0
        self.workers = [_LeaseClient(3000 + i, ctx.client(), self, ctx.rng_child())
                        for i in range(clients)]

    async def run(self, until: float) -> None:
        await asyncio.gather(*(w.run(until) for w in self.workers))

    async def check(self) -> WorkloadVerdict:
        spans = leader_spans(self.ctx.leader_samples, COVER_GAP_S)
        violations = check_lease_expiry(
            self.observations, spans=spans, faults=self.ctx.faults, election_s=self.election_s,
            clock_rate_bound=self.ctx.clock_rate_bound, clock_rate_min=self.ctx.clock_rate_min)
        problems = [f"lease {v.lease_id:#x} ({v.key}) expired {v.kind}: {v.detail}"
                    for v in violations[:20]]
        gone = [o for o in self.observations if o.absent is not None]
        delays = sorted(o.absent[1] - o.renewed_call for o in gone if o.absent is not None)
        details = {
            "leases": len(self.observations), "expired_seen": len(gone),
            "renewed": sum(o.renewals > 0 for o in self.observations),
            "unchecked": self.unchecked, "errors": self.errors, "ttl_s": self.ttl_s,
            "clock_rate_bound": self.ctx.clock_rate_bound,
            "clock_rate_min": self.ctx.clock_rate_min,
            # how many leases the late check could judge (some leader was seen leading
            # between the last renewal and the last read that saw the key)
            "late_judged": sum(1 for o in self.observations if o.present is not None and
                               late_allowance(o, o.present[0], spans, self.ctx.faults,
                                              election_s=self.election_s).terms > 0),
            "leader_samples": len(self.ctx.leader_samples), "leader_terms_seen":
                len({s.term for s in spans}),
            "expiry_after_last_renewal_s": {
                "min": round(delays[0], 3), "median": round(delays[len(delays) // 2], 3),
                "max": round(delays[-1], 3)} if delays else {},
            "violations": len(violations),
        }
        json_path, html_path = self.prefix(".json"), self.prefix(".html")
        json_path.write_bytes(msgspec.json.encode({
            "details": details, "violations": violations, "observations": self.observations,
            "leader_spans": spans, "faults": self.ctx.faults,
            "leader_samples": self.ctx.leader_samples}))
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
