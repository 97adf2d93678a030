"""A failed statement never carries the values it bound into an exception text (a StorageError, a log line)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from lwm2m_server.storage.database import Database


def test_a_failed_statements_parameters_are_hidden(tmp_path: Path) -> None:
    db = Database.for_data_dir(tmp_path)
    try:
        with pytest.raises(SQLAlchemyError) as raised, db.engine.begin() as connection:
            connection.execute(text("INSERT INTO registration (id) VALUES (:v)"), {"v": "capability-7f3a9c"})
        assert "capability-7f3a9c" not in str(raised.value) and "hidden" in str(raised.value)
    finally:
        db.close()
