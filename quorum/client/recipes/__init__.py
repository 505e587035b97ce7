"""Coordination recipes on top of the client: locks with fencing tokens, leader election,
readers-writer locks, barriers, a service registry and a config watcher (docs/client.md)."""

from quorum.client.recipes.barrier import Barrier, DoubleBarrier
from quorum.client.recipes.config import ConfigWatcher
from quorum.client.recipes.election import Election
from quorum.client.recipes.lock import Lock
from quorum.client.recipes.registry import Registration, ServiceRegistry, ServiceView
from quorum.client.recipes.rwlock import RWLock
from quorum.client.recipes.session import LeaseSession

__all__ = [
    "Barrier", "ConfigWatcher", "DoubleBarrier", "Election", "LeaseSession", "Lock", "RWLock",
    "Registration", "ServiceRegistry", "ServiceView",
]
