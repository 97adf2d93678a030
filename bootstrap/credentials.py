"""Device credentials (DTLS pre-shared keys): the records, the store interface and the in-memory store.

A :class:`Credential` says who holds a PSK (tenant, endpoint, role) under which PSK identity; it never carries
the key. The key lives sealed in the :class:`~bootstrap.vault.Vault` (AES-GCM, bound to the credential's tenant,
endpoint, identity and kind) and comes out only through :meth:`CredentialStore.psk_for`, as
:class:`~bootstrap.vault.SecretBytes` (whose ``repr``/``str`` hide it).

Rules every :class:`CredentialStore` keeps (tests/unit/test_credential_store.py is their contract suite):

* a fresh PSK is :data:`PSK_MIN_BYTES` or more bytes from :mod:`secrets`, and a PSK value is issued at most once,
  ever, in any tenant: the store keeps a keyed fingerprint (:meth:`~bootstrap.vault.Vault.fingerprint`) of every
  PSK it issued and refuses one it has seen (:class:`PskReuseError`), without ever storing a PSK in the clear;
* a PSK identity names one credential, ever (revoked ones included), across all tenants: the DTLS handshake looks
  a key up by identity before it knows the tenant;
* every write and every lookup by endpoint takes ``tenant_id`` as a required keyword (the caller's tenant, never a
  default); only :meth:`~CredentialStore.list` takes ``tenant_id=None``, for every tenant;
* an endpoint has at most one active credential per kind in a tenant; :meth:`~CredentialStore.replace` rekeys it
  (the old one stops working at once, in the same transaction), :meth:`~CredentialStore.revoke` ends it. A revoked
  credential is kept (for the audit trail, and so its identity is never reissued) but its sealed key is erased;
* lookups by identity (:meth:`~CredentialStore.psk_for`, :meth:`~CredentialStore.verify`) are served from an
  in-memory index (identity -> sealed key, opened on demand), built by :meth:`~CredentialStore.load` and kept up
  to date by this store's own writes; an identity it does not hold is looked up in the backing store (so one issued
  by another process works at once), and :meth:`~CredentialStore.revoked_since` applies revocations made by other
  processes (a server polls it); a PSK is compared in constant time (:func:`hmac.compare_digest`);
* a server that accepts one kind of credential only asks :meth:`~CredentialStore.for_kind` (a
  :class:`CredentialKindView`): a bootstrap credential never opens a session with the LwM2M server, nor the
  reverse;
* no PSK is ever logged or put into an exception message.
"""

from __future__ import annotations

import builtins
import hmac
import logging
import secrets
import threading
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import NamedTuple, Protocol, runtime_checkable

from bootstrap.vault import KEK_ENV_VAR, SealedDataError, SecretBytes, Vault
from lwm2m_server.core.errors import InvalidRequestError, SecurityError, StorageError

__all__ = [
    "DEFAULT_TENANT",
    "MAX_IDENTITY_BYTES",
    "PSK_MAX_BYTES",
    "PSK_MIN_BYTES",
    "Credential",
    "CredentialConflictError",
    "CredentialKind",
    "CredentialKindView",
    "CredentialStore",
    "CredentialStoreBase",
    "InvalidCredentialError",
    "IssuedCredential",
    "MemoryCredentialStore",
    "PskReuseError",
    "StoredCredential",
    "UnknownCredentialError",
    "credential_aad",
]

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
PSK_MIN_BYTES = 16
PSK_MAX_BYTES = 64
MAX_IDENTITY_BYTES = 128
_AAD_LABEL = b"scratch/credential/v1"


class CredentialKind(StrEnum):
    """Which server a credential opens: the bootstrap server, or the LwM2M (device management) server."""

    BOOTSTRAP = "bootstrap"
    SERVER = "server"


class InvalidCredentialError(InvalidRequestError):
    """An argument a credential cannot be made from (empty endpoint, unknown kind, PSK of a wrong length...)."""


class CredentialConflictError(StorageError):
    """A write that breaks a uniqueness rule: an identity already used, or a second active credential of one kind
    for an endpoint."""


class UnknownCredentialError(StorageError, LookupError):
    """No active credential where one is needed (e.g. :meth:`CredentialStore.replace` of a missing one)."""


class PskReuseError(SecurityError):
    """A PSK value this store has already issued (to whichever credential): a key is never used twice."""


@dataclass(frozen=True, slots=True)
class Credential:
    """Who holds a PSK, under which identity, since when. The key itself is not here (ask the store)."""

    tenant_id: str
    endpoint: str
    identity: str
    kind: CredentialKind
    created_at: float
    revoked: bool = False
    revoked_at: float | None = None


class IssuedCredential(NamedTuple):
    """What :meth:`CredentialStore.issue` and :meth:`~CredentialStore.replace` hand back: the record and its new
    PSK (to deliver to the device; its ``repr`` hides it). Unpacks as ``credential, psk``."""

    credential: Credential
    psk: SecretBytes


class StoredCredential(NamedTuple):
    """A credential as a backend keeps it: the record and its sealed PSK (None once revoked)."""

    credential: Credential
    sealed_psk: bytes | None


def credential_aad(credential: Credential) -> bytes:
    """The associated data a credential's PSK is sealed with: tenant, endpoint, identity and kind, each length
    prefixed (so no two different records give the same bytes). A sealed PSK moved to another record won't open."""
    parts = (credential.tenant_id, credential.endpoint, credential.identity, credential.kind.value)
    encoded = (p.encode("utf-8") for p in parts)
    return _AAD_LABEL + b"".join(len(p).to_bytes(4, "big") + p for p in encoded)


@runtime_checkable
class CredentialStore(Protocol):
    """PSK credentials keyed by identity (unique, ever); one active credential per (tenant, endpoint, kind)."""

    def issue(self, endpoint: str, kind: CredentialKind | str, *, now: float, tenant_id: str,
              identity: str | None = None, psk: bytes | None = None) -> IssuedCredential:
        """A new credential for an endpoint that has no active one of this kind: with ``identity`` (a fresh random
        one when None) and ``psk`` (a fresh random one when None; else it must be new and 16..64 bytes).
        Raises :class:`CredentialConflictError` (active credential exists, identity used), :class:`PskReuseError`,
        :class:`InvalidCredentialError`."""
        ...

    def replace(self, endpoint: str, kind: CredentialKind | str, *, now: float, tenant_id: str,
                identity: str | None = None, psk: bytes | None = None) -> IssuedCredential:
        """Rekey: in one transaction revoke the endpoint's active credential of this kind and issue a new one
        (same rules as :meth:`issue`; the new identity must differ from every earlier one). Raises
        :class:`UnknownCredentialError` when there is no active credential to replace."""
        ...

    def revoke(self, endpoint: str, *, now: float, tenant_id: str,
               kind: CredentialKind | str | None = None) -> builtins.list[Credential]:
        """End the endpoint's active credentials (of one kind, or all when None) at once; their sealed keys are
        erased. Returns the revoked credentials (empty when there were none)."""
        ...

    def psk_for(self, identity: bytes | str) -> SecretBytes | None:
        """The PSK of an active credential, by identity (as the DTLS handshake gives it); None when the identity is
        unknown or revoked. Raises :class:`~bootstrap.vault.SealedDataError` when its stored key does not open."""
        ...

    def verify(self, identity: bytes | str, psk: bytes) -> bool:
        """Whether ``psk`` is the key of the active credential ``identity`` (constant-time comparison)."""
        ...

    def endpoint_for(self, identity: bytes | str) -> str | None:
        """The endpoint an active identity belongs to (None when unknown or revoked)."""
        ...

    def credential_for(self, identity: bytes | str) -> Credential | None:
        """The credential of an identity, active or revoked (None when unknown)."""
        ...

    def by_endpoint(self, endpoint: str, kind: CredentialKind | str, *, tenant_id: str) -> Credential | None:
        """The endpoint's active credential of this kind."""
        ...

    def has_active(self, endpoint: str, kind: CredentialKind | str, *, tenant_id: str) -> bool:
        """Whether the endpoint has an active credential of this kind (``by_endpoint(...) is not None``, cheaper:
        asked at every plain-CoAP Register)."""
        ...

    def list(self, *, tenant_id: str | None, include_revoked: bool = False) -> builtins.list[Credential]:
        """The credentials of one tenant (all tenants when None: the operator's housekeeping), ordered by tenant,
        endpoint, kind, creation."""
        ...

    def load(self) -> int:
        """(Re)build the identity index from the backing store; the number of active credentials. Raises
        :class:`~bootstrap.vault.SealedDataError` when stored keys are sealed under another key-encryption key."""
        ...

    def revoked_since(self, since: float) -> builtins.list[Credential]:
        """The credentials revoked (or replaced) at or after ``since`` (their ``revoked_at``), by this store or by
        another process on the same backing store, oldest first; they are applied to the identity index on the
        way, so none of them opens a session here any more. Cheap enough to poll every second."""
        ...

    def for_kind(self, kind: CredentialKind | str) -> CredentialKindView:
        """This store seen by a server that accepts one kind of credential only."""
        ...


def _identity_text(identity: bytes | str) -> str | None:
    if isinstance(identity, str):
        return identity
    try:
        return bytes(identity).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _kind(kind: CredentialKind | str) -> CredentialKind:
    try:
        return CredentialKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in CredentialKind)
        raise InvalidCredentialError(f"unknown credential kind {kind!r} (one of: {names})") from None


def _sort_key(c: Credential) -> tuple[str, str, str, float, str]:
    return (c.tenant_id, c.endpoint, c.kind.value, c.created_at, c.identity)


class CredentialStoreBase:
    """The logic every backend shares: validation, fresh keys, sealing, fingerprints and the identity index.

    A backend implements the five ``_``-hooks below against its storage; each write hook is one transaction that
    checks, in this order, the active-credential rule, the identity and the PSK fingerprint, and applies nothing
    when one fails. Calls are serialised by a lock, so a store may be used from worker threads.
    """

    def __init__(self, vault: Vault, *, psk_bytes: int = PSK_MIN_BYTES) -> None:
        if not PSK_MIN_BYTES <= psk_bytes <= PSK_MAX_BYTES:
            raise InvalidCredentialError(f"a PSK is {PSK_MIN_BYTES} to {PSK_MAX_BYTES} bytes, not {psk_bytes}")
        self._vault = vault
        self._psk_bytes = psk_bytes
        self._index: dict[str, StoredCredential] = {}
        self._lock = threading.RLock()
        self._decoy = secrets.token_bytes(PSK_MAX_BYTES)  # compared against when an identity has no key

    # ------------------------------------------------------------ backend hooks

    def _insert(self, new: StoredCredential, fingerprint: bytes, *, retire_active: bool,
                now: float) -> Credential | None:
        """Store ``new`` and the fingerprint of its PSK; with ``retire_active``, first revoke the active credential
        of its (tenant, endpoint, kind), which must exist, and return it as revoked."""
        raise NotImplementedError

    def _revoke(self, tenant_id: str, endpoint: str, kind: CredentialKind | None,
                now: float) -> builtins.list[Credential]:
        raise NotImplementedError

    def _select(self, tenant_id: str | None, endpoint: str | None, kind: CredentialKind | None,
                include_revoked: bool) -> builtins.list[Credential]:
        raise NotImplementedError

    def _row(self, identity: str) -> StoredCredential | None:
        raise NotImplementedError

    def _rows(self) -> builtins.list[StoredCredential]:
        raise NotImplementedError

    def _revoked_rows(self, since: float) -> builtins.list[Credential]:
        """The credentials whose ``revoked_at`` is ``since`` or later."""
        raise NotImplementedError

    # ------------------------------------------------------------ writes

    def issue(self, endpoint: str, kind: CredentialKind | str, *, now: float, tenant_id: str,
              identity: str | None = None, psk: bytes | None = None) -> IssuedCredential:
        return self._issue(endpoint, kind, now=now, tenant_id=tenant_id, identity=identity, psk=psk, retire=False)

    def replace(self, endpoint: str, kind: CredentialKind | str, *, now: float, tenant_id: str,
                identity: str | None = None, psk: bytes | None = None) -> IssuedCredential:
        return self._issue(endpoint, kind, now=now, tenant_id=tenant_id, identity=identity, psk=psk, retire=True)

    def _issue(self, endpoint: str, kind: CredentialKind | str, *, now: float, tenant_id: str,
               identity: str | None, psk: bytes | None, retire: bool) -> IssuedCredential:
        kind = _kind(kind)
        if not endpoint or not isinstance(endpoint, str):
            raise InvalidCredentialError("a credential needs an endpoint name")
        if not tenant_id or not isinstance(tenant_id, str):
            raise InvalidCredentialError("a credential needs a tenant id")
        if identity is None:
            identity = f"{'bs' if kind is CredentialKind.BOOTSTRAP else 'sv'}-{secrets.token_urlsafe(15)}"
        elif not isinstance(identity, str) or not 0 < len(identity.encode("utf-8")) <= MAX_IDENTITY_BYTES:
            raise InvalidCredentialError(f"a PSK identity is 1 to {MAX_IDENTITY_BYTES} bytes of UTF-8 text")
        if psk is None:
            key = SecretBytes(secrets.token_bytes(self._psk_bytes))
        elif not isinstance(psk, bytes) or not PSK_MIN_BYTES <= len(psk) <= PSK_MAX_BYTES:
            raise InvalidCredentialError(f"a PSK is {PSK_MIN_BYTES} to {PSK_MAX_BYTES} bytes")
        else:
            key = SecretBytes(psk)
        credential = Credential(tenant_id, endpoint, identity, kind, float(now))
        stored = StoredCredential(credential, self._vault.seal(key, credential_aad(credential)))
        with self._lock:
            retired = self._insert(stored, self._vault.fingerprint(key), retire_active=retire, now=float(now))
            self._index[identity] = stored
            if retired is not None:
                self._index[retired.identity] = StoredCredential(retired, None)
        if retired is not None:
            log.info("rekeyed %s credential of endpoint %r (tenant %r): identity %r revoked, %r issued",
                     kind.value, endpoint, tenant_id, retired.identity, identity)
        else:
            log.info("issued %s credential %r for endpoint %r (tenant %r)", kind.value, identity, endpoint,
                     tenant_id)
        return IssuedCredential(credential, key)

    def revoke(self, endpoint: str, *, now: float, tenant_id: str,
               kind: CredentialKind | str | None = None) -> builtins.list[Credential]:
        which = None if kind is None else _kind(kind)
        with self._lock:
            revoked = self._revoke(tenant_id, endpoint, which, float(now))
            for credential in revoked:
                self._index[credential.identity] = StoredCredential(credential, None)
        for credential in revoked:
            log.info("revoked %s credential %r of endpoint %r (tenant %r)", credential.kind.value,
                     credential.identity, endpoint, tenant_id)
        return revoked

    # ------------------------------------------------------------ lookups by identity (the handshake's hot path)

    def _lookup(self, identity: bytes | str) -> StoredCredential | None:
        text = _identity_text(identity)
        if text is None:
            return None
        with self._lock:
            found = self._index.get(text)
            if found is None:  # written by another process since load(), or never loaded
                found = self._row(text)
                if found is not None:
                    self._index[text] = found
        if found is None:
            log.debug("no credential with identity %r", text)
        return found

    def psk_for(self, identity: bytes | str) -> SecretBytes | None:
        found = self._lookup(identity)
        if found is None or found.credential.revoked or found.sealed_psk is None:
            return None
        return self._vault.open_sealed(found.sealed_psk, credential_aad(found.credential))

    def verify(self, identity: bytes | str, psk: bytes) -> bool:
        expected = self.psk_for(identity)
        same = hmac.compare_digest(bytes(self._decoy if expected is None else expected), bytes(psk))
        return same and expected is not None

    def endpoint_for(self, identity: bytes | str) -> str | None:
        found = self._lookup(identity)
        return None if found is None or found.credential.revoked else found.credential.endpoint

    def credential_for(self, identity: bytes | str) -> Credential | None:
        found = self._lookup(identity)
        return None if found is None else found.credential

    # ------------------------------------------------------------ other reads (from the backing store)

    def by_endpoint(self, endpoint: str, kind: CredentialKind | str, *, tenant_id: str) -> Credential | None:
        with self._lock:
            found = self._select(tenant_id, endpoint, _kind(kind), False)
        return found[0] if found else None

    def has_active(self, endpoint: str, kind: CredentialKind | str, *, tenant_id: str) -> bool:
        with self._lock:
            return self._has_active(tenant_id, endpoint, _kind(kind))

    def _has_active(self, tenant_id: str, endpoint: str, kind: CredentialKind) -> bool:
        """Backend hook (default: through ``_select``); a backend may answer it more cheaply."""
        return bool(self._select(tenant_id, endpoint, kind, False))

    def list(self, *, tenant_id: str | None, include_revoked: bool = False) -> builtins.list[Credential]:
        with self._lock:
            return sorted(self._select(tenant_id, None, None, include_revoked), key=_sort_key)

    def load(self) -> int:
        with self._lock:
            rows = self._rows()
            foreign = [r.credential.identity for r in rows
                       if r.sealed_psk is not None and not self._vault.is_sealed_here(r.sealed_psk)]
            if foreign:
                raise SealedDataError(
                    f"{len(foreign)} stored credential(s) (e.g. identity {foreign[0]!r}) are sealed under another "
                    f"key-encryption key than this vault's (key id {self._vault.key_id}): is ${KEK_ENV_VAR} or the "
                    "vault key file the one they were issued under?")
            self._index = {r.credential.identity: r for r in rows}
        active = sum(1 for r in rows if not r.credential.revoked)
        log.info("credential index loaded: %d active, %d revoked", active, len(rows) - active)
        return active

    def revoked_since(self, since: float) -> builtins.list[Credential]:
        with self._lock:
            revoked = self._revoked_rows(float(since))
            for credential in revoked:
                held = self._index.get(credential.identity)
                if held is None or not held.credential.revoked:
                    self._index[credential.identity] = StoredCredential(credential, None)
        return sorted(revoked, key=lambda c: (c.revoked_at or 0.0, c.identity))

    def for_kind(self, kind: CredentialKind | str) -> CredentialKindView:
        return CredentialKindView(self, _kind(kind))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vault={self._vault!r})"


class CredentialKindView:
    """The credentials of one kind in a store, for a server that accepts that kind only: the LwM2M server takes
    ``store.for_kind(CredentialKind.SERVER)``, the bootstrap server ``for_kind(CredentialKind.BOOTSTRAP)``.

    An identity of another kind is unknown here (no PSK, no endpoint), so it cannot complete a DTLS handshake.
    The kind of an identity never changes (an identity names one credential, ever), so checking it and then
    opening the key is race-free. Writes go to the store itself.
    """

    __slots__ = ("_store", "kind")

    def __init__(self, store: CredentialStore, kind: CredentialKind) -> None:
        self._store = store
        self.kind = kind

    def credential_for(self, identity: bytes | str) -> Credential | None:
        found = self._store.credential_for(identity)
        return found if found is not None and found.kind is self.kind else None

    def psk_for(self, identity: bytes | str) -> SecretBytes | None:
        return self._store.psk_for(identity) if self.credential_for(identity) is not None else None

    def endpoint_for(self, identity: bytes | str) -> str | None:
        return self._store.endpoint_for(identity) if self.credential_for(identity) is not None else None

    def verify(self, identity: bytes | str, psk: bytes) -> bool:
        same = self._store.verify(identity, psk)
        return same and self.credential_for(identity) is not None

    def is_bound(self, endpoint: str, *, tenant_id: str) -> bool:
        """Whether ``endpoint`` holds an active credential of this kind (it must then prove it: no plain CoAP)."""
        return self._store.has_active(endpoint, self.kind, tenant_id=tenant_id)

    def revoked_since(self, since: float) -> builtins.list[Credential]:
        """The store's :meth:`~CredentialStore.revoked_since` (applied to its index), of this kind only."""
        return [c for c in self._store.revoked_since(since) if c.kind is self.kind]

    def load(self) -> int:
        """(Re)build the store's identity index; the number of active credentials of this kind."""
        self._store.load()
        return sum(1 for c in self._store.list(tenant_id=None) if c.kind is self.kind)

    def __repr__(self) -> str:
        return f"CredentialKindView({self._store!r}, {self.kind.value})"


class MemoryCredentialStore(CredentialStoreBase):
    """Credentials in dicts (tests, ``--no-db`` runs): sealed like the SQL store's, and lost with the object."""

    def __init__(self, vault: Vault, *, psk_bytes: int = PSK_MIN_BYTES) -> None:
        super().__init__(vault, psk_bytes=psk_bytes)
        self._stored: dict[str, StoredCredential] = {}
        self._active: dict[tuple[str, str, CredentialKind], str] = {}
        self._fingerprints: dict[bytes, str] = {}

    def _insert(self, new: StoredCredential, fingerprint: bytes, *, retire_active: bool,
                now: float) -> Credential | None:
        c = new.credential
        key = (c.tenant_id, c.endpoint, c.kind)
        current = self._active.get(key)
        if retire_active and current is None:
            raise UnknownCredentialError(
                f"endpoint {c.endpoint!r} of tenant {c.tenant_id!r} has no active {c.kind.value} credential")
        if not retire_active and current is not None:
            raise CredentialConflictError(
                f"endpoint {c.endpoint!r} of tenant {c.tenant_id!r} already has an active {c.kind.value} "
                "credential (replace it to rekey)")
        if c.identity in self._stored:
            raise CredentialConflictError(f"PSK identity {c.identity!r} is already in use")
        if fingerprint in self._fingerprints:
            raise PskReuseError("this PSK has already been issued; a key is never used twice")
        retired = None
        if current is not None:
            retired = replace(self._stored[current].credential, revoked=True, revoked_at=now)
            self._stored[current] = StoredCredential(retired, None)
        self._stored[c.identity] = new
        self._active[key] = c.identity
        self._fingerprints[fingerprint] = c.identity
        return retired

    def _revoke(self, tenant_id: str, endpoint: str, kind: CredentialKind | None,
                now: float) -> builtins.list[Credential]:
        revoked = []
        for key in [k for k in self._active if k[:2] == (tenant_id, endpoint) and kind in (None, k[2])]:
            identity = self._active.pop(key)
            credential = replace(self._stored[identity].credential, revoked=True, revoked_at=now)
            self._stored[identity] = StoredCredential(credential, None)
            revoked.append(credential)
        return revoked

    def _select(self, tenant_id: str | None, endpoint: str | None, kind: CredentialKind | None,
                include_revoked: bool) -> builtins.list[Credential]:
        return [
            c for c in (s.credential for s in self._stored.values())
            if (tenant_id is None or c.tenant_id == tenant_id) and (endpoint is None or c.endpoint == endpoint)
            and (kind is None or c.kind is kind) and (include_revoked or not c.revoked)
        ]

    def _row(self, identity: str) -> StoredCredential | None:
        return self._stored.get(identity)

    def _rows(self) -> builtins.list[StoredCredential]:
        return builtins.list(self._stored.values())

    def _revoked_rows(self, since: float) -> builtins.list[Credential]:
        return [s.credential for s in self._stored.values()
                if s.credential.revoked_at is not None and s.credential.revoked_at >= since]
