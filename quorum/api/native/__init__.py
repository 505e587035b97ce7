"""The native client protocol: pipelined msgpack frames over TCP (docs/client.md).

``serve_native(backend, host, port)`` serves any ``quorum.api.backend.Backend``; the wire
types are in ``quorum.api.native.messages``; ``quorum.client`` is the client.
"""

from quorum.api.native.server import NativeServer, serve_native

__all__ = ["NativeServer", "serve_native"]
