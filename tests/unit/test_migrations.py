"""The schema's migrations (lwm2m_server/storage/migrations), on SQLite and PostgreSQL alike: upgrading an empty
database gives exactly the schema ``create_all`` gives; a database made by an older release (tables without the
columns added since, ``signing_key.sealed_private`` NOT NULL, an index missing, later tables absent) and one made
by ``create_all`` are brought to the head revision with their rows; upgrading again changes nothing; processes
opening one new database at the same moment all succeed."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, LargeBinary, create_engine, inspect, text
from sqlmodel import SQLModel

from bootstrap.sql_credentials import credential_metadata
from lwm2m_server.storage import node_tables  # noqa: F401  (on SQLModel.metadata: what create_all makes)
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.migrations import alembic_config
from tests.store_backends import SQL_BACKENDS

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
LATER_TABLES = ("tenant", "api_token", "release_grant", "audit_entry", "user_account", "web_session", "usage_day",
                "usage_endpoint", "webhook", "webhook_delivery", "campaign", "campaign_job", "device_tag", "node")


@pytest.fixture(params=SQL_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new database without any table."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'scratch.db'}"
    return str(request.getfixturevalue("postgres").new_database(migrated=False))


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = create_engine(url)
    yield engine
    engine.dispose()


def schema(engine: Engine) -> dict[str, Any]:
    """Every table but Alembic's: columns, primary key, unique constraints, indexes, foreign keys, as reflected."""
    inspector = inspect(engine)

    def plain(items: list[Any], drop: tuple[str, ...] = ()) -> list[str]:
        def text_of(v: object) -> str:  # a partial index's condition is a clause object: compare its text
            return str({k: str(x) for k, x in v.items()}) if isinstance(v, dict) else str(v)
        return sorted(repr(sorted((k, text_of(v)) for k, v in dict(i).items() if k not in drop)) for i in items)

    return {name: {"columns": plain(inspector.get_columns(name), drop=("comment",)),
                   "primary key": inspector.get_pk_constraint(name)["constrained_columns"],
                   "unique": plain(inspector.get_unique_constraints(name)),
                   "indexes": plain(inspector.get_indexes(name)),
                   "foreign keys": plain(inspector.get_foreign_keys(name))}
            for name in sorted(inspector.get_table_names()) if name != "alembic_version"}


def create_all(engine: Engine) -> None:
    """What a release before migrations did at open."""
    SQLModel.metadata.create_all(engine)
    credential_metadata.create_all(engine)


def revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@pytest.fixture
def expected(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The schema ``create_all`` makes, on a database of the same kind."""
    url = request.getfixturevalue("url")
    if url.startswith("sqlite"):
        other = f"sqlite:///{tmp_path / 'create_all.db'}"
    else:
        other = request.getfixturevalue("postgres").new_database(migrated=False)
    engine = create_engine(other)
    try:
        create_all(engine)
        return schema(engine)
    finally:
        engine.dispose()


def test_upgrading_an_empty_database_gives_the_schema_of_create_all(url: str, engine: Engine,
                                                                   expected: dict[str, Any]) -> None:
    Database(url).close()
    assert revision(engine) == HEAD
    assert schema(engine) == expected
    assert {"campaign_job", "credential", "signing_key", "registration"} <= set(expected)


def test_upgrading_again_changes_nothing_even_from_the_first_revision(url: str, engine: Engine,
                                                                      expected: dict[str, Any]) -> None:
    Database(url).close()
    Database(url).close()  # at head: nothing to do
    with engine.begin() as conn:  # every revision again, on a database that has it all: each is idempotent
        config = alembic_config()
        config.attributes["connection"] = conn
        command.stamp(config, "base")
        command.upgrade(config, "head")
    assert revision(engine) == HEAD
    assert schema(engine) == expected


def test_a_database_made_by_create_all_is_brought_to_head_with_its_rows(url: str, engine: Engine,
                                                                        expected: dict[str, Any]) -> None:
    create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO device_tag (tenant_id, endpoint, tag) VALUES ('t', 'dev-1', 'beta')"))
    assert revision(engine) is None
    Database(url).close()
    assert revision(engine) == HEAD
    assert schema(engine) == expected
    with engine.connect() as conn:
        assert conn.execute(text("SELECT tenant_id, endpoint, tag FROM device_tag")).all() == [("t", "dev-1", "beta")]


def make_older_release(engine: Engine) -> None:
    """A database as an older release left it: later tables absent, columns added since missing, the signing key's
    private part NOT NULL, ``ix_credential_revoked_at`` missing; rows in the tables that remain."""
    create_all(engine)
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        for name in LATER_TABLES:
            if name not in ("campaign", "campaign_job"):
                op.drop_table(name)
        with op.batch_alter_table("campaign_job") as batch:
            for name in ("deadline", "package_name", "via", "owner"):
                batch.drop_column(name)
        with op.batch_alter_table("release") as batch:
            batch.drop_column("origin_tenant")
        with op.batch_alter_table("signing_key") as batch:
            batch.alter_column("sealed_private", existing_type=LargeBinary(), nullable=False)
        op.drop_index("ix_credential_revoked_at", table_name="credential")
        conn.execute(text("INSERT INTO campaign_job (campaign_id, endpoint, tenant_id, position, wave, state, "
                          "attempts, updated_at) VALUES ('c1', 'dev-1', 'acme', 0, 0, 'pending', 2, 5.5)"))
        conn.execute(text("INSERT INTO signing_key (tenant_id, name, role, alg, kid, public_pem, sealed_private, "
                          "created_at) VALUES ('acme', 'k', 'release', 'ES256', 'ab', 'PEM', :sealed, 1.0)"),
                     {"sealed": b"\x00sealed\xff"})
        conn.execute(text("INSERT INTO release (id, tenant_id, vendor, vendor_id, class_name, class_id, version, "
                          "sequence_number, package_format, created_at) VALUES ('r1', 'acme', 'V', 'vid', 'C', "
                          "'cid', '1.0', 7, 'suit', 2.0)"))
        conn.execute(text("INSERT INTO credential (identity, tenant_id, endpoint, kind, created_at, revoked) "
                          "VALUES ('id-1', 'acme', 'dev-1', 'bootstrap', 3.0, :no)"), {"no": False})


def test_a_database_of_an_older_release_is_upgraded_and_keeps_its_rows(url: str, engine: Engine,
                                                                       expected: dict[str, Any]) -> None:
    make_older_release(engine)
    before = schema(engine)
    assert "via" not in str(before["campaign_job"]["columns"]) and "tenant" not in before and "node" not in before
    assert "owner" not in str(before["campaign_job"]["columns"])
    Database(url).close()
    assert revision(engine) == HEAD
    assert schema(engine) == expected
    with engine.begin() as conn:
        assert conn.execute(text("SELECT campaign_id, endpoint, attempts, updated_at, deadline, package_name, via, "
                                 "owner FROM campaign_job")).all() == [("c1", "dev-1", 2, 5.5, None, None, None, None)]
        assert conn.execute(text("SELECT name, sealed_private FROM signing_key")).all() == [("k", b"\x00sealed\xff")]
        assert conn.execute(text("SELECT id, sequence_number, origin_tenant FROM release")).all() == [("r1", 7, None)]
        assert conn.execute(text("SELECT identity FROM credential")).all() == [("id-1",)]
        conn.execute(text("INSERT INTO signing_key (tenant_id, name, role, alg, kid, public_pem, created_at) "
                          "VALUES ('acme', 'public-only', 'release', 'ES256', 'cd', 'PEM', 1.0)"))  # now nullable


def _open(url: str, start: Any) -> None:
    start.wait(30)
    Database(url).close()


def test_processes_opening_a_new_database_at_once_all_succeed(url: str, engine: Engine,
                                                              expected: dict[str, Any]) -> None:
    context = multiprocessing.get_context("fork")  # the children start with everything imported: they race
    start = context.Barrier(3)
    children = [context.Process(target=_open, args=(url, start)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0, 0]
    assert revision(engine) == HEAD
    assert schema(engine) == expected
