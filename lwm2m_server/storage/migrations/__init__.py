"""The schema's Alembic migrations: ``env.py``, ``script.py.mako`` and ``versions/`` (shipped as package files).

:class:`~lwm2m_server.storage.database.Database` runs them (``upgrade head``) whenever it opens a database, with a
:class:`~alembic.config.Config` built in code (:func:`alembic_config`): no ``alembic.ini`` is needed. Developers
run Alembic's other commands with ``python -m lwm2m_server.storage.migrations`` (e.g. ``revision --autogenerate
-m "..."`` against ``$SCRATCH_DATABASE_URL``, a database at the head revision).

Every revision is written for SQLite and PostgreSQL alike (SQLite alters a table through ``batch_alter_table``)
and is idempotent on a database made by an older release without migrations (``create_all``): such a database has
no ``alembic_version`` table, so it is upgraded from the start and each revision creates or adds only what is
missing.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

__all__ = ["MIGRATIONS", "alembic_config"]

MIGRATIONS = Path(__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration for these migrations; ``url`` is needed only when no connection is handed over
    (``config.attributes["connection"]``, what :class:`~lwm2m_server.storage.database.Database` does)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
