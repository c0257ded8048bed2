"""The test session's control token (tests/conftest.py puts it in IMX_CONTROL_TOKEN and in the file
IMX_CONTROL_BOOTSTRAP_TOKEN_FILE names): every service a test starts takes it as its bootstrap
administrator, and every client made with services/common/control_channel.py sends it."""

from __future__ import annotations

import os

from pymongo.database import Database

from services.common.control_auth import ControlAuth, static_auth
from services.common.control_channel import TOKEN_ENV
from services.common.control_roles import Role


def session_token() -> str:
    return os.environ[TOKEN_ENV]


def admin_auth(db: Database | None = None) -> ControlAuth:
    """For a ControlServer a test builds itself: the session's token is an administrator's."""
    return static_auth({session_token(): Role.administrator}, db=db)
