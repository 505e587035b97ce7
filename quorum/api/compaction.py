"""Compactions in steps: one client-level compaction becomes a series of commands, each
dropping the old records of at most ``STEP_KEYS`` keys (see ``CompactionRequest``).

The first command makes the compaction take effect (reads and watches below its revision are
refused from then on); the following ones only free memory. Other commands interleave between
the steps, so a compaction of millions of keys never stalls the node for more than one step
(about 10,000 keys: tens of milliseconds), where one command for all keys held the event loop
for seconds and could cost the node its leadership.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import msgspec

from quorum.errors import NotLeader, RevisionCompacted
from quorum.state import commands as sc

log = logging.getLogger(__name__)

STEP_KEYS = 10_000

Write = Callable[[sc.CompactionRequest, bool], Awaitable[sc.Response]]


def is_whole(request: object) -> bool:
    """A compaction asked for in one piece (a client's, or an entry of an older log)."""
    return type(request) is sc.CompactionRequest and not request.start and not request.limit


async def compact_in_steps(write: Write, request: sc.CompactionRequest,
                           step_keys: int = 0) -> sc.CompactionResponse:
    """Run ``request`` as a first step plus as many more as needed; returns the first
    step's answer once every step is applied. ``write(command, first)`` proposes one
    command (``first`` tells the caller which one carries the client's session);
    ``step_keys`` 0 = ``STEP_KEYS``.

    A step refused because a newer compaction started meanwhile ends the series quietly
    (the newer one covers every key again), as does a leadership change for a leader-only
    series (the next compaction redoes what is left). Errors of the first step propagate.
    """
    step_keys = step_keys or STEP_KEYS
    first = await write(msgspec.structs.replace(request, limit=step_keys), True)
    if not isinstance(first, sc.CompactionResponse):
        raise TypeError(f"compaction answered {type(first).__name__}")
    start = first.next
    while start:
        await asyncio.sleep(0)  # let other work run between steps, even on a local backend
        step = sc.CompactionRequest(request.revision, request.physical, start, step_keys)
        try:
            res = await write(step, False)
        except (RevisionCompacted, NotLeader) as exc:
            log.info("compaction at %d stopped before key %r: %s", request.revision, start, exc)
            break
        if not isinstance(res, sc.CompactionResponse):
            raise TypeError(f"compaction step answered {type(res).__name__}")
        start = res.next
    return first
