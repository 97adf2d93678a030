"""The one shape of a store contract suite's backend: a memory or a SQL (real SQLite file) store, and ``reopen()``.

Each contract suite parametrises a fixture over ``("memory", "sql")`` and builds a :class:`StoreBackend` from two
factories; its tests then use ``backend.store`` and ``backend.reopen()`` (what a server restart does to a store).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from lwm2m_server.storage.database import Database

S = TypeVar("S")


class StoreBackend(Generic[S]):
    """``kind`` is ``"memory"`` or ``"sql"``; ``store`` the store under test."""

    def __init__(self, kind: str, data_dir: Path, memory: Callable[[], S], sql: Callable[[Database], S]) -> None:
        self.kind, self.data_dir = kind, data_dir
        self._memory, self._sql = memory, sql
        self.db: Database | None = None
        self.store: S
        self._open()

    def _open(self) -> None:
        if self.kind == "memory":
            self.store = self._memory()
        else:
            self.db = Database.for_data_dir(self.data_dir)
            self.store = self._sql(self.db)

    def reopen(self) -> None:
        """SQL: close the database and open the same file again. Memory: a store lives as long as its object."""
        if self.db is not None:
            self.db.close()
            self._open()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
