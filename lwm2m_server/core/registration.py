"""The Registration interface, sans I/O: parsing of Register and Update requests and the Registration record.

Invariants: a :class:`Registration` is immutable; ``lifetime`` is in 1..2**32-1 seconds; ``endpoint`` is a
non-empty printable string of at most 255 UTF-8 bytes; times (``registered_at``, ``updated_at``) are whatever
clock the caller passes as ``now`` (seconds), this module never reads one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.codec.link import Link, parse_links
from lwm2m_server.core.errors import CoapCode, CodecError, RegistrationError
from lwm2m_server.core.paths import LwM2mPath

SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")
DEFAULT_LIFETIME = 86400
MAX_LIFETIME = 2**32 - 1
MAX_ENDPOINT_BYTES = 255
MAX_LINKS_BYTES = 16384
BINDING_LETTERS = frozenset("UTSNQ")  # Q only meaningful in LwM2M 1.0 bindings (UQ, SQ, UQS)


class UnsupportedVersionError(RegistrationError):
    """The client speaks an LwM2M version we do not (4.12 per LwM2M Core, Register)."""

    coap_code = CoapCode.PRECONDITION_FAILED


@dataclass(frozen=True, slots=True)
class RegisterParams:
    """What a Register request (POST /rd?ep=...) carries, validated."""

    endpoint: str
    lifetime: int = DEFAULT_LIFETIME
    lwm2m_version: str = "1.0"
    binding: str = "U"
    queue_mode: bool = False
    sms: str | None = None
    extra: tuple[tuple[str, str | None], ...] = ()
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class UpdateParams:
    """What an Update request (POST /rd/{id}) carries; ``None`` means 'unchanged'."""

    lifetime: int | None = None
    binding: str | None = None
    sms: str | None = None
    queue_mode: bool | None = None
    links: tuple[Link, ...] | None = None


def _split_query(query: Iterable[str]) -> list[tuple[str, str | None]]:
    out = []
    for item in query:
        key, sep, value = item.partition("=")
        if not key:
            raise RegistrationError(f"empty query parameter name in {item!r}")
        out.append((key, value if sep else None))
    return out


def _parse_lifetime(value: str | None) -> int:
    if value is None or not value.isdigit() or not value.isascii():
        raise RegistrationError(f"lt must be a positive integer, got {value!r}")
    lt = int(value)
    if not 0 < lt <= MAX_LIFETIME:
        raise RegistrationError(f"lt {lt} out of range 1..{MAX_LIFETIME}")
    return lt


def _parse_binding(value: str | None) -> str:
    if not value or not set(value) <= BINDING_LETTERS or len(set(value)) != len(value):
        raise RegistrationError(f"invalid binding mode b={value!r}")
    return value


class PayloadTooLargeError(RegistrationError):
    coap_code = CoapCode.REQUEST_ENTITY_TOO_LARGE


_SEEN_LINKS: dict[bytes, tuple[Link, ...]] = {}
SEEN_LINKS_MAX = 256  # distinct payloads remembered (a fleet registers with a handful)
SEEN_LINK_BYTES_MAX = 2048  # longer payloads are parsed every time (the memo stays under 0.5 MiB)


def _parse_links(payload: bytes) -> tuple[Link, ...]:
    """The links of a Register or Update payload. A fleet sends the same few payloads again and again: each short
    one is parsed once and its (immutable) tuple shared by every registration that sent it, which saves the parse
    and a few hundred bytes per registration. The memo is bounded (oldest payload out first)."""
    payload = bytes(payload)
    found = _SEEN_LINKS.get(payload)
    if found is not None:
        return found
    if len(payload) > MAX_LINKS_BYTES:
        raise PayloadTooLargeError(f"object links payload over {MAX_LINKS_BYTES} bytes")
    try:
        links = parse_links(payload.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RegistrationError("object links payload is not UTF-8") from e
    except CodecError as e:
        raise RegistrationError(f"bad object links: {e}") from e
    if len(payload) <= SEEN_LINK_BYTES_MAX:
        if len(_SEEN_LINKS) >= SEEN_LINKS_MAX:
            del _SEEN_LINKS[next(iter(_SEEN_LINKS))]
        _SEEN_LINKS[payload] = links
    return links


def parse_register(query: Iterable[str], payload: bytes) -> RegisterParams:
    """Validate a Register request: Uri-Query items (``ep=...``) and the link-format payload."""
    endpoint: str | None = None
    lifetime, version, binding, sms, queue = DEFAULT_LIFETIME, "1.0", "U", None, False
    extra: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for key, value in _split_query(query):
        if key in seen and key in ("ep", "lt", "lwm2m", "b", "sms", "Q"):
            raise RegistrationError(f"query parameter {key!r} given twice")
        seen.add(key)
        if key == "ep":
            if not value or len(value.encode()) > MAX_ENDPOINT_BYTES or not value.isprintable():
                raise RegistrationError("ep must be a printable name of 1 to 255 bytes")
            endpoint = value
        elif key == "lt":
            lifetime = _parse_lifetime(value)
        elif key == "lwm2m":
            if value not in SUPPORTED_VERSIONS:
                supported = ", ".join(SUPPORTED_VERSIONS)
                raise UnsupportedVersionError(f"LwM2M version {value!r} not supported ({supported})")
            version = value
        elif key == "b":
            binding = _parse_binding(value)
        elif key == "sms":
            sms = value
        elif key == "Q":
            if value is not None:
                raise RegistrationError("Q takes no value")
            queue = True
        else:
            extra.append((key, value))
    if endpoint is None:
        raise RegistrationError("ep (endpoint client name) is mandatory")
    if "Q" in binding:
        queue = True
        binding = binding.replace("Q", "")
        if not binding:
            raise RegistrationError("binding 'Q' needs a transport letter")
    return RegisterParams(endpoint, lifetime, version, binding, queue, sms, tuple(extra), _parse_links(payload))


def parse_update(query: Iterable[str], payload: bytes) -> UpdateParams:
    """Validate an Update request: optional lt, b, sms, Q and an optional new link-format payload."""
    lifetime = binding = sms = None
    queue: bool | None = None
    for key, value in _split_query(query):
        if key == "lt":
            lifetime = _parse_lifetime(value)
        elif key == "b":
            binding = _parse_binding(value)
        elif key == "sms":
            sms = value
        elif key == "Q":
            queue = True
        else:
            raise RegistrationError(f"query parameter {key!r} is not allowed in an Update")
    if binding is not None and "Q" in binding:
        queue, binding = True, binding.replace("Q", "") or None
    links = _parse_links(payload) if payload else None
    return UpdateParams(lifetime, binding, sms, queue, links)


DEFAULT_FORMATS: Mapping[str, frozenset[int]] = {
    "1.0": frozenset({ContentFormat.TLV, ContentFormat.TEXT, ContentFormat.OPAQUE}),
    "1.1": frozenset({ContentFormat.TLV, ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.SENML_CBOR,
                      ContentFormat.SENML_JSON}),
    "1.2": frozenset({ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.SENML_CBOR}),
}


@dataclass(frozen=True, slots=True)
class ObjectsSummary:
    """What the object links say: the alternate root path, content formats and the objects/instances/versions."""

    root_path: str
    formats: frozenset[int]
    instances: tuple[LwM2mPath, ...]  # /O and /O/I paths announced
    versions: Mapping[int, str]  # object id -> announced object version


def summarize_links(links: Iterable[Link], lwm2m_version: str) -> ObjectsSummary:
    root = "/"
    formats: frozenset[int] | None = None
    instances: list[LwM2mPath] = []
    versions: dict[int, str] = {}
    for link in links:
        if link.get("rt") == "oma.lwm2m":
            root = link.target if link.target.endswith("/") else link.target + "/"
            ct = link.get("ct")
            if ct:
                try:
                    formats = frozenset(int(c) for c in ct.split())
                except ValueError:
                    raise RegistrationError(f"invalid ct attribute {ct!r}") from None
            continue
        target = link.target
        if root != "/" and target.startswith(root):
            target = "/" + target[len(root):]
        try:
            path = LwM2mPath.parse(target)
        except ValueError:
            continue  # links that are not LwM2M paths are tolerated and ignored
        if path.depth in (1, 2):
            instances.append(path)
            ver = link.get("ver")
            if ver and path.object_id is not None:
                versions[path.object_id] = ver
    if formats is None:
        formats = DEFAULT_FORMATS.get(lwm2m_version, DEFAULT_FORMATS["1.0"])
    return ObjectsSummary(root, formats, tuple(instances), versions)


@dataclass(frozen=True, slots=True)
class Registration:
    """One device's registration, as the registry keeps it.

    ``remote`` is the transport's live handle for the device's address and session: downlink requests go to it.
    It is never persisted and never rebuilt from ``address`` (which is for display only).
    """

    id: str
    endpoint: str
    lifetime: int
    lwm2m_version: str
    binding: str
    queue_mode: bool
    links: tuple[Link, ...]
    address: str
    registered_at: float
    updated_at: float
    sms: str | None = None
    extra: tuple[tuple[str, str | None], ...] = ()
    tenant_id: str = "default"
    node_id: str = ""
    parent_id: str | None = None  # the gateway's registration id for a device behind an edge gateway
    path_prefix: str = ""
    secure: bool = False
    identity: str | None = None  # the credential identity the device registered with (DTLS), if any
    remote: object = field(default=None, compare=False, repr=False)
    _summary: ObjectsSummary | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, reg_id: str, params: RegisterParams, *, address: str, now: float, remote: object = None,
               secure: bool = False, identity: str | None = None, tenant_id: str = "default",
               node_id: str = "") -> Registration:
        return cls(reg_id, params.endpoint, params.lifetime, params.lwm2m_version, params.binding, params.queue_mode,
                   params.links, address, now, now, params.sms, params.extra, tenant_id, node_id, secure=secure,
                   identity=identity, remote=remote)

    def updated(self, params: UpdateParams, *, address: str, now: float, remote: object = None) -> Registration:
        return replace(
            self,
            lifetime=params.lifetime if params.lifetime is not None else self.lifetime,
            binding=params.binding if params.binding is not None else self.binding,
            sms=params.sms if params.sms is not None else self.sms,
            queue_mode=params.queue_mode if params.queue_mode is not None else self.queue_mode,
            links=params.links if params.links is not None else self.links,
            address=address,
            updated_at=now,
            remote=remote if remote is not None else self.remote,
            _summary=None if params.links is not None else self._summary,
        )

    def expires_at(self, grace: float = 0.0) -> float:
        return self.updated_at + self.lifetime + grace

    def is_expired(self, now: float, grace: float = 0.0) -> bool:
        return now > self.expires_at(grace)

    @property
    def summary(self) -> ObjectsSummary:
        s = self._summary
        if s is None:
            s = summarize_links(self.links, self.lwm2m_version)
            object.__setattr__(self, "_summary", s)
        return s

    @property
    def root_path(self) -> str:
        return self.summary.root_path

    @property
    def supported_formats(self) -> frozenset[int]:
        return self.summary.formats

    def supports_object(self, object_id: int) -> bool:
        return any(p.object_id == object_id for p in self.summary.instances)

    def preferred_format(self, candidates: Iterable[ContentFormat]) -> ContentFormat | None:
        """The first of ``candidates`` this client announced (or supports by default for its version)."""
        for c in candidates:
            if c in self.supported_formats:
                return c
        return None
