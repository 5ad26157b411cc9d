#!/usr/bin/env python3
"""Container healthcheck: ask the coordinator's gRPC health service whether it is SERVING.

    fedmask-healthcheck [HOST:PORT] [--service NAME]

Probes the plaintext health-only listener (``fedmask coordinator run --health-port``), so it
needs no client certificate. The address defaults to ``$FEDMASK_HEALTH_ADDR`` or
127.0.0.1:8081. Exit status 0: SERVING; 1: anything else (with the reason on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description="gRPC health probe")
    parser.add_argument("address", nargs="?", default=os.environ.get("FEDMASK_HEALTH_ADDR", "127.0.0.1:8081"))
    parser.add_argument("--service", default="", help="service name ('' = the server as a whole)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    with grpc.insecure_channel(args.address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {args.address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {args.address}: {status}", file=sys.stderr)
        return 1
    print(f"{args.address}: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
