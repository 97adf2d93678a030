"""The database handle: one SQLAlchemy engine, the schema made or upgraded on open.

SQLite (the default) runs with WAL, ``synchronous=NORMAL`` and foreign keys on; its file lives in a data folder
only the server's user can enter (mode 0700) and is itself created mode 0600. PostgreSQL works by URL
(``postgresql+psycopg://...``): the stores use portable SQL only, and every store contract suite runs on both.

The schema is Alembic's (:mod:`lwm2m_server.storage.migrations`): opening a database runs ``upgrade head`` in one
transaction that holds a lock (SQLite: ``BEGIN IMMEDIATE``, the database's write lock; PostgreSQL: a transaction
advisory lock), so processes opening the same database at once upgrade it once, one after the other. A database
made by a release before migrations (no ``alembic_version``) is upgraded from the start: each revision adds only
what it lacks. A database already at the head revision costs one query.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage import (  # noqa: F401  (registers the tables on SQLModel.metadata)
    blob_tables,
    campaign_tables,
    node_tables,
    outbox_tables,
    release_tables,
    tables,
    tag_tables,
    tenancy_tables,
    usage_tables,
    webhook_tables,
)
from lwm2m_server.storage.migrations import alembic_config

__all__ = ["DB_FILENAME", "Database"]

log = logging.getLogger(__name__)

DB_FILENAME = "scratch.db"
DATABASE_URL_ENV = "SCRATCH_DATABASE_URL"  # a database URL every command uses instead of DATA_DIR/scratch.db
SQLITE_BUSY_TIMEOUT_S = 30.0
MIGRATION_LOCK = 0x5C2A7C4D  # PostgreSQL advisory lock key held while the schema is upgraded
_ALEMBIC = threading.Lock()  # Alembic's ``context`` and ``op`` are module globals: one upgrade at a time per process


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # switching a new database to WAL needs its exclusive lock, and SQLite does not wait for it (no busy
        # handler there): another process opening the same new file at once makes it fail "database is locked"
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


@cache
def _head() -> str | None:
    """The head revision of the migrations (read once per process)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _revision(connection: Connection) -> str | None:
    """The database's revision, or None (no ``alembic_version`` table, or it is empty)."""
    if not connection.dialect.has_table(connection, "alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the head revision, under the migration lock (see the module's docstring). Alembic's own
    INFO lines stay quiet (every open of a new database would print three); one line says what changed."""
    with engine.connect() as connection:
        before = _revision(connection)
        if before == _head():
            return
        connection.rollback()
        alembic_log = logging.getLogger("alembic")
        level = alembic_log.level
        alembic_log.setLevel(max(level, logging.WARNING))
        try:
            with _ALEMBIC, connection.begin():
                if connection.dialect.name == "sqlite":
                    connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock, now (pysqlite begins lazily)
                elif connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
                config = alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        finally:
            alembic_log.setLevel(level)
        if before is not None:
            log.info("database schema upgraded from revision %s to %s", before, _head())


class Database:
    """An open database: ``engine`` for the stores, the schema upgraded to the head revision on construction.

    Raises :class:`StorageError` when the database cannot be opened. ``close()`` is idempotent.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        # hide_parameters: a failed statement's exception text (and so a StorageError, a log line) never carries
        # the values it bound: a PSK hash, a token digest or a package name is a secret or a capability
        kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
            if url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url:
                kwargs["poolclass"] = StaticPool  # one shared connection, or every connection is a new database
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(url, **kwargs)
            if self.is_sqlite:
                event.listen(self.engine, "connect", _sqlite_pragmas)
            upgrade(self.engine)
        except (SQLAlchemyError, CommandError) as e:  # CommandError: e.g. a revision newer than this release's
            raise StorageError(f"cannot open database {self._safe_url()}: {e}") from e
        self._closed = False

    @classmethod
    def for_data_dir(cls, path: str | os.PathLike[str], *, echo: bool = False) -> Database:
        """The database of the data directory ``path``: the one ``$SCRATCH_DATABASE_URL`` names when it is set
        (several nodes sharing one PostgreSQL: every ``scratch`` command then uses it), else the SQLite database
        ``scratch.db`` in ``path``. The folder is created mode 0700 when missing."""
        url = os.environ.get(DATABASE_URL_ENV, "").strip()
        folder = Path(path)
        try:
            if not folder.exists():
                folder.mkdir(parents=True, mode=0o700)
                folder.chmod(0o700)  # mkdir's mode is filtered by the umask
            elif folder.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("data folder %s is accessible to other users; chmod 700 it", folder)
            db_file = folder / DB_FILENAME
            if not url and not db_file.exists():
                os.close(os.open(db_file, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as e:
            raise StorageError(f"cannot prepare data folder {folder}: {e}") from e
        return cls(url or f"sqlite:///{db_file}", echo=echo)

    def session(self) -> Session:
        """A new ORM session on this database (the caller closes it, e.g. ``with db.session() as s:``)."""
        return Session(self.engine)

    def close(self) -> None:
        """Release every pooled connection (a SQLite WAL file is checkpointed when its last connection closes)."""
        if not self._closed:
            self._closed = True
            self.engine.dispose()

    def _safe_url(self) -> str:
        """The URL with any password masked (for messages and logs)."""
        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except (SQLAlchemyError, ValueError):
            return "<unparsable database URL>"

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self._safe_url()!r})"
