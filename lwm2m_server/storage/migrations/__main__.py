"""Alembic's command line on these migrations, without an ``alembic.ini``: ``python -m
lwm2m_server.storage.migrations <command> ...`` (``$SCRATCH_DATABASE_URL`` names the database, SQLite by default
``sqlite:///scratch.db``)."""

from __future__ import annotations

import os
import sys

from alembic.config import CommandLine

from lwm2m_server.storage.migrations import alembic_config


def main(argv: list[str] | None = None) -> None:
    cli = CommandLine(prog="python -m lwm2m_server.storage.migrations")
    options = cli.parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    cli.run_cmd(alembic_config(os.environ.get("SCRATCH_DATABASE_URL", "sqlite:///scratch.db")), options)


if __name__ == "__main__":
    main()
