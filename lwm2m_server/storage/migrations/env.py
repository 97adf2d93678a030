"""Alembic's environment: runs the revisions on the connection :class:`~lwm2m_server.storage.database.Database`
hands over (``config.attributes["connection"]``, inside its transaction and lock), or, from Alembic's command
line, on ``sqlalchemy.url``. Autogenerate compares with ``SQLModel.metadata``; the credential tables
(bootstrap/sql_credentials.py, their own metadata, which this package must not import) are left out of the
comparison: a change to them is written by hand."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from lwm2m_server.storage import blob_tables, database, node_tables, outbox_tables  # noqa: F401  (the tables on SQLModel.metadata)

CREDENTIAL_TABLES = frozenset({"credential", "credential_psk_fingerprint"})


def _compared(name: str | None, type_: str, _parent: object) -> bool:
    return not (type_ == "table" and name in CREDENTIAL_TABLES)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=SQLModel.metadata, include_name=_compared,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("the revisions inspect the database they upgrade: offline (--sql) mode is not supported")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite:///scratch.db")
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


main()
