"""A simulated device's firmware: Object 5 driven by the pure state machine, two image slots, SUIT checks.

The device receives a package by push (block-wise Write of /5/0/0, written block by block into the inactive slot)
or by pull (block-wise GET of the Package URI from its own socket), verifies the SUIT envelope against its trust
anchors before it reports Downloaded, installs on Update by booting the inactive slot, runs a health check and
either confirms the new image or rolls back to the previous slot by itself (Update Result 8, old version running).
A pull that breaks keeps the blocks it has and the package's ETag, and resumes from there on the next Package URI
whose first answered block carries the same ETag. Faults (:class:`Faults`) make it misbehave on purpose.
A device with ``components`` (:mod:`client_sim.components`) also takes system envelopes: it stages the complete new
set of components with the inactive slot, and the boot commits or rolls back the whole set with it (Object 32700).

Invariants: the active slot always holds an image that passed its health check; State and Update Result change only
through :class:`~firmware_object.update_state.FirmwareUpdate`; every change of /5/0/3, /5/0/5 and /5/0/7 is
announced to observers; a fault option fires once, so a retried update can succeed; the Object 5 state survives
an outage or a power loss (the device is taken to persist it), a partial pull survives a failed download.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from aiocoap import Message
from aiocoap import error as coap_error
from aiocoap.credentials import CredentialsMissingError
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import BlockOption

from client_sim.components import ComponentSystem, InstalledComponent, check_components
from client_sim.errors import BadValueError
from client_sim.network import LinkConditions
from client_sim.package_stream import PackageStream, package_stream
from firmware_object.errors import FirmwareError, PackageTooLargeError, State, UpdateResult
from firmware_object.suit.components import VerifiedSystem, is_system_envelope, verify_system_envelope
from firmware_object.suit.keys import PublicKey
from firmware_object.suit.verify import VerifiedEnvelope, check_image, verify_envelope
from firmware_object.update_state import (
    AbortDownload,
    CancelDeferredUpdate,
    CancelExecuted,
    DeferralExpired,
    DiscardPackage,
    DownloadCompleted,
    DownloadFailed,
    Effect,
    Event,
    FirmwareUpdate,
    PackageCleared,
    PackageWriteStarted,
    PackageWritten,
    ScheduleDeferredUpdate,
    StartDownload,
    StartUpdate,
    UpdateExecuted,
    UpdateFailed,
    UpdateSucceeded,
    UriCleared,
    UriWritten,
)
from lwm2m_server.core.errors import CoapCode, CodecError, Lwm2mError
from lwm2m_server.core.model.firmware_component import FIRMWARE_COMPONENT_ID
from lwm2m_server.core.nodes import Value
from lwm2m_server.core.paths import LwM2mPath

if TYPE_CHECKING:
    from client_sim.device import SimulatedDevice
    from client_sim.objects import ObjectTree

log = logging.getLogger(__name__)
_warned_accept_any = False  # the warning is given once per process, not once per device

FIRMWARE = LwM2mPath.of(5, 0)
PACKAGE = FIRMWARE.child(0)
PACKAGE_URI = FIRMWARE.child(1)
PROTOCOLS = FIRMWARE.child(8)
PROTOCOL_NUMBERS = {"coap": 0, "coaps": 1, "http": 2, "https": 3, "coap+tcp": 4, "coaps+tcp": 5}
UPDATE = FIRMWARE.child(2)
STATE = FIRMWARE.child(3)
RESULT = FIRMWARE.child(5)
PKG_NAME = FIRMWARE.child(6)
PKG_VERSION = FIRMWARE.child(7)
CANCEL = FIRMWARE.child(10)
SEVERITY = FIRMWARE.child(11)
LAST_STATE_CHANGE = FIRMWARE.child(12)
MAX_DEFER = FIRMWARE.child(13)
FIRMWARE_VERSION = LwM2mPath.of(3, 0, 3)

NO_TRUST_ANCHOR = ("a SUIT device needs a trust anchor (a public key every package must be signed with); "
                   "accepting any package, unsigned included, must be asked for explicitly (lab work only)")
MAX_BLOCK_RETRIES = 2  # a block asked again after CoAP gave up on it (every retransmission lost)
POWER_FAILS_AFTER = 0.02  # seconds after the Execute of /5/0/2 (its answer has left) until the power fails


class TransferLostError(FirmwareError):
    """The download broke beyond the device's retries."""

    update_result = UpdateResult.CONNECTION_LOST


class PackageNotFoundError(FirmwareError):
    """The Package URI leads nowhere (4.04)."""

    update_result = UpdateResult.INVALID_URI


class PackageSizeError(FirmwareError):
    """A pulled package that does not have the size its server declared (Size2): a server that keeps sending
    past it is cut off there."""

    update_result = UpdateResult.INTEGRITY_CHECK_FAILURE


class PackageFormatError(FirmwareError):
    """A Package write whose body is not one opaque value in its Content-Format."""

    update_result = UpdateResult.UNSUPPORTED_PACKAGE_TYPE


class DeviceFirmwareError(Lwm2mError):
    """A firmware request the device answers with an error code (4.05 for a refused transition, 4.13...)."""

    def __init__(self, message: str, code: CoapCode) -> None:
        super().__init__(message)
        self.coap_code = code


@dataclass(frozen=True)
class Faults:
    """How a simulated device misbehaves on purpose; the default misbehaves in no way. Every fault that fires
    fires once (the next attempt goes through), so a retried update can succeed.

    Link (per datagram, both directions, on the server session over UDP or DTLS, the pulls it carries and the
    bootstrap session; see :mod:`client_sim.network`): ``loss`` (probability 0..1 that a datagram is lost),
    ``delay`` seconds (+/- ``jitter``, uniform, never below 0), drawn from an RNG seeded with ``seed`` (None: the
    endpoint name), so a run is reproducible device by device. CoAP and DTLS handshake retransmission recover.

    Firmware (each fires once):
    - ``offline_at``: once this many bytes of a package arrived (push or pull), the device vanishes: its link goes
      down at once (no answer, no close_notify, no de-register, no notification), it drops its session and stays
      unreachable for ``offline_for`` seconds, then registers afresh (a new Register). It persisted Object 5: it
      reports State Idle (0), Update Result 4 (connection lost); a pull keeps its blocks and the package's ETag
      (resumed by the next pull of the same package); the blocks of a push are lost (a push starts over anyway).
    - ``lose_connection_at``: once this many bytes arrived the transfer breaks (Update Result 4) but the device
      stays online (a pull keeps its blocks and ETag, as above).
    - ``corrupt_download``: one byte (the last) of the next whole package received is flipped before the SUIT
      checks, which then refuse it: Update Result 5 (integrity check failure).
    - ``fail_boot``: the next installed image fails its health check; the bootloader falls back to the old slot:
      after the reboot /5/0/3 Idle, /5/0/5 8 (firmware update failed), /3/0/3 the old version; it re-registers.
    - ``power_loss_during_install``: on the next Execute of /5/0/2 the device answers, starts installing and
      loses power (0.02 s later): it drops its session silently (as ``offline_at``), comes back after the
      device's ``reboot_delay``, boots the old slot (the new one is incomplete and is discarded), registers afresh
      and reports /5/0/3 Idle, /5/0/5 8, /3/0/3 the old version.
    - ``fail_boot_component`` (a device with components): the next install that installs (a new version of) the
      component of that name fails that component's health check: the whole old set stays active, the component
      reports State 3 (failed), every other one the install named State 2 (rolled back), each Update Result 8;
      Object 5 as for ``fail_boot``. An install that does not name it leaves the fault armed.
    """

    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    seed: int | str | None = None
    offline_at: int | None = None
    offline_for: float = 2.0
    lose_connection_at: int | None = None
    corrupt_download: bool = False
    fail_boot: bool = False
    power_loss_during_install: bool = False
    fail_boot_component: str | None = None

    def __post_init__(self) -> None:
        self.link  # validates loss, delay and jitter  # noqa: B018
        for name in ("offline_at", "lose_connection_at"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} counts bytes: at least 1")
        if self.offline_for < 0:
            raise ValueError("offline_for cannot be negative")

    @property
    def link(self) -> LinkConditions:
        """The link part of the faults."""
        return LinkConditions(self.loss, self.delay, self.jitter)

    @property
    def needs_link(self) -> bool:
        """Whether the device's datagrams must go through a :class:`~client_sim.network.Link` (lossy, slow, or a
        device that may vanish)."""
        return self.link.impaired or self.offline_at is not None or self.power_loss_during_install

    def __or__(self, other: Faults) -> Faults:
        """``self`` with every field ``other`` sets to something else than the default."""
        default = Faults()
        changed = {f.name: getattr(other, f.name) for f in fields(other)
                   if getattr(other, f.name) != getattr(default, f.name)}
        return dataclasses.replace(self, **changed)


_FAULT_FIELDS = {f.name: ("link_seed" if f.name == "seed" else f.name) for f in fields(Faults)}


@dataclass(frozen=True)
class FirmwareOptions:
    """What a simulated device knows and how it misbehaves.

    ``trust_anchors``: every one must have signed a package; at least one is required, unless
    ``insecure_accept_any`` says, explicitly, that the device installs any package, unsigned included (lab work
    only; logged at WARNING once per process). Neither, or both: :class:`ValueError` (the device does not start).
    ``supported_schemes``: the Package URI schemes the device pulls from; None (the default): the one its server
    connection speaks (``coap`` over UDP, ``coaps`` over DTLS, where the pull shares the session), also announced
    in /5/0/8. ``flash_size``: the largest package the device stores. ``max_block_size``: the largest Block1 it takes.
    ``download_timeout``: how long one block of a pull may take, CoAP retransmissions included; past
    MAX_TRANSMIT_WAIT (93 s, RFC 7252) CoAP has given up anyway. Shorter bounds are worse than useless: a request
    given up while CoAP still retransmits it keeps NSTART's one exchange per server, so the next one waits behind it.
    Faults: the fields of :class:`Faults` (``link_seed`` is its ``seed``): ``loss``, ``delay``, ``jitter``,
    ``offline_at``/``offline_for``, ``lose_connection_at``, ``corrupt_download``, ``fail_boot``,
    ``power_loss_during_install`` and ``fail_boot_component``; :attr:`faults` gives them as one :class:`Faults`,
    :meth:`with_faults` replaces them.
    ``components``: the device's firmware is a system of these components (install order; see
    :mod:`client_sim.components`), updated all or none by system envelopes and reported in Object 32700; its
    version (/3/0/3) is ``version``. None (the default): one image, no Object 32700.
    """

    trust_anchors: tuple[PublicKey, ...] = ()
    insecure_accept_any: bool = False
    vendor_id: uuid.UUID | None = None
    class_id: uuid.UUID | None = None
    version: str = "1.0.0"
    sequence_number: int = 0
    flash_size: int = 2 << 20
    max_block_size: int = 1024
    pull_block_size: int = 1024
    download_timeout: float = 100.0
    fail_boot: bool = False
    lose_connection_at: int | None = None
    supported_schemes: tuple[str, ...] | None = None  # None: the scheme of the device's server connection
    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    link_seed: int | str | None = None
    offline_at: int | None = None
    offline_for: float = 2.0
    corrupt_download: bool = False
    power_loss_during_install: bool = False
    components: tuple[InstalledComponent, ...] | None = None
    fail_boot_component: str | None = None

    def __post_init__(self) -> None:
        if self.components is not None:
            check_components(self.components)
        if not self.trust_anchors and not self.insecure_accept_any:
            raise ValueError(NO_TRUST_ANCHOR)
        if self.trust_anchors and self.insecure_accept_any:
            raise ValueError("insecure_accept_any and trust_anchors exclude each other")
        self.faults  # validates the fault fields  # noqa: B018

    @property
    def faults(self) -> Faults:
        return Faults(**{name: getattr(self, option) for name, option in _FAULT_FIELDS.items()})

    def with_faults(self, faults: Faults) -> FirmwareOptions:
        """These options with every fault field taken from ``faults``."""
        return dataclasses.replace(self, **{option: getattr(faults, name) for name, option in _FAULT_FIELDS.items()})


@dataclass(frozen=True)
class PartialDownload:
    """The blocks of a pull that broke, kept in the inactive slot: ``data`` is a whole number of blocks of
    ``2 ** (szx + 4)`` bytes of the package whose ETag is ``etag``."""

    etag: bytes
    data: bytes
    szx: int


@dataclass
class Slot:
    """One image slot: what it holds and where that came from."""

    version: str
    sequence_number: int
    image: bytes = b""
    package: bytes = b""


@dataclass
class _Receiving:
    """A block-wise push being written into the inactive slot: ``received`` bytes of the body arrived, the
    package bytes ``stream`` found in them are in ``buffer``."""

    stream: PackageStream
    buffer: bytearray = field(default_factory=bytearray)
    szx: int = 6
    received: int = 0


class DeviceFirmware:
    """Object 5 of one simulated device, its two slots, and the download and install work.

    Counters: ``boots``, ``rollbacks`` (health checks failed), ``interrupted_installs`` (power lost while
    installing), ``fetched_bytes`` (package bytes pulled over the network), ``resumed_bytes`` and ``resumes``
    (bytes a pull did not fetch again because it resumed a broken one), ``corrupted`` (packages flipped by the
    ``corrupt_download`` fault), ``push_blocks`` (blocks of pushed packages taken in, refused ones included).
    """

    def __init__(self, device: SimulatedDevice, options: FirmwareOptions,
                 clock: Callable[[], int] = lambda: int(time.time())) -> None:
        self.device = device
        self.options = options
        self.clock = clock
        global _warned_accept_any
        if options.insecure_accept_any and not _warned_accept_any:
            _warned_accept_any = True
            log.warning("INSECURE: simulated devices (%s first) install ANY package, unsigned included "
                        "(insecure_accept_any; lab work only)", device.endpoint)
        self.machine = FirmwareUpdate(supported_schemes=options.supported_schemes or ("coap",))
        self.slots = [Slot(options.version, options.sequence_number), Slot("", -1)]
        self.active = 0
        self.installing = False
        self.last_package: bytes = b""
        self._tree: ObjectTree | None = None
        self._push: _Receiving | None = None
        self._download: asyncio.Task[None] | None = None
        self._deferral: asyncio.TimerHandle | None = None
        self._lose_connection_at = options.lose_connection_at
        self._fail_boot = options.fail_boot
        self._offline_at = options.offline_at
        self._corrupt_download = options.corrupt_download
        self._power_loss = options.power_loss_during_install
        self._fail_boot_component = options.fail_boot_component
        self.components = ComponentSystem(options.components) if options.components is not None else None
        self._install_interrupted = False
        self.partial: PartialDownload | None = None
        self._pkg_name = ""
        self._pkg_version = ""
        self.boots = 0
        self.rollbacks = 0
        self.interrupted_installs = 0
        self.fetched_bytes = 0
        self.resumed_bytes = 0
        self.resumes = 0
        self.corrupted = 0
        self.push_blocks = 0
        self.fetch: Callable[[str], Awaitable[bytes]] = self._get
        """Where a pull gets the package named by a Package URI: the device's own socket (:meth:`_get`); an end
        device behind a gateway gets it from the gateway instead (client_sim.gateway)."""

    # ------------------------------------------------------------------ the object

    @property
    def downloading(self) -> bool:
        """A pull is under way (the device is asking for blocks)."""
        return self._download is not None

    @property
    def version(self) -> str:
        """The version of the running image (/3/0/3)."""
        return self.slots[self.active].version

    @property
    def sequence_number(self) -> int:
        return self.slots[self.active].sequence_number

    def install_object(self, tree: ObjectTree) -> None:
        tree.add_instance(5, 0, {0: b"", 1: "", 3: 0, 5: 0, 6: "", 7: "", 8: self._protocols(), 9: 2, 11: 1, 13: 0})
        tree.bind(PACKAGE_URI, lambda: self.machine.package_uri, self._write_uri)
        tree.bind(STATE, lambda: int(self.machine.state))
        tree.bind(RESULT, lambda: int(self.machine.result))
        tree.bind(PKG_NAME, lambda: self._pkg_name)
        tree.bind(PKG_VERSION, lambda: self._pkg_version)
        tree.bind(SEVERITY, lambda: int(self.machine.severity), self._write_severity)
        tree.bind(MAX_DEFER, lambda: self.machine.max_defer_period, self._write_max_defer)
        tree.bind(LAST_STATE_CHANGE, lambda: self.machine.last_state_change_time or 0)
        tree.bind(FIRMWARE_VERSION, lambda: self.version)
        tree.on_execute(UPDATE, lambda _args: self._execute_update())
        tree.on_execute(CANCEL, lambda _args: self._handle(CancelExecuted()))
        self._tree = tree
        self._publish_components()

    def _publish_components(self) -> None:
        """Object 32700 shows the components as they are now (one instance per component)."""
        if self.components is not None and self._tree is not None:
            self._tree.sync_instances(FIRMWARE_COMPONENT_ID, self.components.rows())

    def _protocols(self) -> dict[int, int]:
        numbers = sorted({PROTOCOL_NUMBERS[s] for s in self.machine.snapshot().supported_schemes
                          if s in PROTOCOL_NUMBERS})
        return dict(enumerate(numbers))

    def use_scheme(self, scheme: str) -> None:
        """The device's server connection now speaks ``scheme``: pull over it (unless the options fix the schemes)
        and say so in /5/0/8."""
        if self.options.supported_schemes is not None:
            return
        snapshot = self.machine.snapshot()
        if snapshot.supported_schemes == (scheme,):
            return
        self.machine = FirmwareUpdate.restore(dataclasses.replace(snapshot, supported_schemes=(scheme,)))
        if self._tree is not None:
            self._tree.set_value(PROTOCOLS, self._protocols())

    def _changed(self, *paths: LwM2mPath) -> None:
        assert self._tree is not None
        for path in paths or (STATE, RESULT):
            self._tree.touch(path)

    def _handle(self, event: Event) -> None:
        """Feed the state machine and carry out its effects; a refused event becomes a 4.05."""
        before = (self.machine.state, self.machine.result)
        try:
            effects = self.machine.handle(event, self.clock())
        except FirmwareError as e:
            raise DeviceFirmwareError(str(e), e.coap_code) from None
        if (self.machine.state, self.machine.result) != before:
            self._changed(STATE, RESULT, LAST_STATE_CHANGE)
        for effect in effects:
            self._apply(effect)

    def _apply(self, effect: Effect) -> None:
        if isinstance(effect, StartDownload):
            self._download = asyncio.get_running_loop().create_task(self._pull(effect.uri),
                                                                    name=f"fw-pull-{self.device.endpoint}")
        elif isinstance(effect, AbortDownload):
            if self._download is not None:
                self._download.cancel()
                self._download = None
            self._push = None
        elif isinstance(effect, DiscardPackage):
            self.slots[1 - self.active] = Slot("", -1)
            if self.components is not None:
                self.components.discard()
                self._publish_components()
        elif isinstance(effect, StartUpdate):
            self._start_update()
        elif isinstance(effect, ScheduleDeferredUpdate):
            delay = max(0, effect.at - self.clock())
            self._deferral = asyncio.get_running_loop().call_later(delay, self._deferral_expired)
        elif isinstance(effect, CancelDeferredUpdate) and self._deferral is not None:
            self._deferral.cancel()
            self._deferral = None

    def _deferral_expired(self) -> None:
        self._deferral = None
        with contextlib.suppress(Lwm2mError):
            self._handle(DeferralExpired())

    # ------------------------------------------------------------------ writes and executes

    def _write_uri(self, value: Value) -> None:
        uri = str(value)
        self._handle(UriWritten(uri) if uri else UriCleared())

    def _write_severity(self, value: Value) -> None:
        try:
            self.machine.set_severity(int(value))  # type: ignore[arg-type]
        except ValueError as e:
            raise BadValueError(str(e)) from None

    def _write_max_defer(self, value: Value) -> None:
        try:
            self.machine.set_max_defer_period(int(value))  # type: ignore[arg-type]
        except ValueError as e:
            raise BadValueError(str(e)) from None

    def _execute_update(self) -> None:
        self._handle(UpdateExecuted())

    def write_package(self, request: Message) -> Message:
        """A Write of /5/0/0: one block of a push (Block1), a whole small package, or the empty reset. The body
        may be in any format the device announces (:mod:`client_sim.package_stream`): each block's package bytes
        go to the inactive slot as they arrive. A first block whose Size1 (or container header) states more than
        the flash holds is answered 4.13 with Size1 = the flash size, so the server stops at once."""
        block1 = request.opt.block1
        payload = request.payload
        number, more, szx = (block1.block_number, block1.more, block1.size_exponent) if block1 else (0, False, 6)
        size = 1 << (szx + 4)
        max_szx = self.options.max_block_size.bit_length() - 5
        if block1 is not None and szx > max_szx:
            response = Message(code=Code.REQUEST_ENTITY_TOO_LARGE)
            response.opt.block1 = BlockOption.BlockwiseTuple(number, more, max_szx)
            return response
        cf = request.opt.content_format
        whole: bytes | None = None
        if number == 0:
            stream = package_stream(None if cf is None else int(cf), self.device.model)  # 4.15: state unchanged
            if block1 is None:
                # an empty body resets in any format; a malformed one is 4.00, state unchanged
                whole = stream.feed(payload) + stream.finish() if payload else b""
                if whole in (b"", b"\0"):
                    self._handle(PackageCleared())
                    return Message(code=Code.CHANGED)
            if self.machine.state == State.DOWNLOADING and self._push is not None:
                self._handle(PackageCleared())  # the server starts the push over: drop what we have
            self._handle(PackageWriteStarted())
            self._push = _Receiving(stream=stream, szx=szx)
            self.partial = None  # a push overwrites the inactive slot
        receiving = self._push
        if receiving is None or receiving.received != number * size:
            return Message(code=Code.REQUEST_ENTITY_INCOMPLETE, payload=b"blocks out of order")
        self.push_blocks += 1
        end = number * size + len(payload)
        try:
            chunk = whole if whole is not None else receiving.stream.feed(payload)
            if not more and whole is None:
                chunk += receiving.stream.finish()
        except CodecError as e:
            self._fail_download(PackageFormatError(str(e)))
            return Message(code=Code.BAD_REQUEST, payload=str(e).encode()[:120])
        flash = self.options.flash_size
        declared = request.opt.size1
        if ((declared is not None and receiving.stream.smallest_package(declared) > flash)
                or (receiving.stream.declared or 0) > flash or len(receiving.buffer) + len(chunk) > flash):
            self._fail_download(PackageTooLargeError(f"more than {flash} bytes"))
            response = Message(code=Code.REQUEST_ENTITY_TOO_LARGE)
            response.opt.size1 = flash
            return response
        if self._lose_connection_at is not None and end >= self._lose_connection_at:
            self._lose_connection_at = None
            self._fail_download(TransferLostError("connection lost during the push"))
            return Message(code=Code.REQUEST_ENTITY_INCOMPLETE, payload=b"connection lost, start over")
        if self._offline_at is not None and end >= self._offline_at:
            self._offline_at = None
            self.device.go_offline(self.options.offline_for)  # the link is down: this answer never leaves
            self._fail_download(TransferLostError("the device went offline during the push (fault injected)"))
            return Message(code=Code.SERVICE_UNAVAILABLE)
        receiving.buffer += chunk
        receiving.received = end
        if more:
            response = Message(code=Code.CONTINUE)
            response.opt.block1 = BlockOption.BlockwiseTuple(number, True, szx)
            return response
        package = bytes(receiving.buffer)
        self._push = None
        self._received(package, push=True)
        response = Message(code=Code.CHANGED)
        if block1 is not None:
            response.opt.block1 = BlockOption.BlockwiseTuple(number, False, szx)
        return response

    # ------------------------------------------------------------------ download and verification

    def _fail_download(self, error: FirmwareError) -> None:
        """End the transfer with the Update Result ``error`` carries."""
        self._push = None
        with contextlib.suppress(Lwm2mError):
            self._handle(DownloadFailed.from_error(error))

    def _received(self, package: bytes, *, push: bool) -> None:
        """The whole package arrived: verify it, then report Downloaded (or why not)."""
        if self._corrupt_download and package:
            self._corrupt_download = False
            self.corrupted += 1
            package = package[:-1] + bytes([package[-1] ^ 0xFF])  # inside the last item: no CBOR shape changes
            log.info("%s: one byte of the package flipped (fault injected)", self.device.endpoint)
        self.last_package = package
        if self.components is not None and is_system_envelope(package):
            self._received_system(package, push)
            return
        try:
            verified = self._verify(package)
        except FirmwareError as e:
            log.info("%s: package refused: %s", self.device.endpoint, e)
            self._fail_download(e)
            return
        if verified.payload is None:  # the image lives at a URI of its own
            asyncio.get_running_loop().create_task(self._fetch_image(verified, push))
            return
        self._downloaded(verified, verified.payload, push)

    def _verify(self, package: bytes) -> VerifiedEnvelope:
        o = self.options
        return verify_envelope(package, trust_anchors=o.trust_anchors, max_size=o.flash_size,
                               installed_sequence=self.sequence_number, vendor_id=o.vendor_id, class_id=o.class_id)

    def _received_system(self, package: bytes, push: bool) -> None:
        """A system envelope arrived: verify it, build and stage every component; Downloaded when both passed."""
        assert self.components is not None
        o = self.options
        try:
            verified: VerifiedSystem = verify_system_envelope(
                package, trust_anchors=o.trust_anchors, max_size=o.flash_size,
                installed_sequence=self.sequence_number, vendor_id=o.vendor_id, class_id=o.class_id)
            self.components.stage(verified)
        except FirmwareError as e:
            log.info("%s: system package refused: %s", self.device.endpoint, e)
            self._publish_components()
            self._fail_download(e)
            return
        self.slots[1 - self.active] = Slot(verified.version, verified.sequence_number, b"", package)
        self._pkg_name = f"{self.device.endpoint}-system"
        self._pkg_version = verified.version
        self._publish_components()
        self._changed(PKG_NAME, PKG_VERSION)
        self._handle(PackageWritten() if push else DownloadCompleted())

    def _downloaded(self, verified: VerifiedEnvelope, image: bytes, push: bool) -> None:
        if self.components is not None:  # a single image replaces whatever system was staged
            self.components.discard()
            self._publish_components()
        self.slots[1 - self.active] = Slot(verified.version or f"seq-{verified.sequence_number}",
                                           verified.sequence_number, image, self.last_package)
        self._pkg_name = f"{self.device.endpoint}-firmware"
        self._pkg_version = verified.version or ""
        self._changed(PKG_NAME, PKG_VERSION)
        self._handle(PackageWritten() if push else DownloadCompleted())

    async def _fetch_image(self, verified: VerifiedEnvelope, push: bool) -> None:
        assert verified.image_uri is not None
        try:
            image = await self.fetch(verified.image_uri)
            check_image(verified, image)
        except FirmwareError as e:
            self._fail_download(e)
            return
        self._downloaded(verified, image, push)

    async def _pull(self, uri: str) -> None:
        try:
            package = await self.fetch(uri)
        except FirmwareError as e:
            self._fail_download(e)
            return
        finally:
            self._download = None
        self._received(package, push=False)

    async def _get(self, uri: str) -> bytes:
        """Block-wise GET (Block2) of ``uri`` from the device's own socket, retrying a lost block in place.

        A :attr:`partial` download is resumed: the first request asks for the block after the kept ones, and they
        are used if that answer carries their ETag (else the download starts over from block 0). When the
        transfer breaks (:class:`TransferLostError`), what arrived is kept as the new :attr:`partial`.

        The first request asks for the size (Size2 0, RFC 7959 section 4): a package larger than the flash is
        refused before its first byte is kept, and the device reads no further than the size the server declared
        (:class:`PackageSizeError` when the server sends more, or less, or changes the size)."""
        context = self.device._context
        if context is None:
            raise TransferLostError("the device has no server connection")
        szx = self.options.pull_block_size.bit_length() - 5
        received = bytearray()
        etag: bytes | None = None
        partial, self.partial = self.partial, None
        resuming = partial is not None
        if partial is not None:
            received, etag, szx = bytearray(partial.data), partial.etag, partial.szx
        number = len(received) >> (szx + 4)
        retries = 0
        declared: int | None = None  # Size2, once the server said it
        try:
            while True:
                request = Message(code=Code.GET, uri=uri)
                request.opt.block2 = BlockOption.BlockwiseTuple(number, False, szx)
                if declared is None:
                    request.opt.size2 = 0  # "how large is it?"
                try:
                    response = await asyncio.wait_for(context.request(request, handle_blockwise=False).response,
                                                      self.options.download_timeout)
                except CredentialsMissingError:
                    raise PackageNotFoundError(f"no credentials to reach {uri}") from None
                except (TimeoutError, coap_error.Error):
                    retries += 1
                    if retries > MAX_BLOCK_RETRIES:
                        raise TransferLostError(f"no answer for block {number} of {uri}") from None
                    continue
                retries = 0
                block2 = response.opt.block2
                if resuming:
                    resuming = False
                    if (response.code != Code.CONTENT or response.opt.etag != etag or block2 is None
                            or block2.start != len(received)):
                        log.info("%s: %s is not the package a broken pull stopped in; starting over",
                                 self.device.endpoint, uri)
                        received.clear()
                        number, etag, szx = 0, None, self.options.pull_block_size.bit_length() - 5
                        declared = None
                        continue
                    self.resumes += 1
                    self.resumed_bytes += len(received)
                    log.info("%s: resuming the pull of %s at byte %d", self.device.endpoint, uri, len(received))
                if response.code == Code.NOT_FOUND:
                    raise PackageNotFoundError(f"nothing at {uri}")
                if response.code != Code.CONTENT:
                    raise TransferLostError(f"{uri} answered {response.code}")
                size2 = response.opt.size2
                if size2 is not None and size2 > self.options.flash_size:
                    raise PackageTooLargeError(f"the package has {size2} bytes; the flash holds "
                                               f"{self.options.flash_size}")
                tag = response.opt.etag
                if etag is None:
                    etag = tag
                elif tag != etag:  # the package changed under us: start over
                    received.clear()
                    number, etag, declared = 0, None, None
                    continue
                if size2 is not None:
                    if declared is not None and size2 != declared:
                        raise PackageSizeError(f"{uri} declared {declared} bytes, then {size2}")
                    declared = size2
                if block2 is not None and block2.size_exponent < szx:  # the server wants smaller blocks
                    szx = block2.size_exponent
                last = block2 is None or not block2.more
                end = len(received) + len(response.payload)
                if declared is not None and (end > declared or (last and end < declared)
                                             or (not last and end == declared)):
                    fewer = last and end < declared
                    raise PackageSizeError(f"{uri} declared {declared} bytes (Size2) but sends "
                                           f"{'fewer' if fewer else 'more'}; download stopped at byte "
                                           f"{len(received)}")
                received += response.payload
                self.fetched_bytes += len(response.payload)
                if len(received) > self.options.flash_size:
                    raise PackageTooLargeError(f"the package outgrew the flash ({self.options.flash_size} bytes)")
                if self._lose_connection_at is not None and len(received) >= self._lose_connection_at:
                    self._lose_connection_at = None
                    raise TransferLostError("connection lost during the download (fault injected)")
                if self._offline_at is not None and len(received) >= self._offline_at:
                    self._offline_at = None
                    self.device.go_offline(self.options.offline_for)
                    raise TransferLostError("the device went offline during the download (fault injected)")
                if last:
                    return bytes(received)
                number = len(received) >> (szx + 4)
        except TransferLostError:
            if etag is not None and received and len(received) % (1 << (szx + 4)) == 0:
                self.partial = PartialDownload(etag, bytes(received), szx)
            raise

    # ------------------------------------------------------------------ install, boot, rollback

    def _start_update(self) -> None:
        """Updating: the image is in the inactive slot; reboot into it (or lose power while installing it)."""
        self.installing = True
        if self._power_loss:
            self._power_loss = False
            self._install_interrupted = True
            device = self.device
            device._later(POWER_FAILS_AFTER, lambda: device.go_offline(device.reboot_delay, reboot=True))
            return
        self.device._later(self.device.reboot_delay, self.device.reboot)

    def on_boot(self) -> None:
        """Called at every (simulated) boot, before the device registers again."""
        self.boots += 1
        if not self.installing:
            self._publish_components()  # a factory reset may have brought back the tree's first values
            return
        self.installing = False
        if self._install_interrupted:  # the power failed half-way: the new slot is incomplete, boot the old one
            self._install_interrupted = False
            self.interrupted_installs += 1
            log.info("%s: the install was interrupted; still running %s", self.device.endpoint, self.version)
            if self.components is not None:
                self.components.roll_back()
                self._publish_components()
            self._handle(UpdateFailed(UpdateResult.UPDATE_FAILED))  # Idle, result 8, the slot is discarded
            self._changed(FIRMWARE_VERSION, PKG_VERSION)
            return
        previous = self.active
        self.active = 1 - previous  # trial boot of the new image
        failing = self._failing_component()
        if self._fail_boot or failing is not None:
            if failing is not None:
                self._fail_boot_component = None
            else:
                self._fail_boot = False
            self.active = previous  # the health check failed: the bootloader falls back
            self.rollbacks += 1
            log.info("%s: %s failed its health check; rolled back to %s", self.device.endpoint,
                     f"component {failing}" if failing else "image", self.version)
            if self.components is not None:
                self.components.roll_back(failing)
                self._publish_components()
            self._handle(UpdateFailed(UpdateResult.UPDATE_FAILED))
        else:
            self.slots[previous].package = b""
            if self.components is not None:
                self.components.commit()
                self._publish_components()
            self._handle(UpdateSucceeded())
        self._changed(FIRMWARE_VERSION, PKG_VERSION)

    def _failing_component(self) -> str | None:
        """The component whose health check fails at this boot (the ``fail_boot_component`` fault), if any."""
        name = self._fail_boot_component
        if name is not None and self.components is not None and self.components.will_install(name):
            return name
        return None

    def stop(self) -> None:
        if self._download is not None:
            self._download.cancel()
        if self._deferral is not None:
            self._deferral.cancel()


__all__ = [
    "DeviceFirmware", "DeviceFirmwareError", "Faults", "FirmwareOptions", "PackageFormatError", "PackageNotFoundError",
    "PackageSizeError", "PartialDownload", "Slot", "TransferLostError",
]
