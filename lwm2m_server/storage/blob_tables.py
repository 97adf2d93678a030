"""SQL table of content-addressed blobs (sqlmodel): release images and packages, when the database is shared by
several server nodes (PostgreSQL), so that every node reads the same bytes. ``sha256`` (lowercase hex) names the
content; a row is written whole or not at all. Made by migration 0007."""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import BigInteger, LargeBinary
from sqlmodel import Field, SQLModel

__all__ = ["BlobRow"]


class BlobRow(SQLModel, table=True):
    """One blob: its SHA-256 hex, its size and its bytes."""

    __tablename__ = "blob"

    sha256: str = Field(primary_key=True, max_length=64)
    size: int = Field(sa_type=BigInteger)
    data: bytes = Field(sa_type=LargeBinary)
