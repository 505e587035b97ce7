"""Automatic MVCC compaction: etcd's ``--auto-compaction-mode`` / ``--auto-compaction-retention``.

Without compaction the MVCC history (and every snapshot) grows forever. Two policies, as in
etcd 3.4:

* ``periodic`` — keep about the last ``retention`` of history (a duration: ``"1h"``, ``"30m"``,
  ``"90s"``, ``"1h30m"``; a bare number means hours, as in etcd). Once per *interval* =
  ``min(retention, 1 h)`` (etcd 3.4's schedule) the leader compacts at the newest revision
  sample at least ``retention`` old; every node samples its revision ten times per interval.
  Everything written since that sample stays readable: right after a compaction the history
  spans ``retention`` to ``retention + interval / 10``, and it grows by one interval until
  the next. Nothing is compacted before a node has observed one full window.
* ``revision`` — keep the last ``retention`` revisions: every 5 minutes the leader compacts at
  ``current revision - retention``.

A retention of ``0`` turns auto-compaction off (the default, as in etcd 3.4).

Who compacts: only the leader, through a *leader-only* proposal (``NodeCore.propose`` with
``leader_only``): appended only while this node leads and never forwarded, so a deposed leader
resuming from a pause cannot get a decision measured on its clock committed by the new leader.
Every node keeps sampling while it follows, so a new leader picks up the schedule with the
history of revisions it observed itself (a freshly started node waits one full window).

Failures (the revision was compacted meanwhile, leadership moved, a timeout) are logged and
retried at the next sample (a tenth of the interval; in revision mode, the next check); they
never stop the node.

The decision logic is :class:`CompactionPlanner`, a pure class (inputs: now, current revision,
last compacted revision; output: the revision to compact or ``None``); :class:`AutoCompactor`
runs it on the node's injected ``Clock`` (quorum.node.clock), so tests drive it by hand.
"""

from __future__ import annotations

import collections
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec

from quorum.errors import ConfigError
from quorum.node.clock import Clock

log = logging.getLogger("quorum.api.compactor")

Mode = Literal["periodic", "revision"]
MODES: tuple[Mode, ...] = ("periodic", "revision")

# etcd checks a revision retention every 5 minutes. A periodic retention is compacted once per
# min(retention, 1 h) (as etcd 3.4 does), from revision samples taken ten times as often.
REVISION_CHECK_S = 300.0
PERIODIC_INTERVAL_MAX_S = 3600.0
SAMPLES_PER_INTERVAL = 10
# below this the compactor would wake more than ten times a second for little purpose
PERIODIC_RETENTION_MIN_S = 1.0

# Test-only switch (planted bug): compact at the current revision, ignoring the retention window.
PLANTED_COMPACT_AT_CURRENT = "compact_at_current_revision"

_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|h|m|s))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


class CompactionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """What to keep. ``periodic`` uses ``retention_s`` (``compact_every_s`` 0 = the default
    interval, min(retention, 1 h)); ``revision`` uses ``retention_revisions`` and checks every
    ``revision_check_s``."""

    mode: Mode
    retention_s: float = 0.0
    retention_revisions: int = 0
    revision_check_s: float = REVISION_CHECK_S
    compact_every_s: float = 0.0

    @property
    def interval_s(self) -> float:
        """Seconds between two compactions."""
        if self.mode == "revision":
            return self.revision_check_s
        return self.compact_every_s or min(self.retention_s, PERIODIC_INTERVAL_MAX_S)

    @property
    def sample_s(self) -> float:
        """Seconds between two revision samples (periodic mode) or checks (revision mode)."""
        if self.mode == "revision":
            return self.revision_check_s
        return min(self.interval_s, self.retention_s) / SAMPLES_PER_INTERVAL

    def describe(self) -> str:
        if self.mode == "revision":
            return f"revision mode, keep the last {self.retention_revisions} revisions"
        return f"periodic mode, keep the last {self.retention_s:g} s of history"


def parse_duration_s(text: str) -> float:
    """``"1h30m"`` -> 5400.0; a bare number is hours (etcd's convention). Raises ConfigError."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text) * _UNIT_S["h"]
    if not _DURATION.fullmatch(text):
        raise ConfigError(
            f"auto_compaction_retention {text!r} is not a duration (e.g. 1h, 30m, 90s, 1h30m, "
            "or a number of hours)."
        )
    return sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(text))


def policy_from_config(mode: str, retention: str | int) -> CompactionPolicy | None:
    """The policy the config asks for, or None when auto-compaction is off (retention 0).

    Raises ConfigError naming the broken rule: an unknown mode, a retention that is not a
    duration (periodic) or not a non-negative whole number (revision)."""
    if mode not in MODES:
        raise ConfigError(f"auto_compaction_mode must be one of {', '.join(MODES)} (got {mode!r}).")
    text = str(retention).strip()
    if mode == "revision":
        if not text.isdigit():
            raise ConfigError(
                f"auto_compaction_retention {text!r}: revision mode needs a whole number of "
                "revisions (0 = off)."
            )
        revisions = int(text)
        return CompactionPolicy(mode="revision", retention_revisions=revisions) if revisions else None
    seconds = parse_duration_s(text)
    if 0 < seconds < PERIODIC_RETENTION_MIN_S:
        raise ConfigError(f"auto_compaction_retention {text!r}: a periodic retention must be at "
                          f"least {PERIODIC_RETENTION_MIN_S:g}s (0 = off).")
    return CompactionPolicy(mode="periodic", retention_s=seconds) if seconds > 0 else None


class CompactionPlanner:
    """Decides when and where to compact. Pure: no clock, no I/O; the caller passes ``now``.

    Call :meth:`decide` as often as you like (:meth:`wait_s` says when it next has work). It
    samples the revision every ``policy.sample_s`` and, once per ``policy.interval_s``,
    returns the revision to compact; otherwise None (not due, window not yet observed, or
    nothing new to compact). Every node calls it (samples are local observations); only the
    leader acts on the answer.
    """

    def __init__(self, policy: CompactionPolicy, start_s: float,
                 planted_bugs: frozenset[str] = frozenset()) -> None:
        self.policy = policy
        self._next_sample_s = start_s + policy.sample_s
        self._next_compact_s = start_s + policy.interval_s
        # (time, revision) samples; Invariant: times increase, and at most one sample is at
        # or before the current horizon (now - retention): the newest such one.
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._planted_at_current = PLANTED_COMPACT_AT_CURRENT in planted_bugs

    def wait_s(self, now_s: float) -> float:
        """Seconds until :meth:`decide` next has work (0 when it has work now)."""
        return max(0.0, min(self._next_sample_s, self._next_compact_s) - now_s)

    def decide(self, now_s: float, revision: int, compacted: int) -> int | None:
        """The revision to compact now, or None. ``revision`` is the store's current revision,
        ``compacted`` its compact revision; the answer is always in ``(compacted, revision]``."""
        if now_s >= self._next_sample_s:
            self._next_sample_s = now_s + self.policy.sample_s
            self._sample(now_s, revision)
        if now_s < self._next_compact_s:
            return None
        target = self._target(now_s, revision)
        if target is None:
            # no full window observed yet: try again at the next sample (and sleep till then)
            self._next_compact_s = self._next_sample_s
            return None
        self._next_compact_s = now_s + self.policy.interval_s
        return target if target > compacted else None

    def retry_soon(self, now_s: float) -> None:
        """The last compaction failed: decide again at the next sample rather than a whole
        interval later (etcd likewise retries at a tenth of its interval)."""
        self._next_compact_s = min(self._next_compact_s, now_s + self.policy.sample_s)

    def _target(self, now_s: float, revision: int) -> int | None:
        if self._planted_at_current:
            return revision  # the planted bug: no retention window at all
        if self.policy.mode == "revision":
            return revision - self.policy.retention_revisions
        oldest_s, oldest_revision = self._samples[0] if self._samples else (now_s, 0)
        if oldest_s > now_s - self.policy.retention_s:
            return None  # this node has not yet observed a full retention window
        # Every revision written after this sample (all of the retention window) stays readable.
        return oldest_revision

    def _sample(self, now_s: float, revision: int) -> None:
        """Record the revision current now; forget samples no longer needed (all but the
        newest one at least one retention old)."""
        if self.policy.mode == "revision":
            return
        self._samples.append((now_s, revision))
        horizon = now_s - self.policy.retention_s
        while len(self._samples) >= 2 and self._samples[1][0] <= horizon:
            self._samples.popleft()


class AutoCompactor:
    """Runs a CompactionPlanner on a node: samples on every node, proposes on the leader.

    ``revisions()`` returns (current revision, compact revision) of the local store;
    ``is_leader()`` tells whether this node leads; ``compact(revision)`` proposes the
    compaction as a leader-only command and raises on failure. Never raises from
    :meth:`check` or :meth:`run` (except cancellation)."""

    def __init__(
        self,
        policy: CompactionPolicy,
        clock: Clock,
        *,
        revisions: Callable[[], tuple[int, int]],
        is_leader: Callable[[], bool],
        compact: Callable[[int], Awaitable[object]],
        planted_bugs: frozenset[str] = frozenset(),
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.planner = CompactionPlanner(policy, clock.monotonic(), planted_bugs)
        self._revisions = revisions
        self._is_leader = is_leader
        self._compact = compact
        self.compactions = 0  # compaction commands that committed
        self.failures = 0  # compaction commands that failed (retried at the next sample)

    async def check(self) -> int | None:
        """One decision: the revision compacted now, or None."""
        revision, compacted = self._revisions()
        target = self.planner.decide(self.clock.monotonic(), revision, compacted)
        if target is None or not self._is_leader():
            return None
        # One command per compaction: the store's compaction costs about as much as the
        # history it keeps, so splitting one into steps multiplies the work (docs/benchmarks.md).
        log.info("auto-compaction at revision %d (%s)", target, self.policy.describe())
        try:
            await self._compact(target)
        except Exception as exc:  # a failed compaction must never stop the node
            self.failures += 1
            self.planner.retry_soon(self.clock.monotonic())
            log.warning("auto-compaction at revision %d failed (%s: %s); retrying soon",
                        target, type(exc).__name__, exc)
            return None
        self.compactions += 1
        return target

    async def run(self) -> None:
        """Sample and decide on schedule until cancelled."""
        while True:
            await self.clock.sleep(self.planner.wait_s(self.clock.monotonic()))
            try:
                await self.check()
            except Exception:  # check() contains its own failures; this guards the loop
                log.exception("auto-compaction check failed; retrying next period")
                await self.clock.sleep(self.policy.sample_s)
