"""The native client protocol: pipelined msgpack frames over TCP or TLS (docs/client.md).

``serve_native(backend, host, port)`` serves any ``quorum.api.backend.Backend``, over TLS
with ``tls=server_tls_context(cert, key, client_ca)``; the wire types are in
``quorum.api.native.messages``; ``quorum.client`` is the client.
"""

from quorum.api.native.server import NativeServer, serve_native, server_tls_context

__all__ = ["NativeServer", "serve_native", "server_tls_context"]
