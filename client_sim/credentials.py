"""Factory credentials of simulated devices: the manufacturing file ``scratch factory provision`` writes.

The file is CSV (a header row ``endpoint,psk_identity,psk_key,bootstrap_uri``) or JSON (a list of objects with those
fields); the extension decides (``.csv``, ``.json``), otherwise the content does (JSON starts with ``[``).

Invariants: every record has a non-empty endpoint (unique in the file), a PSK identity of 1..32 bytes (tinydtls'
limit), a key of 1..16 bytes given as hex (tinydtls copies at most 16 bytes) and a ``coaps://HOST[:PORT]``
bootstrap URI. No ``repr``, ``str`` or error message ever carries a key or its hex text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lwm2m_server.coap.dtls import MAX_IDENTITY_LENGTH, MAX_PSK_LENGTH

FIELDS = ("endpoint", "psk_identity", "psk_key", "bootstrap_uri")
MAX_FILE_SIZE = 64 << 20


class CredentialsFileError(ValueError):
    """The manufacturing file cannot be read or one of its records is unusable (the message names the record and
    the field, never a key)."""


@dataclass(frozen=True, slots=True)
class FactoryCredentials:
    """What a device leaves the factory with: its endpoint name and the PSK for its bootstrap server."""

    endpoint: str
    psk_identity: str
    psk_key: bytes = field(repr=False)
    bootstrap_uri: str

    def __post_init__(self) -> None:
        problem = _problem(self.endpoint, self.psk_identity, self.psk_key, self.bootstrap_uri)
        if problem:
            raise CredentialsFileError(problem)

    @property
    def identity(self) -> bytes:
        """The PSK identity as the DTLS handshake sends it."""
        return self.psk_identity.encode("utf-8")


def _problem(endpoint: str, identity: str, key: bytes, uri: str) -> str:
    if not isinstance(endpoint, str) or not endpoint or not endpoint.isprintable() or "&" in endpoint:
        return "endpoint: must be a non-empty printable name without '&'"
    if not isinstance(identity, str) or not 1 <= len(identity.encode("utf-8")) <= MAX_IDENTITY_LENGTH:
        return f"psk_identity: must be 1..{MAX_IDENTITY_LENGTH} bytes"
    if not isinstance(key, bytes) or not 1 <= len(key) <= MAX_PSK_LENGTH:
        return f"psk_key: must be 1..{MAX_PSK_LENGTH} bytes (tinydtls' limit)"
    return _uri_problem(uri)


def _uri_problem(uri: str) -> str:
    if not isinstance(uri, str):
        return "bootstrap_uri: must be a string"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return "bootstrap_uri: not a valid URI"
    if parts.scheme != "coaps" or not parts.hostname:
        return "bootstrap_uri: must be coaps://HOST[:PORT]"
    if parts.path not in ("", "/") or parts.query or parts.fragment or port == 0:
        return "bootstrap_uri: must be coaps://HOST[:PORT] without a path or query"
    return ""


def parse_record(record: Mapping[str, object], where: str = "record") -> FactoryCredentials:
    """One record (a CSV row or JSON object) as credentials; :class:`CredentialsFileError` names what is wrong."""
    if not isinstance(record, Mapping):
        raise CredentialsFileError(f"{where}: not an object with the fields {', '.join(FIELDS)}")
    missing = [name for name in FIELDS if not isinstance(record.get(name), str) or not record.get(name)]
    if missing:
        raise CredentialsFileError(f"{where}: missing or empty field(s) {', '.join(missing)}")
    values = {name: str(record[name]).strip() for name in FIELDS}
    try:
        key = bytes.fromhex(values["psk_key"])
    except ValueError:
        raise CredentialsFileError(f"{where}: psk_key is not hex") from None
    try:
        return FactoryCredentials(values["endpoint"], values["psk_identity"], key, values["bootstrap_uri"])
    except CredentialsFileError as e:
        raise CredentialsFileError(f"{where}: {e}") from None


def parse_records(records: Iterable[Mapping[str, object]], source: str = "records") -> list[FactoryCredentials]:
    """Validate records; endpoints and identities must be unique."""
    out: list[FactoryCredentials] = []
    endpoints: set[str] = set()
    identities: set[str] = set()
    for number, record in enumerate(records, 1):
        creds = parse_record(record, f"{source}: record {number}")
        if creds.endpoint in endpoints:
            raise CredentialsFileError(f"{source}: record {number}: endpoint {creds.endpoint!r} appears twice")
        if creds.psk_identity in identities:
            raise CredentialsFileError(f"{source}: record {number}: psk_identity appears twice")
        endpoints.add(creds.endpoint)
        identities.add(creds.psk_identity)
        out.append(creds)
    return out


def parse_text(text: str, *, fmt: str | None = None, source: str = "credentials") -> list[FactoryCredentials]:
    """Records from the text of a manufacturing file; ``fmt`` is ``csv``, ``json`` or None (decided by the text)."""
    if fmt is None:
        fmt = "json" if text.lstrip().startswith(("[", "{")) else "csv"
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CredentialsFileError(f"{source}: not JSON (line {e.lineno}, column {e.colno})") from None
        if isinstance(data, Mapping) and isinstance(data.get("devices"), list):
            data = data["devices"]
        if not isinstance(data, list):
            raise CredentialsFileError(f"{source}: JSON must be a list of records")
        return parse_records(data, source)
    if fmt != "csv":
        raise ValueError(f"unknown format {fmt!r}: csv or json")
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(name.strip() for name in reader.fieldnames or ())
    missing = [name for name in FIELDS if name not in header]
    if missing:
        raise CredentialsFileError(f"{source}: the CSV header lacks {', '.join(missing)}")
    reader.fieldnames = list(header)
    rows: list[Mapping[str, object]] = []
    for row in reader:
        if None in row:
            raise CredentialsFileError(f"{source}: line {reader.line_num}: more fields than the header names")
        if any((v or "").strip() for v in row.values()):
            rows.append(row)
    return parse_records(rows, source)


def load_factory_file(path: Path | str) -> list[FactoryCredentials]:
    """Read a manufacturing file (CSV or JSON; see the module docstring)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_SIZE:
            raise CredentialsFileError(f"{path}: larger than {MAX_FILE_SIZE} bytes")
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise CredentialsFileError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CredentialsFileError(f"{path}: not UTF-8 text") from None
    suffix = path.suffix.lower()
    fmt = {".csv": "csv", ".json": "json"}.get(suffix)
    return parse_text(text, fmt=fmt, source=str(path))


__all__ = ["FIELDS", "CredentialsFileError", "FactoryCredentials", "load_factory_file", "parse_records", "parse_text"]
