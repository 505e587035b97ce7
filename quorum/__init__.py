"""quorum: a Raft-replicated coordination service.

Layers (imports point downward only; enforced by tests/test_layering.py):

    errors                      leaf: the one error tree
    raft                        pure consensus core (sans-I/O)
    state                       pure replicated state machine (MVCC KV, leases, watches, sessions)
    storage, transport          durable Raft state; peer messaging
    node                        the runtime that wires them together
    api, client, cli, sim, verify, bench   on top
"""

__version__ = "0.1.0"
