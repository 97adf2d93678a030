"""One device's client-initiated bootstrap, sans I/O: which request comes next and what each answer means.

:class:`BootstrapSequence` is a small state machine: :meth:`~BootstrapSequence.first` gives the first request,
:meth:`~BootstrapSequence.handle` takes the device's answer (CoAP code, payload, content format) and gives the
next request or the :class:`BootstrapOutcome`. It does no I/O and reads no clock; the server's shell
(:mod:`bootstrap.server`) sends the requests over the device's DTLS session.

The steps (LwM2M 1.1 Core §5.2.7 and §6.1.7), and how a 4.xx from the device is taken:

==========================  ==================  =====================================================================
step                        request             on an error answer
==========================  ==================  =====================================================================
Bootstrap-Discover          GET / (Accept 40)   go on without it (LwM2M 1.0 clients may not support it): the
                                                bootstrap account is taken to be /0/0
Bootstrap-Delete /0         DELETE /0           try DELETE / instead; if that fails too, go on (the writes replace
                                                what they target, and Finish tells whether the result is usable)
Bootstrap-Delete /1         DELETE /1           go on (same reason)
Bootstrap-Write /0/b        PUT /0/b            go on: some clients refuse to rewrite their bootstrap account
Bootstrap-Write /0/s        PUT /0/s            fail: the device did not take its server account
Bootstrap-Write /1/i        PUT /1/i            fail: the device did not take its server settings
Bootstrap-Read /1           GET /1              go on (no Bootstrap-Read before LwM2M 1.1); a 2.05 without the
                                                Short Server ID or lifetime written fails
Bootstrap-Finish            POST /bs            2.04 is success; 4.06 (configuration not acceptable) and anything
                                                else fail
==========================  ==================  =====================================================================

Invariants: a sequence ends exactly once (success or failure) and never sends a request after its outcome; the
PSKs it writes appear only in request payloads, never in a ``repr``, a note or an outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import CodecError, Lwm2mError, NotAcceptableError
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import Instance, Node, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath

__all__ = [
    "WRITE_FORMATS",
    "BootstrapOutcome",
    "BootstrapRequest",
    "BootstrapSequence",
    "DeviceConfig",
    "Step",
    "bootstrap_pack",
    "pack_format",
    "parse_discover",
    "write_format",
]

SECURITY, SERVER = 0, 1
SECURITY_MODE_PSK = 0
WRITE_FORMATS = (ContentFormat.TLV, ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.LWM2M_CBOR)
PACK_FORMATS = (ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.LWM2M_CBOR)
_CONTENT, _DELETED, _CHANGED = 0x45, 0x42, 0x44


class Step(Enum):
    DISCOVER = "discover"
    DELETE_SECURITY = "delete /0"
    DELETE_ALL = "delete /"
    DELETE_SERVER = "delete /1"
    WRITE_BOOTSTRAP_ACCOUNT = "write bootstrap account"
    WRITE_SERVER_ACCOUNT = "write server account"
    WRITE_SERVER = "write server object"
    READ_SERVER = "read /1"
    FINISH = "finish"


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """What one device is given: its bootstrap account (kept) and one LwM2M server account with PSK security."""

    bootstrap_uri: str
    bootstrap_identity: str
    bootstrap_psk: bytes = field(repr=False)
    server_uri: str
    server_identity: str
    server_psk: bytes = field(repr=False)
    short_server_id: int = 1
    lifetime: int = 300
    binding: str = "U"
    notification_storing: bool = True

    def instances(self, bootstrap_iid: int, account_iid: int, server_iid: int) -> dict[LwM2mPath, Instance]:
        """The three instances written, by path: bootstrap account, server account, server object."""

        def r(rid: int, rtype: ResourceType, value: object) -> SingleResource:
            return SingleResource(rid, rtype, value)  # type: ignore[arg-type]

        bootstrap = Instance.of(bootstrap_iid, (
            r(0, ResourceType.STRING, self.bootstrap_uri), r(1, ResourceType.BOOLEAN, True),
            r(2, ResourceType.INTEGER, SECURITY_MODE_PSK), r(3, ResourceType.OPAQUE, self.bootstrap_identity.encode()),
            r(4, ResourceType.OPAQUE, b""), r(5, ResourceType.OPAQUE, bytes(self.bootstrap_psk)),
        ))
        account = Instance.of(account_iid, (
            r(0, ResourceType.STRING, self.server_uri), r(1, ResourceType.BOOLEAN, False),
            r(2, ResourceType.INTEGER, SECURITY_MODE_PSK), r(3, ResourceType.OPAQUE, self.server_identity.encode()),
            r(4, ResourceType.OPAQUE, b""), r(5, ResourceType.OPAQUE, bytes(self.server_psk)),
            r(10, ResourceType.INTEGER, self.short_server_id),
        ))
        server = Instance.of(server_iid, (
            r(0, ResourceType.INTEGER, self.short_server_id), r(1, ResourceType.INTEGER, self.lifetime),
            r(6, ResourceType.BOOLEAN, self.notification_storing), r(7, ResourceType.STRING, self.binding),
        ))
        return {LwM2mPath.of(SECURITY, bootstrap_iid): bootstrap, LwM2mPath.of(SECURITY, account_iid): account,
                LwM2mPath.of(SERVER, server_iid): server}


@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    """One request to the device. ``path`` None means the bootstrap interface itself (Finish: POST /bs)."""

    step: Step
    method: str  # GET, PUT, DELETE, POST
    path: LwM2mPath | None
    payload: bytes = field(default=b"", repr=False)
    content_format: int | None = None
    accept: int | None = None

    @property
    def uri_path(self) -> tuple[str, ...]:
        return ("bs",) if self.path is None else self.path.segments


@dataclass(frozen=True, slots=True)
class BootstrapOutcome:
    """How a sequence ended: ``step`` and ``code`` are those of the failing answer (None on success or when no
    answer came); ``notes`` list the steps the device refused without making the bootstrap fail."""

    success: bool
    step: Step | None = None
    code: str | None = None
    reason: str = ""
    notes: tuple[str, ...] = ()
    lwm2m_version: str | None = None


def write_format(preferred: int | None) -> ContentFormat:
    """The format of the Bootstrap-Writes: the device's preferred one (``pct``) when we write it, else TLV."""
    if preferred is not None:
        for fmt in WRITE_FORMATS:
            if int(fmt) == preferred:
                return fmt
    return ContentFormat.TLV


def pack_format(accept: int | None) -> ContentFormat:
    """The format of a Bootstrap-Pack: the one asked for (SenML CBOR, SenML JSON or LwM2M CBOR), SenML CBOR when
    the device did not ask; :class:`NotAcceptableError` (4.06) for any other."""
    if accept is None:
        return ContentFormat.SENML_CBOR
    for fmt in PACK_FORMATS:
        if int(fmt) == accept:
            return fmt
    raise NotAcceptableError(f"a bootstrap pack is SenML CBOR, SenML JSON or LwM2M CBOR, not {accept}")


def bootstrap_pack(config: DeviceConfig, fmt: ContentFormat, model: ObjectModel) -> bytes:
    """The Bootstrap-Pack (LwM2M 1.2 §6.1.7.2) of ``config``: every resource of /0/0 (bootstrap account), /0/1
    (server account) and /1/0, as one composite in ``fmt``."""
    nodes: Mapping[LwM2mPath, Node] = config.instances(0, 1, 0)
    return registry.encode_composite(nodes, fmt, model)


def _code(code: int) -> str:
    return f"{code >> 5}.{code & 0x1F:02d}"


def parse_discover(payload: bytes) -> tuple[str | None, list[int], dict[int, int]]:
    """From a Bootstrap-Discover answer: the LwM2M version, the /0 instances without ``ssid`` (bootstrap accounts)
    and the Short Server ID of each other /0 instance. Tolerates the 1.1 form that opens with a bare
    ``lwm2m="1.1"`` entry as well as ``</>;lwm2m=1.1``."""
    text = payload.decode("utf-8", "strict").strip()
    version = None
    if text.startswith("lwm2m="):
        head, _, text = text.partition(",")
        version = head.split("=", 1)[1].strip('"')
    links = link_format.parse_links(text) if text else ()
    bootstrap: list[int] = []
    servers: dict[int, int] = {}
    for link in links:
        if link.target == "/" and link.get("lwm2m"):
            version = link.get("lwm2m")
            continue
        try:
            path = LwM2mPath.parse(link.target)
        except Lwm2mError:
            continue
        if path.is_object_instance and path.ids[0] == SECURITY:
            ssid = link.get("ssid")
            if ssid is None:
                bootstrap.append(path.ids[1])
            elif ssid.isdigit():
                servers[path.ids[1]] = int(ssid)
    return version, bootstrap, servers


class BootstrapSequence:
    """The bootstrap of one device: Discover, Delete /0 and /1, Write the accounts and /1, Read /1, Finish."""

    def __init__(self, config: DeviceConfig, model: ObjectModel, *, content_format: int | None = None) -> None:
        self.config = config
        self.model = model
        self.format = write_format(content_format)
        self.lwm2m_version: str | None = None
        self.bootstrap_iid = 0
        self.account_iid = 1
        self.server_iid = 0
        self._notes: list[str] = []
        self._current: BootstrapRequest | None = None
        self._outcome: BootstrapOutcome | None = None

    @property
    def outcome(self) -> BootstrapOutcome | None:
        return self._outcome

    def first(self) -> BootstrapRequest:
        return self._send(BootstrapRequest(Step.DISCOVER, "GET", LwM2mPath.of(), accept=int(ContentFormat.LINK)))

    def handle(self, code: int, payload: bytes = b"",
               content_format: int | None = None) -> BootstrapRequest | BootstrapOutcome:
        """The device's answer to the current request: the next request, or the outcome."""
        current = self._current
        if current is None or self._outcome is not None:
            raise RuntimeError("this bootstrap sequence is not waiting for an answer")
        ok = code >> 5 == 2
        step = current.step
        if step is Step.DISCOVER:
            if ok:
                self._discovered(payload)
            else:
                self._note(step, code)
            return self._send(BootstrapRequest(Step.DELETE_SECURITY, "DELETE", LwM2mPath.of(SECURITY)))
        if step is Step.DELETE_SECURITY:
            if ok:
                return self._send(BootstrapRequest(Step.DELETE_SERVER, "DELETE", LwM2mPath.of(SERVER)))
            self._note(step, code)
            return self._send(BootstrapRequest(Step.DELETE_ALL, "DELETE", LwM2mPath.of()))
        if step is Step.DELETE_ALL:
            if ok:  # "/" took the /1 instances along
                return self._write(Step.WRITE_BOOTSTRAP_ACCOUNT)
            self._note(step, code)
            return self._send(BootstrapRequest(Step.DELETE_SERVER, "DELETE", LwM2mPath.of(SERVER)))
        if step is Step.DELETE_SERVER:
            if not ok:
                self._note(step, code)
            return self._write(Step.WRITE_BOOTSTRAP_ACCOUNT)
        if step is Step.WRITE_BOOTSTRAP_ACCOUNT:
            if not ok:
                self._note(step, code)
            return self._write(Step.WRITE_SERVER_ACCOUNT)
        if step is Step.WRITE_SERVER_ACCOUNT:
            return self._write(Step.WRITE_SERVER) if ok else self._fail(step, code, "the device refused its server "
                                                                                   "account")
        if step is Step.WRITE_SERVER:
            if not ok:
                return self._fail(step, code, "the device refused its server settings (/1)")
            return self._send(BootstrapRequest(Step.READ_SERVER, "GET", LwM2mPath.of(SERVER),
                                               accept=int(self.format)))
        if step is Step.READ_SERVER:
            if ok:
                problem = self._check_read(payload, content_format)
                if problem:
                    return self._fail(step, code, problem)
            else:
                self._note(step, code)
            return self._send(BootstrapRequest(Step.FINISH, "POST", None))
        assert step is Step.FINISH
        if code == _CHANGED:
            self._current = None
            self._outcome = BootstrapOutcome(True, notes=tuple(self._notes), lwm2m_version=self.lwm2m_version)
            return self._outcome
        why = "the device found its configuration not acceptable" if code == 0x86 else "Bootstrap-Finish failed"
        return self._fail(step, code, why)

    def failed(self, reason: str) -> BootstrapOutcome:
        """End the sequence without an answer (timeout, lost session, cancelled)."""
        step = self._current.step if self._current is not None else None
        self._current = None
        self._outcome = BootstrapOutcome(False, step, None, reason, tuple(self._notes), self.lwm2m_version)
        return self._outcome

    # ------------------------------------------------------------------ internals

    def _send(self, request: BootstrapRequest) -> BootstrapRequest:
        self._current = request
        return request

    def _note(self, step: Step, code: int) -> None:
        self._notes.append(f"{step.value}: {_code(code)}")

    def _fail(self, step: Step, code: int, reason: str) -> BootstrapOutcome:
        self._current = None
        self._outcome = BootstrapOutcome(False, step, _code(code), reason, tuple(self._notes), self.lwm2m_version)
        return self._outcome

    def _discovered(self, payload: bytes) -> None:
        try:
            version, bootstrap, _servers = parse_discover(payload)
        except (CodecError, UnicodeDecodeError):
            self._notes.append("discover: unreadable link format")
            return
        self.lwm2m_version = version
        if len(bootstrap) == 1:
            self.bootstrap_iid = bootstrap[0]
        self.account_iid = 1 if self.bootstrap_iid != 1 else 0

    def _write(self, step: Step) -> BootstrapRequest:
        instances = self.config.instances(self.bootstrap_iid, self.account_iid, self.server_iid)
        path = {
            Step.WRITE_BOOTSTRAP_ACCOUNT: LwM2mPath.of(SECURITY, self.bootstrap_iid),
            Step.WRITE_SERVER_ACCOUNT: LwM2mPath.of(SECURITY, self.account_iid),
            Step.WRITE_SERVER: LwM2mPath.of(SERVER, self.server_iid),
        }[step]
        payload = registry.encode(instances[path], path, self.format, self.model)
        return self._send(BootstrapRequest(step, "PUT", path, payload, content_format=int(self.format)))

    def _check_read(self, payload: bytes, content_format: int | None) -> str:
        """'' when the /1 read back holds our instance with its Short Server ID and lifetime, else why not."""
        try:
            fmt = ContentFormat.of(content_format if content_format is not None else int(ContentFormat.TLV))
            node = registry.decode(payload, fmt, LwM2mPath.of(SERVER), self.model)
        except Lwm2mError as e:
            self._notes.append(f"read /1: undecodable answer ({type(e).__name__})")
            return ""
        instances = getattr(node, "instances", {})
        for inst in instances.values():
            ssid = inst.resources.get(0)
            lifetime = inst.resources.get(1)
            if (isinstance(ssid, SingleResource) and ssid.value == self.config.short_server_id
                    and isinstance(lifetime, SingleResource) and lifetime.value == self.config.lifetime):
                return ""
        return "the server object read back does not hold what was written"
