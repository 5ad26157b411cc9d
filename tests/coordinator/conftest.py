"""Fixtures of the gRPC round-server tests; they live in grpc_harness.py with their helpers."""

from grpc_harness import coordinator, federation, round_harness  # noqa: F401 - pytest fixtures
