"""Device tags: free labels an operator puts on devices (``site:lyon``, ``beta``) to pick campaign targets.

Invariants: a tag is 1..64 characters of ``[A-Za-z0-9._:-]`` (case-sensitive); a device carries a tag at most
once; every read and write is scoped by tenant (a tenant never sees another's tags); a device need not be
registered to be tagged. Adding a tag already there or removing one that is not is no error (idempotent). Every
tag and the endpoint are validated before anything is written, so a bad request changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.tag_store import SqlTagStore, TagStore
from lwm2m_server.storage.tag_tables import MAX_TAG_LENGTH

__all__ = ["MAX_ENDPOINT_LENGTH", "DeviceTags", "InvalidTagError", "validate_tag"]

MAX_ENDPOINT_LENGTH = 255
MAX_TENANT_LENGTH = 64
_TAG = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_TAG_LENGTH}}}")


class InvalidTagError(InvalidRequestError):
    """A tag, endpoint or tenant that cannot be stored (bad characters, empty, too long), or a tag both added and
    removed in one change."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def validate_tag(tag: str) -> str:
    """``tag`` itself when it is a valid tag; else :class:`InvalidTagError` saying what a tag may be."""
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidTagError(f"invalid tag {_shown(str(tag))}: a tag is 1 to {MAX_TAG_LENGTH} characters among "
                              "letters, digits and . _ : -")
    return tag


def _validate_endpoint(endpoint: str) -> str:
    if not isinstance(endpoint, str) or not 0 < len(endpoint) <= MAX_ENDPOINT_LENGTH:
        raise InvalidTagError(f"invalid endpoint {_shown(str(endpoint))}: 1 to {MAX_ENDPOINT_LENGTH} characters")
    return endpoint


def _validate_tenant(tenant_id: str) -> str:
    if not isinstance(tenant_id, str) or not 0 < len(tenant_id) <= MAX_TENANT_LENGTH:
        raise InvalidTagError(f"invalid tenant id: 1 to {MAX_TENANT_LENGTH} characters")
    return tenant_id


def _tags(tags: str | Iterable[str]) -> set[str]:
    return {validate_tag(t) for t in ([tags] if isinstance(tags, str) else tags)}


class DeviceTags:
    """The tags of the devices, kept by a :class:`~lwm2m_server.storage.tag_store.TagStore`. Store failures raise
    :class:`StorageError`; invalid input raises :class:`InvalidTagError` (an :class:`InvalidRequestError`)."""

    def __init__(self, store: TagStore) -> None:
        self._store = store

    @classmethod
    def over(cls, database: Database) -> DeviceTags:
        """The tags in ``database`` (table ``device_tag``)."""
        return cls(SqlTagStore(database))

    def __repr__(self) -> str:
        return f"DeviceTags({self._store!r})"

    def add(self, endpoint: str, tags: str | Iterable[str], *, tenant_id: str) -> list[str]:
        """Put ``tags`` on ``endpoint``; its tags afterwards (sorted)."""
        return self.change(endpoint, add=tags, tenant_id=tenant_id)

    def remove(self, endpoint: str, tags: str | Iterable[str], *, tenant_id: str) -> list[str]:
        """Take ``tags`` off ``endpoint``; its tags afterwards (sorted)."""
        return self.change(endpoint, remove=tags, tenant_id=tenant_id)

    def change(self, endpoint: str, *, add: str | Iterable[str] = (), remove: str | Iterable[str] = (),
               tenant_id: str) -> list[str]:
        """Add and remove in one transaction (a tag may not be in both); the endpoint's tags afterwards (sorted)."""
        _validate_endpoint(endpoint)
        _validate_tenant(tenant_id)
        adding, removing = _tags(add), _tags(remove)
        both = adding & removing
        if both:
            raise InvalidTagError(f"tag {_shown(min(both))} is both added and removed")
        return self._store.change(endpoint, add=adding, remove=removing, tenant_id=tenant_id)

    def of(self, endpoint: str, *, tenant_id: str) -> list[str]:
        """The tags of ``endpoint`` (sorted; empty for an endpoint never tagged)."""
        _validate_endpoint(endpoint)
        return self._store.of(endpoint, tenant_id=tenant_id)

    def endpoints_with(self, tag: str, *, tenant_id: str) -> set[str]:
        """The endpoints of the tenant that carry ``tag`` (registered or not)."""
        validate_tag(tag)
        return self._store.endpoints_with(tag, tenant_id=tenant_id)

    def all(self, *, tenant_id: str) -> dict[str, list[str]]:
        """Every tagged endpoint of the tenant -> its tags (endpoints and tags sorted)."""
        out: dict[str, list[str]] = {}
        for row in self._store.all(tenant_id=tenant_id):
            out.setdefault(row.endpoint, []).append(row.tag)
        return out
