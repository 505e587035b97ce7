"""A cap on a client port's open connections (the native port and the etcd gRPC port).

Every connection holds a file descriptor, and a process out of descriptors cannot accept,
open a WAL segment or dial a peer: the whole node degrades, silently (the event loop retries
the accept without logging). A port that refuses connections beyond its cap keeps the rest
of the descriptors for the node's own work, and says why: the refused client is closed at
once and the refusal is logged, at most once per ``LOG_EVERY_S`` with the count since.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sized

log = logging.getLogger("quorum.api")

LOG_EVERY_S = 10.0


class _Refused(asyncio.Protocol):
    """Closes its connection as soon as it is made (nothing is read or written)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionCap:
    """Admits a new connection while fewer than ``limit`` are open (0: no cap).

    ``open_sets`` are the collections whose sizes together count the open connections
    (e.g. the served connections and the TLS handshakes under way)."""

    def __init__(self, port_name: str, limit: int, *open_sets: Sized,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port_name = port_name
        self.limit = limit
        self._open_sets = open_sets
        self._clock = clock
        self.refused = 0  # since the server started
        self._unlogged = 0
        self._logged_at: float | None = None

    def open_count(self) -> int:
        return sum(len(s) for s in self._open_sets)

    def factory(self, make: Callable[[], asyncio.BaseProtocol]
                ) -> Callable[[], asyncio.BaseProtocol]:
        """Wrap a server's protocol factory: beyond the cap it hands out ``_Refused``."""

        def admit() -> asyncio.BaseProtocol:
            if self.limit <= 0 or self.open_count() < self.limit:
                return make()
            self._refuse()
            return _Refused()

        return admit

    def _refuse(self) -> None:
        self.refused += 1
        self._unlogged += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
            log.warning("%s port: %d connection(s) refused: %d open, the cap "
                        "(--max-client-connections) is %d", self.port_name, self._unlogged,
                        self.open_count(), self.limit)
            self._logged_at, self._unlogged = now, 0
