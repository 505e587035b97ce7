"""Client-facing API surfaces of quorum.

* :mod:`quorum.api.backend` — the ``Backend`` contract every surface calls;
* :mod:`quorum.api.local` — ``LocalBackend``: in-process, no consensus (dev mode, tests);
* :mod:`quorum.api.etcd` — the etcd v3 gRPC API (``serve_etcd``);
* :mod:`quorum.api.native` — the pipelined msgpack protocol.
"""
