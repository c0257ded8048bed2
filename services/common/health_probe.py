"""A gRPC health probe for container health checks: `python -m services.common.health_probe ADDRESS`.

Asks the standard grpc.health.v1 Check of the server at ADDRESS (host:port) and exits 0 only when the
answer is SERVING. It lives in the package, not in tools/, because tools/ is not in the image, and
the docker-compose health checks run it inside each service's own container. Kubernetes needs no
such helper: its native gRPC probes ask the same question (see charts/imx).

Exit status: 0 SERVING; 1 any other status, no answer in time or no server; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = 0
NOT_HEALTHY = 1
USAGE = 2


def check(address: str, service: str = "", timeout_s: float = 3.0) -> str:
    """The status name the server at `address` reports for `service` ("" = the server as a whole),
    or a short reason when it gave no answer. Raises nothing: a probe reports, it does not crash."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            return f"no answer ({code.name if code else 'error'})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.health_probe",
        description="Exit 0 when the gRPC server at ADDRESS reports SERVING (grpc.health.v1).",
    )
    parser.add_argument("address", metavar="ADDRESS", help="host:port of the service's gRPC server")
    parser.add_argument("--service", default="", help='service name to ask about (default "": the whole server)')
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on bad usage and 0 for --help
        return int(exit_.code or 0)
    if args.timeout <= 0:
        print("health_probe: --timeout must be positive", file=sys.stderr)
        return USAGE
    status = check(args.address, args.service, args.timeout)
    if status == "SERVING":
        return SERVING
    print(f"health_probe: {args.address} {status}", file=sys.stderr)
    return NOT_HEALTHY


if __name__ == "__main__":
    sys.exit(main())
