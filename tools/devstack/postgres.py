"""PostgreSQL 15 from Debian as FerretDB's backend: one disposable cluster per data folder.

`<data_dir>/cluster` is the cluster (created by initdb on first use), `<data_dir>/socket` its Unix
socket folder and `<data_dir>/password` the password of its superuser. The server listens on
127.0.0.1 and on that socket only. PostgreSQL refuses to run as root, so when we are root the
cluster belongs to Debian's `postgres` system user and initdb and the server run as that user.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.devstack.processes import (
    HOST,
    EnvironmentProblem,
    ManagedProcess,
    StartupError,
    await_ready,
    ensure_port_free,
    start_process,
)

POSTGRES = "postgres"
SERVER_USER = "postgres"  # the system user Debian's postgresql-common creates
SUPERUSER = "postgres"
DATABASE = "postgres"  # the cluster serves FerretDB alone, so FerretDB uses the default database
INSTALL_HINT = "run `make setup` (infra/setup.sh installs Debian's postgresql-15)"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the terminating NUL

# Settings given on the command line, so they apply to clusters created by an earlier version too.
# fsync and full_page_writes off: this cluster holds development and test data that `make clean` and
# pytest throw away. With them off a commit never waits for the disk, which the blob store's fsyncs and
# Kafka already keep busy, and test sessions start and run faster. The cost: an operating-system crash
# (not a PostgreSQL crash) can corrupt the cluster; `make clean`. synchronous_commit stays on: a commit
# is then written to the operating system (not synced) before FerretDB acknowledges it, so a crash of
# PostgreSQL itself loses nothing acknowledged. Off, the WAL of recent commits lived only in PostgreSQL's
# shared memory: a SIGKILL of its processes lost 7 to 21 acknowledged inserts in each of five trials
# (2026-12-06; tests/integration/test_devstack.py), a hole in, say, an audit trail whose offsets were
# already committed.
# Never copy these settings to a deployment (compose and the chart use MongoDB anyway).
SERVER_SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "logging_collector": "off",  # log to stdout, which start_process appends to the log file
    # Room for FERRETDB_POOL (tools/devstack/servers.py) plus psql and a few spare.
    "max_connections": "450",
    # FerretDB sends the field name of every filter as a parameter (`_jsonb->$1 @> $2`), so a generic
    # plan can never match the `_id` indexes (ID_LOOKUP_SQL): after five executions of a prepared
    # statement PostgreSQL may keep the generic plan, a sequential scan, whenever the table's heap is
    # small. On the tamper-evident log's collection, whose few hundred documents are TOASTed (up to
    # ~40 kB each), that scan decompressed every document: ~16 ms per lookup against ~0.3 ms by the
    # index. Custom plans cost a replanning per statement (no measurable difference for a 3-row insert).
    "plan_cache_mode": "force_custom_plan",
    # Even a custom plan chose that scan while the log's heap was a few pages (its documents live in the
    # TOAST table, which the planner does not count): hundreds of scans in one `make bench` after
    # `make clean`. Every collection has an index on `_id`, and a query without one has no other plan.
    "enable_seqscan": "off",
    # ... which adds 1e10 to the estimated cost of every scan that has no index to use, far above the
    # costs that make PostgreSQL compile a query's expressions with LLVM: no JIT, or each such query
    # (e.g. a `$gte` on `_id`, which FerretDB does not push down) would be compiled every time.
    "jit": "off",
}


# FerretDB 1.24 turns every filter, `_id` equality included, into `(_jsonb -> 'field') @> value`,
# which no btree serves: measured on 50,000 documents, an `_id` lookup was a sequential scan taking
# ~35 ms (and growing with the collection). A GIN index (jsonb_path_ops) on `_jsonb -> '_id'` serves
# that containment test: ~1-2 ms. An event trigger gives every table FerretDB creates that index, and
# the tables already there get it at start-up. imx designs its collections so the frequent questions
# are `_id` lookups (docs/delivery.md, services/audit), which this makes fast at any size.
#
# `fastupdate = off`: a GIN index's default pending list (up to 4 MB of entries not yet in the tree) is
# read in full by every lookup, and with inserts arriving all the time it is seldom empty. Off, an insert
# puts its one key in the tree: PostgreSQL's CPU per audit record in `make bench-audit` at a million
# records went from 89.0 and 94.2 to 76.5-81.5 µs (README, "Figures"). Indexes made before are switched and emptied.
#
# The same kind of index serves the other equalities asked of large collections: the owed flag of the
# deliveries (services/delivery/delivered.py OWED), and the partner (QIDO's list) and last day (the record
# purge, services/delivery/record_retention.py) of a delivered study.
ID_LOOKUP_SQL = """
CREATE OR REPLACE FUNCTION imx_index_field(tbl oid, field text, suffix text) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
  idx text := left((SELECT relname FROM pg_class WHERE oid = tbl), 50) || suffix;
  qualified text := format('%I.%I', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                      WHERE c.oid = tbl), idx);
BEGIN
  EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s USING gin ((_jsonb -> %L) jsonb_path_ops) '
                 'WITH (fastupdate = off)', idx, tbl::regclass, field);
  IF NOT EXISTS (SELECT 1 FROM pg_class
                 WHERE oid = to_regclass(qualified) AND reloptions @> ARRAY['fastupdate=off']) THEN
    EXECUTE format('ALTER INDEX %s SET (fastupdate = off)', qualified);
    PERFORM gin_clean_pending_list(to_regclass(qualified));
  END IF;
END $fn$;

CREATE OR REPLACE FUNCTION imx_index_id(tbl oid) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM imx_index_field(tbl, '_id', '_imx_id');
  -- FerretDB names a collection's table after it, with a suffix of 8 hex digits.
  IF (SELECT relname FROM pg_class WHERE oid = tbl) ~ '^delivered_instances_[0-9a-f]{8}$' THEN
    PERFORM imx_index_field(tbl, 'owed', '_imx_owed');
  ELSIF (SELECT relname FROM pg_class WHERE oid = tbl) ~ '^delivered_studies_[0-9a-f]{8}$' THEN
    PERFORM imx_index_field(tbl, 'partner_id', '_imx_partner');
    PERFORM imx_index_field(tbl, 'last_day', '_imx_last_day');
  END IF;
END $fn$;

CREATE OR REPLACE FUNCTION imx_index_new_tables() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
DECLARE created record;
BEGIN
  FOR created IN SELECT objid FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = created.objid AND attname = '_jsonb') THEN
      PERFORM imx_index_id(created.objid);
    END IF;
  END LOOP;
END $fn$;

DROP EVENT TRIGGER IF EXISTS imx_index_new_tables;
CREATE EVENT TRIGGER imx_index_new_tables ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION imx_index_new_tables();

DO $do$
DECLARE existing record;
BEGIN
  FOR existing IN SELECT c.oid FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = '_jsonb'
                  WHERE c.relkind = 'r' LOOP
    PERFORM imx_index_id(existing.oid);
  END LOOP;
END $do$;
"""


@dataclass(frozen=True)
class PostgresCluster:
    """Where a cluster started by `start_postgres` answers and how to sign in to it."""

    port: int
    data_dir: Path

    @property
    def cluster_dir(self) -> Path:
        return self.data_dir / "cluster"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "socket"

    @property
    def password_file(self) -> Path:
        return self.data_dir / "password"

    @property
    def url(self) -> str:
        """A libpq URL without the password (it goes in PGPASSWORD, not on command lines)."""
        return f"postgres://{SUPERUSER}@{HOST}:{self.port}/{DATABASE}"

    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except OSError as error:
            raise EnvironmentProblem(
                f"cannot read the PostgreSQL password ({error}); delete {self.data_dir} (or `make clean`) to start over"
            ) from error

    def client_env(self) -> dict[str, str]:
        """Environment for libpq clients (FerretDB, psql) signing in over TCP."""
        return {**os.environ, "PGPASSWORD": self.password()}


def postgres_bin_dir() -> Path:
    bin_dir = Path(os.environ.get("IMX_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
    for tool in ("initdb", "postgres", "pg_isready"):
        if not os.access(bin_dir / tool, os.X_OK):
            raise EnvironmentProblem(f"PostgreSQL 15's {tool} was not found in {bin_dir}; {INSTALL_HINT}")
    return bin_dir


def server_account() -> pwd.struct_passwd | None:
    """The user the server runs as: None for ourselves, the `postgres` system user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise EnvironmentProblem(
            f"PostgreSQL refuses to run as root and there is no '{SERVER_USER}' user to run it as; {INSTALL_HINT}"
        ) from None


def start_postgres(
    port: int,
    data_dir: Path,
    log_dir: Path,
    *,
    run_dir: Path | None = None,
    die_with_parent: bool = False,
    wait: bool = True,
    timeout: float = 30.0,
) -> ManagedProcess:
    """Start the cluster in `data_dir` (initdb on first use) on 127.0.0.1:`port`.

    Stopped with SIGINT, PostgreSQL's fast shutdown: SIGTERM (smart shutdown) would wait for every
    client to disconnect first.
    """
    bin_dir, account = postgres_bin_dir(), server_account()
    ensure_port_free(port, "PostgreSQL", "IMX_POSTGRES_PORT")
    cluster = PostgresCluster(port, data_dir.resolve())
    _prepare_folders(cluster, account)
    if not (cluster.cluster_dir / "PG_VERSION").exists():
        _initdb(bin_dir, cluster, account)
    socket_path = cluster.socket_dir / f".s.PGSQL.{port}"
    settings = {
        **SERVER_SETTINGS,
        "port": str(port),
        # A socket path longer than sun_path is fatal; TCP alone then (FerretDB uses TCP anyway).
        "unix_socket_directories": str(cluster.socket_dir) if len(str(socket_path)) <= MAX_SOCKET_PATH else "",
    }
    argv = [str(bin_dir / "postgres"), "-D", str(cluster.cluster_dir)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    attempt = 1
    while True:
        proc = start_process(
            POSTGRES,
            argv,
            log_dir / f"{POSTGRES}.log",
            cwd=cluster.data_dir,
            run_dir=run_dir,
            endpoint=f"{HOST}:{port}",
            die_with_parent=die_with_parent,
            stop_signal=signal.SIGINT,
            user=None if account is None else account.pw_name,
        )
        if not wait:
            return proc
        try:
            await_ready(proc, postgres_answers, timeout, interval=0.05)  # ready in ~0.1 s
            install_id_lookups(cluster, proc)
            return proc
        except StartupError:
            if attempt == 3 or not _grant_search(cluster.data_dir, account):
                raise
            attempt += 1


def install_id_lookups(cluster: PostgresCluster, proc: ManagedProcess) -> None:
    """ID_LOOKUP_SQL, idempotent; the server is stopped and the error raised when it fails."""
    done = subprocess.run(
        [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", cluster.url, "-c", ID_LOOKUP_SQL],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cluster.client_env(),
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        proc.stop(timeout=5.0)
        raise StartupError(f"PostgreSQL: installing the _id lookup indexes failed: {done.stderr.strip()[-500:]}")


def psql_path() -> str:
    found = shutil.which("psql") or str(postgres_bin_dir() / "psql")
    return found


def postgres_answers(proc: ManagedProcess) -> bool:
    """True when the server accepts connections (pg_isready, which needs no password)."""
    host, port = proc.endpoint.rsplit(":", 1)
    done = subprocess.run(
        [str(postgres_bin_dir() / "pg_isready"), "-q", "-h", host, "-p", port, "-t", "2"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
        check=False,
    )
    return done.returncode == 0


# --- the cluster's folders ----------------------------------------------------------------------


def _prepare_folders(cluster: PostgresCluster, account: pwd.struct_passwd | None) -> None:
    """Folders the server can use: its own (mode 0700, as PostgreSQL requires of a cluster) and every
    folder above them searchable by it."""
    cluster.data_dir.mkdir(parents=True, exist_ok=True)
    for folder in (cluster.data_dir, cluster.socket_dir):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o700)  # the socket folder guards the socket: only its owner (and root) may connect
        if account is not None:
            os.chown(folder, account.pw_uid, account.pw_gid)
    _grant_search(cluster.data_dir, account)


def _grant_search(folder: Path, account: pwd.struct_passwd | None) -> bool:
    """Let the server user pass through every folder above `folder` (search, not list); True if any
    folder needed it.

    pytest makes its temporary folders 0700 (root's, when tests run as root), and a pytest session
    that starts later strips group and other bits from /tmp/pytest-of-<user> again. initdb and a
    starting server then fail (callers retry once this returns True after a failure), and so does a
    running one, at its next checkpoint: the tests keep their clusters outside pytest's folders
    (tests/server_dirs.py).
    """
    if account is None:
        return False
    changed = False
    for parent in reversed(folder.parents):
        info = parent.stat()
        if info.st_uid == account.pw_uid or info.st_mode & stat.S_IXOTH:
            continue
        if info.st_gid == account.pw_gid and info.st_mode & stat.S_IXGRP:
            continue
        parent.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
        changed = True
    return changed


def _initdb(bin_dir: Path, cluster: PostgresCluster, account: pwd.struct_passwd | None) -> None:
    """A new cluster, created beside its final place and renamed at the end, so an interrupted
    initdb never looks like a cluster."""
    partial = cluster.cluster_dir.with_name(cluster.cluster_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(cluster.cluster_dir, ignore_errors=True)
    cluster.password_file.unlink(missing_ok=True)
    fd = os.open(cluster.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(24) + "\n")
    if account is not None:
        os.chown(cluster.password_file, account.pw_uid, account.pw_gid)  # initdb reads it as that user
    argv = [
        str(bin_dir / "initdb"),
        f"--pgdata={partial}",
        f"--username={SUPERUSER}",
        f"--pwfile={cluster.password_file}",
        "--auth-host=scram-sha-256",  # any local user can reach 127.0.0.1
        "--auth-local=trust",  # only the socket folder's owner (and root) can reach the socket
        "--encoding=UTF8",
        "--locale=C",  # byte order, as MongoDB compares strings, and present on every machine
        "--no-sync",  # the same reasoning as fsync=off in SERVER_SETTINGS
        "--no-instructions",
    ]
    attempts = 3
    for attempt in range(1, attempts + 1):
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=cluster.data_dir,
            timeout=120,
            check=False,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],
        )
        if done.returncode == 0:
            partial.rename(cluster.cluster_dir)
            return
        shutil.rmtree(partial, ignore_errors=True)
        if attempt == attempts or not _grant_search(cluster.data_dir, account):
            break
    output = "\n".join(f"{done.stdout}{done.stderr}".splitlines()[-40:])
    raise StartupError(f"initdb of a PostgreSQL cluster in {partial} failed:\n{output}")
