"""Limits of the state machine (etcd's defaults), checked by :meth:`StateConfig.validate`."""

from __future__ import annotations

import msgspec

from quorum.errors import ConfigError

DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes default (1.5 MiB)
DEFAULT_MAX_TXN_OPS = 128  # etcd's --max-txn-ops default
MAX_LEASE_TTL_S = 9_000_000_000  # etcd's MaxLeaseTTL


class StateConfig(msgspec.Struct, frozen=True):
    """Limits. Every instance used by a StateMachine has passed ``validate()``."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # keys + values + range ends per request
    max_txn_ops: int = DEFAULT_MAX_TXN_OPS  # per compare / success / failure list, per level
    max_lease_ttl_s: int = MAX_LEASE_TTL_S
    max_sessions: int = 10_000  # least recently used (by applied index) evicted beyond this
    watch_buffer_events: int = 10_000  # per watcher; beyond it the watcher is cancelled
    watch_buffer_bytes: int = 64 * 1024 * 1024  # per watcher; likewise
    watch_replay_events: int = 1_000  # events read from history per drain of a lagging watcher
    snapshot_chunk_keys: int = 4096  # keys per snapshot chunk
    watch_fragment_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # part size for fragmenting watchers

    def validate(self) -> StateConfig:
        """Return self if every limit is usable; raise ConfigError naming the first that is not."""
        for name in (
            "max_request_bytes", "max_txn_ops", "max_lease_ttl_s", "max_sessions",
            "watch_buffer_events", "watch_buffer_bytes", "watch_replay_events",
            "snapshot_chunk_keys", "watch_fragment_bytes",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"StateConfig.{name} must be a positive integer, got {value!r}")
        return self
