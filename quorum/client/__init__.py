"""The Python client of quorum's native protocol (docs/client.md).

* :class:`AsyncClient` — asyncio; pipelined; failover across endpoints; exactly-once write
  retries through state-machine sessions; resumable watches; lease keepalive helper.
* :class:`Client` — the same API, blocking (an event loop in a background thread).
* :class:`ClientTls` — TLS settings (CA, client certificate, server name) for every endpoint.
* ``quorum.client.txn`` — compare/operation builders for transactions.
* ``quorum.client.recipes`` — Lock (fencing tokens), Election, RWLock, Barrier,
  DoubleBarrier, ServiceRegistry, ConfigWatcher.
"""

from quorum.client.aio import AsyncClient, LeaseKeeper, TxnBuilder
from quorum.client.sync import Client, SyncWatcher
from quorum.client.tls import ClientTls
from quorum.client.watch import Watcher

__all__ = ["AsyncClient", "Client", "ClientTls", "LeaseKeeper", "SyncWatcher", "TxnBuilder",
           "Watcher"]
