"""The backends of the store contract suites: memory, SQLite (a real file) and PostgreSQL (the run's throwaway
server, tests/postgres_server.py), and the one shape of a suite's backend, :class:`StoreBackend`.

Each contract suite parametrises its ``backend`` fixture over :data:`BACKENDS` and opens its SQL database with
:func:`database_opener` (every call opens the same database again: a restart, or a second server node); its
property tests that compare memory with SQL take a module-wide database from :func:`shared_database`. A SQL
database starts empty and migrated to the head revision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import pytest

from lwm2m_server.storage.database import Database

__all__ = ["BACKENDS", "SQL_BACKENDS", "StoreBackend", "database_opener", "shared_database"]

S = TypeVar("S")

SQL_BACKENDS = ("sqlite", "postgresql")
BACKENDS = ("memory", *SQL_BACKENDS)


def database_opener(request: pytest.FixtureRequest, kind: str, data_dir: Path) -> Callable[[], Database]:
    """How this test opens its SQL database, again at every call: SQLite, the file in ``data_dir``
    (``Database.for_data_dir``); PostgreSQL, an empty database of the run's server, this test's own."""
    if kind == "sqlite":
        return lambda: Database.for_data_dir(data_dir)
    if kind == "postgresql":
        url = request.getfixturevalue("postgres").fresh_database(request)
        return lambda: Database(url)
    raise ValueError(f"not a SQL backend: {kind!r}")


def shared_database(request: pytest.FixtureRequest, kind: str, tmp_path_factory: pytest.TempPathFactory
                    ) -> Database:
    """A database for a module-scoped fixture (the caller closes it): a new SQLite file, or a new PostgreSQL
    database (never emptied between tests)."""
    if kind == "sqlite":
        return Database.for_data_dir(tmp_path_factory.mktemp("shared") / "data")
    if kind == "postgresql":
        return Database(request.getfixturevalue("postgres").new_database())
    raise ValueError(f"not a SQL backend: {kind!r}")


class StoreBackend(Generic[S]):
    """``kind`` is one of :data:`BACKENDS`; ``store`` the store under test."""

    def __init__(self, request: pytest.FixtureRequest, kind: str, data_dir: Path, memory: Callable[[], S],
                 sql: Callable[[Database], S]) -> None:
        self.kind = kind
        self._memory, self._sql = memory, sql
        self._open_database = None if kind == "memory" else database_opener(request, kind, data_dir)
        self.db: Database | None = None
        self._others: list[Database] = []
        self.store: S
        self._open()

    def _open(self) -> None:
        if self._open_database is None:
            self.store = self._memory()
        else:
            self.db = self._open_database()
            self.store = self._sql(self.db)

    def second(self) -> S:
        """The same data through another store: SQL, another engine on the same database (only what was committed
        shows: a second server node); memory, the store itself."""
        if self._open_database is None:
            return self.store
        db = self._open_database()
        self._others.append(db)
        return self._sql(db)

    def reopen(self) -> None:
        """SQL: close the database and open the same one again. Memory: a store lives as long as its object."""
        if self.db is not None:
            self.db.close()
            self._open()

    def close(self) -> None:
        for db in (*self._others, *([self.db] if self.db is not None else [])):
            db.close()
