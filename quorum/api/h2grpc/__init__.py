"""A gRPC server on asyncio, written for quorum's request shapes: HTTP/2 framing and flow
control, HPACK (decoding by the ``hpack`` library), and gRPC's message framing, status
trailers and deadlines.

It exists because grpcio's Python server costs about 170 µs of CPU per unary call on the
reference machine (docs/benchmarks.md), more than quorum's whole replicated write; this
server parses a call's frames inline in the connection's ``data_received`` and writes each
answer's three frames with one buffered write.
"""

from quorum.api.h2grpc.server import GrpcServer
from quorum.api.h2grpc.status import AbortError

__all__ = ["AbortError", "GrpcServer"]
