"""The wire: protobuf schema of the gRPC services and the mapping to the secagg messages.

secagg/v1/secagg.proto  the schema (package ``fedmask.secagg.v1``); fl/v1/fl.proto likewise
secagg/v1/*_pb2*.py     generated code, committed; ``python -m fedmask.proto.generate`` rebuilds it
wire                    protobuf <-> secagg dataclasses, the only place they meet
transport               limits, keepalive and metadata keys both ends agree on
"""
