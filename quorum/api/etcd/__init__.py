"""The etcd v3 gRPC API of quorum: own .proto files (proto/), generated stubs (gen/), thin
servicers translating requests onto a :class:`quorum.api.backend.Backend`."""
