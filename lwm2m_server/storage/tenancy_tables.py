"""SQL tables of tenancy (sqlmodel): tenants and their brands, API tokens (salted digests only), OEM-to-operator
grants, and the append-only audit trail. Portable SQL, times as float seconds."""

# No ``from __future__ import annotations`` here: sqlmodel reads the field annotations at class creation.

from sqlalchemy import Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

__all__ = ["AuditEntryRow", "GrantRow", "SessionRow", "TenantRow", "TokenRow", "UserRow"]


class TenantRow(SQLModel, table=True):
    __tablename__ = "tenant"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(sa_type=Text)
    kind: str = Field(max_length=16)
    created_at: float
    brand: str | None = Field(default=None, sa_type=Text)  # JSON of the Brand, logo base64 (None: no brand)


class TokenRow(SQLModel, table=True):
    __tablename__ = "api_token"

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(max_length=64, index=True)
    roles: str = Field(max_length=128)  # comma-separated role names
    name: str = Field(sa_type=Text)
    salt: bytes = Field(sa_type=LargeBinary)
    digest: bytes = Field(sa_type=LargeBinary)  # SHA-256(salt || secret): the token itself is never stored
    created_at: float
    created_by: str = Field(max_length=128)
    expires_at: float | None = None
    revoked_at: float | None = None


class GrantRow(SQLModel, table=True):
    __tablename__ = "release_grant"

    oem_tenant: str = Field(primary_key=True, max_length=64)
    operator_tenant: str = Field(primary_key=True, max_length=64)
    class_name: str = Field(primary_key=True, max_length=128)
    created_at: float
    created_by: str = Field(max_length=128)


class AuditEntryRow(SQLModel, table=True):
    __tablename__ = "audit_entry"
    __table_args__ = (Index("ix_audit_tenant_seq", "tenant_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)  # autoincrement: the append order
    tenant_id: str = Field(max_length=64)
    at: float
    subject: str = Field(max_length=128)
    roles: str = Field(max_length=128)
    action: str = Field(max_length=64)
    target: str = Field(sa_type=Text)
    outcome: str = Field(max_length=16)
    detail: str = Field(default="", sa_type=Text)


class UserRow(SQLModel, table=True):
    __tablename__ = "user_account"

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(max_length=64, index=True)
    login: str = Field(max_length=128, unique=True)
    roles: str = Field(max_length=128)
    password_hash: str = Field(sa_type=Text)  # scrypt (tenancy/passwords.py), never the password
    created_at: float
    created_by: str = Field(max_length=128)
    disabled_at: float | None = None


class SessionRow(SQLModel, table=True):
    __tablename__ = "web_session"

    digest: bytes = Field(sa_type=LargeBinary, primary_key=True)  # SHA-256 of the cookie's secret
    user_id: str = Field(max_length=32, index=True)
    tenant_id: str = Field(max_length=64)
    csrf: str = Field(max_length=64)
    created_at: float
    expires_at: float
    revoked_at: float | None = None
