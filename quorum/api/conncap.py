"""Caps on a client port's open connections (the native port and the etcd gRPC port): one on
the port's total, one on what a single client address may hold.

Every connection holds a file descriptor, and a process out of descriptors cannot accept,
open a WAL segment or dial a peer: the whole node degrades, silently (the event loop retries
the accept without logging). A port that refuses connections beyond its cap keeps the rest
of the descriptors for the node's own work, and says why: the refused client is closed at
once and the refusal is logged, at most once per ``LOG_EVERY_S`` with the counts since.

The per-address limit (ZooKeeper's ``maxClientCnxns``) keeps one client host (say, a buggy
client that opens connections in a loop) from taking the whole cap and locking every other
host out. A connection counts against its peer's IP from the moment it is accepted until
its transport closes, whatever phase it is in (a TLS handshake included); an
IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, from a dual-stack listener) counts as its
IPv4 address, so one host cannot double its share by the address family it dials.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sized

from quorum.api.resume import resume

log = logging.getLogger("quorum.api")

LOG_EVERY_S = 10.0
# Addresses itemised in one refusal log line (the rest are summed up), and tracked between
# two lines (so a flood from many addresses cannot grow the tally without bound).
LOG_TOP_ADDRESSES = 5
MAX_TALLIED_ADDRESSES = 1024
# The per-address table is swept of closed transports once it tracks this many more than
# were open at the last sweep (amortised O(1) per accepted connection).
SWEEP_SLACK = 64

CAP = "cap"
PER_IP = "per_ip"


def peer_ip(peername: object) -> str | None:
    """The client address a connection counts against: the host part of ``peername`` in its
    canonical text form, an IPv4-mapped IPv6 address as its IPv4 address. None for what is
    not an IP peer (a Unix socket): such connections have no per-address limit."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None
    host = peername[0]
    if host[:1].isdigit() and "." in host and ":" not in host:
        return host  # IPv4 as the socket layer writes it: canonical already (the usual case)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class _Gate(asyncio.Protocol):
    """A new connection's first protocol: asks the cap, then either closes the connection
    (nothing is read or written) or hands the transport to the server's own protocol,
    after the TLS handshake when the port speaks TLS. It is replaced before the first
    read, so it costs nothing once a connection is admitted."""

    __slots__ = ("_cap", "_make", "_tls", "_tls_timeout")

    def __init__(self, cap: ConnectionCap, make: Callable[[], asyncio.BaseProtocol],
                 tls: ssl.SSLContext | None, tls_timeout: float | None) -> None:
        self._cap = cap
        self._make = make
        self._tls = tls
        self._tls_timeout = tls_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._cap.admit(transport):
            transport.close()
            return
        if self._tls is not None:
            self._cap.start_tls(transport, self._make, self._tls, self._tls_timeout)
            return
        protocol = self._make()
        # Both asyncio's and uvloop's transports start reading only after connection_made
        # returns, so the server's protocol sees every byte.
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # only a refused connection ends while the gate is its protocol


class _Refused(asyncio.Protocol):
    """The protocol of a connection refused as it was accepted: closes it at once (nothing
    is read or written) and reports the refusal, now that the peer is known."""

    __slots__ = ("_cap",)

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
        self._cap._refuse(CAP, peer_ip(transport.get_extra_info("peername")))


class ConnectionCap:
    """Admits a new connection while fewer than ``limit`` are open on the port (0: no cap)
    and fewer than ``per_ip`` from its client's address (0: no per-address limit).

    ``open_sets`` are the collections whose sizes together count the port's open
    connections (e.g. the served connections and the TLS handshakes under way). The
    per-address count is kept here, of the transports admitted and not yet closing."""

    def __init__(self, port_name: str, limit: int, *open_sets: Sized, per_ip: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.port_name = port_name
        self.limit = limit
        self.per_ip = per_ip
        # TLS handshakes run here (factory's tls), counted as open connections
        self.handshakes: set[asyncio.Task[None]] = set()
        self._open_sets = (*open_sets, self.handshakes)
        self._clock = clock
        self.refused = 0  # since the server started, for either reason
        self.refused_per_ip = 0  # ... of which for the per-address limit
        self._by_ip: dict[str, list[asyncio.BaseTransport]] = {}
        self._tracked = 0  # transports in _by_ip, closing ones included
        self._sweep_at = SWEEP_SLACK
        # refusals not logged yet: by reason, and by address (at most MAX_TALLIED_ADDRESSES)
        self._unlogged: Counter[str] = Counter()
        self._unlogged_from: Counter[str] = Counter()
        self._logged_at: float | None = None

    def open_count(self) -> int:
        return sum(len(s) for s in self._open_sets)

    def open_from(self, ip: str) -> int:
        """Connections from ``ip`` admitted and not closing (tracked only with ``per_ip``)."""
        return len(self._live(ip))

    def factory(self, make: Callable[[], asyncio.BaseProtocol], *,
                tls: ssl.SSLContext | None = None, tls_timeout: float | None = None
                ) -> Callable[[], asyncio.BaseProtocol]:
        """Wrap a server's protocol factory so that each new connection is admitted first
        (the factory itself as it is when there is nothing to enforce).

        ``tls``: the port speaks TLS, and the server listens on plain TCP so that the
        admission comes before any TLS work: an admitted connection's handshake then runs
        here (within ``tls_timeout`` seconds; None: asyncio's default) and counts as an
        open connection while it lasts (``handshakes``); the protocol from ``make`` gets the
        TLS transport once it succeeds."""
        if self.per_ip > 0 or tls is not None:
            return lambda: _Gate(self, make, tls, tls_timeout)
        if self.limit <= 0:
            return make
        # The total cap alone (the default) needs no peer: checked as the connection is
        # accepted, the admitted one gets the server's protocol straight away.
        def admit_or_refuse() -> asyncio.BaseProtocol:
            return make() if self.open_count() < self.limit else _Refused(self)

        return admit_or_refuse

    def start_tls(self, plain: asyncio.BaseTransport, make: Callable[[], asyncio.BaseProtocol],
                  tls: ssl.SSLContext, timeout: float | None) -> None:
        """Run the server side of the TLS handshake on an admitted connection."""
        # start_tls must see every byte, a ClientHello sent with the connection included:
        # it runs at once, up to its first wait, by when its own protocol is on the
        # transport (uvloop starts reading as soon as connection_made returns, so starting
        # it in a task would leave the first bytes to the gate).
        coro = self._handshake(plain, make, tls, timeout)
        try:
            first = coro.send(None)
        except StopIteration:
            return
        task = asyncio.ensure_future(resume(coro, first))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, plain: asyncio.BaseTransport,
                         make: Callable[[], asyncio.BaseProtocol], tls: ssl.SSLContext,
                         timeout: float | None) -> None:
        protocol = make()
        loop = asyncio.get_running_loop()
        try:
            secure = await loop.start_tls(
                plain, protocol, tls, server_side=True,  # type: ignore[arg-type]
                ssl_handshake_timeout=timeout)
        except asyncio.CancelledError:
            plain.abort()  # type: ignore[attr-defined]
            raise
        except (OSError, EOFError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
            # start_tls has closed the transport. Quiet, as asyncio is with the handshakes
            # of a TLS listener: a TCP health check (connect, close) fails one every time.
            log.debug("%s port: TLS handshake with %s failed: %r", self.port_name,
                      plain.get_extra_info("peername"), exc)
            return
        if secure is not None:  # None: the connection went away during the handshake
            protocol.connection_made(secure)

    def cancel_handshakes(self) -> None:
        """Abort the TLS handshakes under way (the server is stopping)."""
        for task in list(self.handshakes):
            task.cancel()

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether the new connection on ``transport`` may be served; if so it counts from
        now against its address. A refusal is counted and logged (rate-limited)."""
        if self.limit > 0 and self.open_count() >= self.limit:
            self._refuse(CAP, peer_ip(transport.get_extra_info("peername")))
            return False
        if self.per_ip <= 0:
            return True
        ip = peer_ip(transport.get_extra_info("peername"))
        if ip is None:
            return True
        # Closed transports are dropped only when the list looks full: an admission costs
        # O(1) until then, a refusal O(per_ip).
        held = self._by_ip.get(ip) or []
        if len(held) >= self.per_ip:
            held = self._live(ip)
            if len(held) >= self.per_ip:
                self._refuse(PER_IP, ip)
                return False
        held.append(transport)
        self._by_ip[ip] = held
        self._tracked += 1
        if self._tracked >= self._sweep_at:
            self._sweep()
        return True

    def _live(self, ip: str) -> list[asyncio.BaseTransport]:
        """The transports still open from ``ip`` (closing ones are dropped from the table:
        a transport is closing once either side has closed or the connection was lost)."""
        held = self._by_ip.get(ip)
        if held is None:
            return []
        live = [t for t in held if not t.is_closing()]
        self._tracked -= len(held) - len(live)
        if live:
            self._by_ip[ip] = live
        else:
            del self._by_ip[ip]
        return live

    def _sweep(self) -> None:
        """Drop every closed transport, so addresses that do not come back are forgotten."""
        for ip in list(self._by_ip):
            self._live(ip)
        self._sweep_at = 2 * self._tracked + SWEEP_SLACK

    def _refuse(self, reason: str, ip: str | None) -> None:
        self.refused += 1
        if reason == PER_IP:
            self.refused_per_ip += 1
        self._unlogged[reason] += 1
        address = ip or "unknown"
        if address in self._unlogged_from or len(self._unlogged_from) < MAX_TALLIED_ADDRESSES:
            self._unlogged_from[address] += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= LOG_EVERY_S:
            log.warning("%s", self._report())
            self._logged_at = now
            self._unlogged.clear()
            self._unlogged_from.clear()

    def _report(self) -> str:
        """The refusal line: how many since the last line, why, and from where."""
        total = sum(self._unlogged.values())
        why = []
        if self._unlogged[CAP]:
            why.append(f"{self._unlogged[CAP]} at the cap (--max-client-connections) of "
                       f"{self.limit}, {self.open_count()} open")
        if self._unlogged[PER_IP]:
            why.append(f"{self._unlogged[PER_IP]} beyond the per-address limit "
                       f"(--max-client-connections-per-ip) of {self.per_ip}")
        top = self._unlogged_from.most_common(LOG_TOP_ADDRESSES)
        sources = ", ".join(f"{ip} ({n})" for ip, n in top)
        rest = total - sum(n for _ip, n in top)
        if rest:
            sources += f", {rest} from other addresses"
        return (f"{self.port_name} port: {total} connection(s) refused: {'; '.join(why)}; "
                f"from {sources}")
