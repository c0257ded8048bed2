"""The gRPC server every service runs: grpc.health.v1, imx.v1.Control, plus service-specific admin APIs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.control_auth import ControlAuth, ControlAuthInterceptor
from services.common.listen_address import host_port
from services.common.stats import StatusSnapshot
from services.proto_gen.imx.v1 import control_pb2, control_pb2_grpc

VERSION = "0.1.0"

ServicerRegistration = Callable[[grpc.Server], None]


# gRPC's default 4 MB cap would refuse a Preview of an ordinary multi-frame instance; admin calls carry
# at most one instance (partner topics carry up to 16 MiB inline), so clients allow 64 MiB both ways.
GRPC_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
GRPC_MESSAGE_OPTIONS = (
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
)
# A server reads a request whole before its token is checked: with 64 MiB everywhere, a few dozen
# unauthenticated calls at once took a service past its memory limit. Only deid's Preview takes an
# instance; the rest of the control plane's requests are a few kB.
CONTROL_MAX_REQUEST_BYTES = 4 * 1024 * 1024


class Controllable(Protocol):
    def snapshot(self) -> StatusSnapshot: ...

    def set_paused(self, paused: bool) -> None: ...


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(self, target: Controllable) -> None:
        self._target = target

    def Status(self, request: control_pb2.StatusRequest, context: grpc.ServicerContext) -> control_pb2.StatusReply:
        snap = self._target.snapshot()
        return control_pb2.StatusReply(
            service=snap.service,
            version=VERSION,
            paused=snap.paused,
            processed=snap.processed,
            failed=snap.failed,
            throughput_per_s=snap.throughput_per_s,
            lag=[control_pb2.PartitionLag(topic=t, partition=p, lag=n) for (t, p), n in sorted(snap.lag.items())],
            uptime_s=snap.uptime_s,
        )

    def Pause(self, request: control_pb2.PauseRequest, context: grpc.ServicerContext) -> control_pb2.PauseReply:
        return control_pb2.PauseReply(paused=self._set_paused(True, context))

    def Resume(self, request: control_pb2.ResumeRequest, context: grpc.ServicerContext) -> control_pb2.ResumeReply:
        return control_pb2.ResumeReply(paused=self._set_paused(False, context))

    def _set_paused(self, paused: bool, context: grpc.ServicerContext) -> bool:
        """The state the service is in afterwards, never the one asked for: an operator told "paused" stops
        looking, so a service that did not pause says so (and the change is recorded as refused)."""
        self._target.set_paused(paused)
        if self._target.snapshot().paused != paused:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{'pause' if paused else 'resume'} did not take")
        return paused


# The health check name of liveness (the chart's livenessProbe and startupProbe ask it): SERVING from
# `start` to `stop`, whatever the service's readiness.
LIVENESS = "imx.live"
# Delivery's and audit's readiness (the chart's probe for them): their HTTP APIs answer from MongoDB, so a
# Kafka outage, which makes "" NOT_SERVING, must not take partners' retrievals and analysts' queries away.
HTTP_READY = "imx.http"


class ControlServer:
    """Owns the grpc.Server; `port` is the bound port (useful when 0 was asked for). Every method but
    grpc.health.v1 needs a control token that `auth` accepts (services/common/control_auth.py)."""

    def __init__(
        self,
        service: str,
        target: Controllable,
        host: str = "127.0.0.1",
        port: int = 0,
        extra: Sequence[ServicerRegistration] = (),
        max_workers: int = 8,
        *,
        auth: ControlAuth,
        max_request_bytes: int = CONTROL_MAX_REQUEST_BYTES,
    ) -> None:
        self.service = service
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            options=(
                ("grpc.max_receive_message_length", max_request_bytes),
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
            ),
            interceptors=[ControlAuthInterceptor(auth, service, lambda: target.snapshot().paused)],
        )
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(target), self._server)
        for register in extra:
            register(self._server)
        self.port = self._server.add_insecure_port(host_port(host, port))
        if self.port == 0:
            raise OSError(f"cannot bind gRPC control port {host}:{port} (in use?)")
        self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_status(self, status: int) -> None:
        # "" is the server as a whole (what Kubernetes' grpc probe asks); the name is the service. Both say
        # ready: NOT_SERVING while the service waits for its broker, say, or finishes at shutdown.
        for name in ("", f"imx.{self.service}"):
            self._health.set(name, status)

    def start(self) -> None:
        self._server.start()
        # LIVENESS says only that the process answers: a broker outage makes a stage not ready, and must
        # not get it restarted (a liveness probe on readiness restarted every stage after ~60 s of outage).
        self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)

    def mark_serving(self) -> None:
        self._set_status(health_pb2.HealthCheckResponse.SERVING)

    def mark_http_serving(self) -> None:
        """The service's HTTP API answers (HTTP_READY), whatever its stage's state."""
        self._health.set(HTTP_READY, health_pb2.HealthCheckResponse.SERVING)

    def mark_not_serving(self) -> None:
        self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)

    def stop(self, grace_s: float = 5.0) -> None:
        self.mark_not_serving()
        for name in (LIVENESS, HTTP_READY):
            self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._server.stop(grace_s).wait()
