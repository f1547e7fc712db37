"""PgBouncer in front of the stack's PostgreSQL, as deploy/ puts it in front of production's.

Why a pooler: dagster-postgres opens its connections with SQLAlchemy's `NullPool`, so every stored event,
every run-storage read and every daemon query opens a PostgreSQL connection (a new backend process) and
closes it. A run writes one planned event per asset and image before it is queued, and several events per
image while it works: connection set-up was most of what one event cost (docs/performance.md, "PgBouncer").
PgBouncer keeps the server connections open and hands them out; Dagster's connections to it are cheap.

Session pooling: a client keeps its server connection until it disconnects (dagster-postgres's NullPool
disconnects after each unit of work), so LISTEN, advisory locks and session settings behave as without a
pooler. Transaction pooling would break them.

PgBouncer 1.18 (Debian 12) refuses the `options` startup parameter that deploy/dagster.yaml sends for
`synchronous_commit=off`: it is ignored here (`ignore_startup_parameters`), and the setting is made on the
database instead (`ALTER DATABASE ... SET`), as deploy/helm/values.yaml says to do in production.

Needs the `pgbouncer` binary (Debian: `apt-get install pgbouncer`); run as root, it drops to the `postgres`
user, since PgBouncer refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2

from retouch_devtools.stack.net import free_port, port_open, wait_until
from retouch_devtools.stack.process import Service

INSTALL_HINT = "PgBouncer is not installed: apt-get install -y pgbouncer"
RUN_AS = "postgres"


def pgbouncer_binary() -> str | None:
    """The `pgbouncer` executable, also where Debian puts it outside root's PATH."""
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


def pgbouncer_ini(port: int, pg_host: str, pg_port: int, directory: Path) -> str:
    """The configuration: every database of the server, session pooling, trust on loopback."""
    return "\n".join(
        [
            "[databases]",
            f"* = host={pg_host} port={pg_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            f"unix_socket_dir = {directory}",
            "auth_type = trust",
            f"auth_file = {directory / 'users.txt'}",
            "pool_mode = session",
            "max_client_conn = 1000",
            "default_pool_size = 40",
            "ignore_startup_parameters = options,extra_float_digits",
            "server_reset_query = DISCARD ALL",
            "",
        ]
    )


def asynchronous_commit_on(database: str, host: str, port: int, user: str, password: str) -> None:
    """`synchronous_commit = off` for each new session of `database`: `options` without a pooler."""
    connection = psycopg2.connect(host=host, port=port, user=user, password=password, dbname=database)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = off')
    finally:
        connection.close()


@contextlib.contextmanager
def running_pgbouncer(directory: Path, pg_host: str, pg_port: int, user: str) -> Iterator[int]:
    """PgBouncer on a free loopback port in front of `pg_host:pg_port`; yields the port, stops it after."""
    binary = pgbouncer_binary()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o777)  # the `postgres` user writes its socket here
    port = free_port()
    (directory / "users.txt").write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(pgbouncer_ini(port, pg_host, pg_port, directory))
    for path in (directory / "users.txt", ini):
        path.chmod(0o644)
    command = [binary, *(["-u", RUN_AS] if os.geteuid() == 0 else []), str(ini)]
    service = Service("pgbouncer", command, dict(os.environ), directory, directory / "pgbouncer.log").start()
    try:
        wait_until(lambda: port_open(port), 20, what="PgBouncer's port", abort=_exited(service))
        yield port
    finally:
        service.stop()


def _exited(service: Service) -> Callable[[], str | None]:
    def reason() -> str | None:
        return None if service.alive else f"PgBouncer exited at start-up\n{service.tail()}"

    return reason
