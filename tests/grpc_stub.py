"""A gRPC server of raw unary methods on a free loopback port, for tests of clients (the CLI's channel,
its deadlines) that need a peer answering as they choose, with no service behind it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager

import grpc

Method = Callable[[bytes, grpc.ServicerContext], bytes]


@contextmanager
def serving(service: str, methods: Mapping[str, Method]) -> Iterator[str]:
    """`service`'s `methods` (name -> handler of the raw request bytes) served until the block ends;
    yields the address."""
    handlers = {name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()}
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)
