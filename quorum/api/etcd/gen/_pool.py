"""quorum's private protobuf descriptor pool for the etcd API (see scripts/gen_protos.sh)."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
