"""Folders for servers the tests start."""

from __future__ import annotations

import tempfile
from pathlib import Path


def postgres_home() -> Path:
    """A folder for a PostgreSQL cluster outside pytest's temporary tree (the caller removes its parent).

    Tests run as root start PostgreSQL as the `postgres` user, which must be able to pass through every
    folder above its cluster. Every pytest session that starts strips that right from
    /tmp/pytest-of-<user> again (pytest keeps its temporary root private), and a running server then
    fails at its next checkpoint (PANIC: could not open global/pg_control) and stays down: a second
    test run on the machine took down the first one's database twice on 2026-12-03."""
    return Path(tempfile.mkdtemp(prefix="imx-test-postgres-")) / "postgres"
