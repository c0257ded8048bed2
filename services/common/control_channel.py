"""The one way to call a service's control or admin API: a gRPC channel that sends the caller's control
token (`authorization: Bearer ...`) on every call.

The token comes from, in order: IMX_CONTROL_TOKEN; the file named by IMX_CONTROL_TOKEN_FILE;
$XDG_CONFIG_HOME/imx/token (~/.config/imx/token); var/secrets/control-token under the current folder
(the devstack's bootstrap administrator, made by `make up`). Health checks need no token and do not use
this (services/common/health_probe.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from services.common.control_server import GRPC_MESSAGE_OPTIONS

TOKEN_ENV = "IMX_CONTROL_TOKEN"
TOKEN_FILE_ENV = "IMX_CONTROL_TOKEN_FILE"
DEVSTACK_TOKEN = Path("var/secrets/control-token")


class MissingControlToken(Exception):
    """No control token was found; the message says where one was looked for (never a token)."""


def token_files(env: Mapping[str, str], cwd: Path) -> list[Path]:
    named = env.get(TOKEN_FILE_ENV)
    if named:
        return [Path(named)]
    config = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path(env.get("HOME", "~")) / ".config"
    return [config / "imx" / "token", cwd / DEVSTACK_TOKEN]


def find_control_token(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    env = os.environ if env is None else env
    token = env.get(TOKEN_ENV, "").strip()
    if token:
        return token
    files = token_files(env, cwd or Path.cwd())
    for path in files:
        try:
            text = path.read_text().strip() if path.is_file() else ""
        except (OSError, UnicodeDecodeError) as error:  # said, not a traceback; the token is never read out
            reason = error.strerror if isinstance(error, OSError) else "not text"
            raise MissingControlToken(f"the control token file {path} cannot be read ({reason})") from None
        if text:
            return text
    if env.get(TOKEN_FILE_ENV):
        raise MissingControlToken(f"{TOKEN_FILE_ENV} names {files[0]}, which is missing or empty")
    raise MissingControlToken(
        f"no control token: set {TOKEN_ENV} or {TOKEN_FILE_ENV}, or put one in "
        + " or ".join(str(p) for p in files)
        + " (`imx tokens add NAME --role operator|administrator` issues one)"
    )


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = tuple(client_call_details.metadata or ()) + self._metadata
        return continuation(client_call_details._replace(metadata=metadata), request)


class DefaultDeadline(grpc.UnaryUnaryClientInterceptor):
    """Every call gets `seconds` unless it names its own: a service that takes the connection and then
    stalls would otherwise hold the caller for ever."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        if client_call_details.timeout is None:
            client_call_details = client_call_details._replace(timeout=self._seconds)
        return continuation(client_call_details, request)


def control_channel(
    address: str, token: str | None = None, options: Sequence[tuple[str, Any]] = GRPC_MESSAGE_OPTIONS
) -> grpc.Channel:
    """A channel to `address` carrying `token` (default: find_control_token()). Use it as a context
    manager, or close it."""
    bearer = _Bearer(token if token is not None else find_control_token())
    return grpc.intercept_channel(grpc.insecure_channel(address, options=list(options)), bearer)
