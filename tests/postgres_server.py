"""A throwaway PostgreSQL for the test run (a pytest plugin: ``pytest_plugins`` in tests/conftest.py).

The session fixture ``postgres`` starts Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``, the newest
found; ``$SCRATCH_PG_BIN`` names another folder) the first time a test asks for it: ``initdb`` into a fresh
folder under ``/tmp``, then ``postgres`` listening on a unix socket in that folder only (no TCP port), with
``fsync``, ``synchronous_commit`` and ``full_page_writes`` off (nothing here must survive a crash). PostgreSQL
refuses to run as root, so under root both run as the ``postgres`` system user (the Debian package creates it).
The server is stopped and its folder deleted at the end of the session; starting it is bounded in time.

Databases: a template, ``scratch_template``, is migrated to the head revision once (``Database(url)`` runs the
migrations); :meth:`PostgresServer.fresh_database` hands each test module its own copy (``CREATE DATABASE ...
TEMPLATE``) and empties it (one ``TRUNCATE`` of every table) for each test, so every test starts empty.

PostgreSQL is never skipped silently: when it cannot be found or does not start, every test that asks for it
fails with a message naming what to install.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from lwm2m_server.storage.database import Database

__all__ = ["PostgresServer", "find_pg_bin"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
TEMPLATE = "scratch_template"
INSTALL_HINT = ("install Debian's PostgreSQL server (`apt-get install postgresql`; `./dev setup` installs it), "
                "or set SCRATCH_PG_BIN to a folder holding initdb and postgres")


def find_pg_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres``: ``$SCRATCH_PG_BIN``, else Debian's newest, else the PATH's."""
    if os.environ.get("SCRATCH_PG_BIN"):
        return Path(os.environ["SCRATCH_PG_BIN"])
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PostgresServer:
    """One PostgreSQL server on a unix socket in a temporary folder; ``url(name)`` addresses a database in it."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="scratch-pg-"))  # short: a socket path has at most 107 bytes
        self.data = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self._user: str | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse root
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(f"running as root and there is no `postgres` system user to run PostgreSQL as: "
                                   f"{INSTALL_HINT}") from None
            self._user = account.pw_name
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._process: subprocess.Popen[bytes] | None = None
        self._admin: Engine | None = None
        self._emptiers: dict[str, Engine] = {}  # URL -> an engine that empties that database
        self._module_databases: dict[str, str] = {}  # test module -> URL
        self._count = 0

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.root}"

    def _run(self, *argv: str, **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, cwd=self.root, user=self._user, stdin=subprocess.DEVNULL,  # type: ignore[call-overload,no-any-return]
                                start_new_session=True, **kwargs)

    def start(self) -> None:
        """initdb, start, wait until it accepts connections, make the migrated template; or raise RuntimeError."""
        deadline = time.monotonic() + START_TIMEOUT_S
        initdb = self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                           "--no-sync", "--encoding=UTF8", "--locale=C", stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        try:
            out, _ = initdb.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            initdb.kill()
            raise RuntimeError(f"initdb did not finish within {START_TIMEOUT_S:.0f} s") from None
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}): {out.decode(errors='replace')[-2000:]}")
        with self.log_file.open("wb") as log:
            self._process = self._run(
                str(self.bin_dir / "postgres"), "-D", str(self.data), "-k", str(self.root),
                "-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB",
                "-c", "log_min_messages=warning", stdout=log, stderr=subprocess.STDOUT)
        atexit.register(self.stop)  # should the session end without its teardown
        self._admin = create_engine(self.url("postgres"), isolation_level="AUTOCOMMIT", pool_size=1)
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self._process.returncode}): {self._log_tail()}")
            try:
                with self._admin.connect() as conn:
                    conn.execute(text("SELECT 1"))
                break
            except Exception as e:  # not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within {START_TIMEOUT_S:.0f} s: {e}; "
                                       f"{self._log_tail()}") from None
                time.sleep(0.05)
        self._execute(f'CREATE DATABASE "{TEMPLATE}"')
        Database(self.url(TEMPLATE)).close()  # the migrations, once

    def _execute(self, sql: str) -> None:
        assert self._admin is not None
        with self._admin.connect() as conn:
            conn.execute(text(sql))

    def new_database(self, *, migrated: bool = True) -> str:
        """A new database, a copy of the migrated template (``migrated=False``: without any table); its URL."""
        self._count += 1
        name = f"test_{self._count}"
        template = TEMPLATE if migrated else "template0"
        self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        return self.url(name)

    def empty(self, url: str) -> None:
        """Delete every row of every table but the migrations' own (one TRUNCATE; sequences restart)."""
        engine = self._emptiers.get(url)
        if engine is None:
            engine = self._emptiers[url] = create_engine(url, pool_size=1)
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))  # a test that left a transaction open: fail, not hang
            names = [n for n in inspect(conn).get_table_names() if n != "alembic_version"]
            conn.execute(text(f"TRUNCATE {', '.join(f'{chr(34)}{n}{chr(34)}' for n in names)} RESTART IDENTITY"))

    def fresh_database(self, request: pytest.FixtureRequest) -> str:
        """An empty, migrated database for this test: the test module's own, emptied (the module's first test
        makes it)."""
        module = request.node.nodeid.split("::")[0]
        url = self._module_databases.get(module)
        if url is None:
            url = self._module_databases[module] = self.new_database()
        else:
            self.empty(url)
        return url

    def _log_tail(self) -> str:
        try:
            return "log: " + self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return "no log"

    def stop(self) -> None:
        """Stop the server (immediate shutdown, then SIGKILL) and delete its folder. Idempotent."""
        for engine in [*self._emptiers.values(), *([self._admin] if self._admin else [])]:
            engine.dispose()
        self._emptiers.clear()
        self._admin = None
        if self._process is not None and self._process.poll() is None:
            # "immediate" shutdown: no shutdown checkpoint (the folder is deleted next; a "fast" one spent 11 s
            # writing out the whole run's buffers)
            self._process.send_signal(signal.SIGQUIT)
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None
        shutil.rmtree(self.root, ignore_errors=True)


_FAILED = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def postgres(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """The run's PostgreSQL server, started on first use. It fails (never skips) every test that needs it when
    PostgreSQL is missing or does not start."""
    failed = request.config.stash.get(_FAILED, None)
    if failed is not None:  # tried once already: fail fast
        pytest.fail(failed, pytrace=False)
    bin_dir = find_pg_bin()
    if bin_dir is None or not (bin_dir / "postgres").exists():
        message = f"PostgreSQL not found (no initdb, postgres in /usr/lib/postgresql/*/bin or PATH): {INSTALL_HINT}"
        request.config.stash[_FAILED] = message
        pytest.fail(message, pytrace=False)
    server: PostgresServer | None = None
    try:
        server = PostgresServer(bin_dir)
        server.start()
    except Exception as e:
        if server is not None:
            server.stop()
        message = f"cannot start a throwaway PostgreSQL from {bin_dir}: {e}\n({INSTALL_HINT})"
        request.config.stash[_FAILED] = message
        pytest.fail(message, pytrace=False)
    try:
        yield server
    finally:
        server.stop()
