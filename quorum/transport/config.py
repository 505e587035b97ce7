"""Configuration of the peer transport: limits, timings, and the reconnect backoff."""

from __future__ import annotations

import dataclasses
import random

from quorum.errors import ConfigError
from quorum.transport.codec import DEFAULT_MAX_FRAME_BYTES, MIB


@dataclasses.dataclass(frozen=True)
class TransportConfig:
    """Limits and timings of the transport. Sizes in bytes, times in seconds.

    ``max_queued_messages`` bounds each outbound link's queue: beyond it, messages are dropped
    and the peer reported unreachable (Raft recovers lost messages; memory must not grow).
    Reconnect delays grow from ``backoff_initial_s`` by ``backoff_multiplier`` up to
    ``backoff_max_s``; each is scaled by a random factor in [1 - jitter, 1 + jitter] so peers
    that lost each other at once do not retry in lockstep. An outbound link PINGs every
    ``ping_interval_s`` and reconnects when no PONG came for ``ping_interval_s +
    ping_timeout_s``: a silently dead connection (a partition drops packets, no FIN or RST)
    would otherwise swallow writes until the kernel's retransmission timeout, many minutes.
    Messages sent ``lazy`` (see :meth:`PeerTransport.send`) wait at most ``lazy_flush_s``
    for other messages to the same peer to travel with (0: they leave like any other).
    """

    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_queued_messages: int = 10_000
    read_chunk_bytes: int = 256 * 1024
    write_buffer_high_bytes: int = 1 * MIB
    connect_timeout_s: float = 3.0
    handshake_timeout_s: float = 3.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.25
    snapshot_chunk_bytes: int = 1 * MIB
    snapshot_ack_timeout_s: float = 60.0
    ping_interval_s: float = 1.0
    ping_timeout_s: float = 5.0
    lazy_flush_s: float = 0.002

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first rule that is broken."""
        positive = ("max_frame_bytes", "max_queued_messages", "read_chunk_bytes",
                    "write_buffer_high_bytes", "connect_timeout_s", "handshake_timeout_s",
                    "backoff_initial_s", "snapshot_chunk_bytes", "snapshot_ack_timeout_s",
                    "ping_interval_s", "ping_timeout_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.max_frame_bytes > 0xFFFFFFFF:
            raise ConfigError("max_frame_bytes must fit the u32 length field")
        if self.lazy_flush_s < 0:
            raise ConfigError("lazy_flush_s must be >= 0")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("backoff_max_s must be >= backoff_initial_s")
        if self.backoff_multiplier < 1:
            raise ConfigError("backoff_multiplier must be >= 1")
        if not 0 <= self.backoff_jitter < 1:
            raise ConfigError("backoff_jitter must be in [0, 1)")
        # a chunk plus its SNAP message and framing must fit in one frame
        if self.snapshot_chunk_bytes > self.max_frame_bytes // 2:
            raise ConfigError("snapshot_chunk_bytes must be at most max_frame_bytes / 2")


class Backoff:
    """Exponential reconnect delays with jitter drawn from an injected ``random.Random``."""

    def __init__(self, config: TransportConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._attempt = 0

    def next_delay_s(self) -> float:
        cfg = self._config
        base = min(cfg.backoff_max_s, cfg.backoff_initial_s * cfg.backoff_multiplier**self._attempt)
        if base < cfg.backoff_max_s:
            self._attempt += 1  # stop growing once capped (no float overflow on long outages)
        return base * self._rng.uniform(1 - cfg.backoff_jitter, 1 + cfg.backoff_jitter)

    def reset(self) -> None:
        self._attempt = 0
