"""The wire: protobuf schema of the gRPC services and the mapping to the secagg messages.

fedmask/secagg/v1/secagg.proto  the schema (package ``fedmask.secagg.v1``)
fedmask/secagg/v1/*_pb2*.py     generated code, committed; ``python -m proto.generate`` rebuilds it
wire                            protobuf <-> secagg dataclasses, the only place they meet
transport                       limits, keepalive and metadata keys both ends agree on
"""
