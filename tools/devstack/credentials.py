"""Secrets of a local deployment, random, made on first use and kept in var/secrets/ (0700, each file
0600) so a second `make up` signs in with the same ones: Kafka passwords (the admin's and one per
service) and the control plane's bootstrap administrator token."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from services.common.api_keys import issue_api_key
from services.common.control_tokens import TOKEN_PREFIX
from tools.devstack.servers import write_private

ADMIN = "admin"


def secrets_dir(var: Path) -> Path:
    folder = var / "secrets"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def password_file(var: Path, user: str) -> Path:
    """The file holding `user`'s Kafka password ("admin" or a service's name), made if missing."""
    path = secrets_dir(var) / f"kafka-{user}.password"
    if not path.exists() or not path.read_text().strip():
        write_private(path, secrets.token_urlsafe(24))
    return path


def password(var: Path, user: str) -> str:
    return password_file(var, user).read_text().strip()


def control_token_file(var: Path) -> Path:
    """The bootstrap administrator's control token (services/common/control_tokens.py), made if missing:
    every service started here accepts it, and the CLI run from the clone finds it
    (services/common/control_channel.py looks in var/secrets/control-token)."""
    path = secrets_dir(var) / "control-token"
    if not path.exists() or not path.read_text().strip():
        write_private(path, issue_api_key(TOKEN_PREFIX))
    return path


def retrieval_key_file(var: Path) -> Path:
    """The key that signs delivery's retrieval references (services/delivery/retrieval_refs.py), made if
    missing; every delivery replica of the deployment reads the same file."""
    path = secrets_dir(var) / "delivery-retrieval-key"
    if not path.exists() or len(path.read_bytes().strip()) < 32:
        write_private(path, secrets.token_hex(32))
    return path
