"""The clock seam: the runtime reads time only through a ``Clock``."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a monotonic clock (only differences are meaningful)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The production clock, with an optional fixed offset (used to inject clock skew)."""

    def __init__(self, offset_s: float = 0.0, rate: float = 1.0) -> None:
        self.offset_s = offset_s
        self.rate = rate
        self._origin = time.monotonic()

    def monotonic(self) -> float:
        now = time.monotonic()
        return self._origin + (now - self._origin) * self.rate + self.offset_s

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.rate if self.rate > 0 else seconds)
