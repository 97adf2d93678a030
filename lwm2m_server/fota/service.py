"""The firmware update service: drives one device's Object 5 from package to reported result.

One update runs per device at a time. The service reads /5/0 to learn the device's state and what delivery it
takes (/5/0/9, /5/0/8), resets a half-finished earlier attempt, follows /5/0/3 and /5/0/5 by Observe (falling
back to polling for devices that do not notify), delivers the package by push (block-wise Write of /5/0/0) or pull
(Package URI of our own CoAP file server: coaps:// for a device registered over DTLS, so it downloads over a
DTLS session too), executes /5/0/2 once the device reports Downloaded, and waits for the
device to come back (re-registration) and report its Update Result and new version.

A caller may choose the name a pull publishes the package under (``package_name``): a campaign persists it with
its job, publishes it again after a restart, and starts the update again with it; a device then found Downloading
or Downloaded from that very URI (its /5/0/1) is not reset: the service follows the download under way.

The service treats the package as opaque bytes: a third-party device takes its vendor's own format.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from firmware_object.errors import State, UpdateResult
from lwm2m_server.core.errors import (
    ClientSleepingError,
    CoapCode,
    ErrorResponseError,
    InvalidRequestError,
    Lwm2mError,
    NotFoundError,
    RequestFailedError,
    RequestTimeoutError,
    UnknownEndpointError,
)
from lwm2m_server.core.nodes import Instance, MultipleResource, Node, ResourceType, SingleResource, device_text
from lwm2m_server.core.operations import ExecuteRequest, ObserveRequest, ReadRequest, WriteRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.core.registration import Registration
from lwm2m_server.events import REGISTRATION_REGISTERED, REGISTRATION_UPDATED, Event, EventBus
from lwm2m_server.fota.file_server import FileServer
from lwm2m_server.management import DeviceManagement
from lwm2m_server.transport.downlink import ObservationHandle
from lwm2m_server.transport.push import DEFAULT_BLOCK_SIZE, PushProgress

log = logging.getLogger(__name__)

FIRMWARE = LwM2mPath.of(5, 0)
PACKAGE = LwM2mPath.of(5, 0, 0)
PACKAGE_URI = LwM2mPath.of(5, 0, 1)
UPDATE = LwM2mPath.of(5, 0, 2)
STATE = LwM2mPath.of(5, 0, 3)
RESULT = LwM2mPath.of(5, 0, 5)
FIRMWARE_VERSION = LwM2mPath.of(3, 0, 3)

PROTOCOL_COAP, PROTOCOL_COAPS = 0, 1
DELIVERY_PULL, DELIVERY_PUSH, DELIVERY_BOTH = 0, 1, 2

FIRMWARE_STARTED = "firmware.started"  # a job began (every job, retries included); data: bytes, method
FIRMWARE_DELIVERED = "firmware.delivered"  # the device holds the package (Downloaded); data: bytes, method
FIRMWARE_FINISHED = "firmware.finished"  # the job ended; data: success, bytes, result, versions, message...


class Method(StrEnum):
    PUSH = "push"
    PULL = "pull"


class FirmwareUpdateError(RequestFailedError):
    """An update that could not be carried out; ``result`` is the device's Update Result when it reported one."""

    def __init__(self, message: str, result: int | None = None) -> None:
        super().__init__(message)
        self.result = result


class UpdateInProgressError(InvalidRequestError):
    """Another update of this device is still running."""

    coap_code = CoapCode.CONFLICT


@dataclass(frozen=True)
class UpdateProgress:
    """One step of an update, as shown to an operator. ``phase`` is one of PHASES."""

    endpoint: str
    phase: str
    method: str | None = None
    sent: int = 0
    total: int = 0
    blocks: int = 0
    state: int | None = None
    result: int | None = None
    version: str | None = None
    message: str = ""


PHASES = ("preparing", "delivering", "downloaded", "updating", "rebooted", "succeeded", "failed")


@dataclass
class UpdateJob:
    """One update of one device; ``outcome`` is the last progress once ``done`` is set."""

    endpoint: str
    total: int
    tenant_id: str
    method: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    previous_version: str | None = None
    history: list[UpdateProgress] = field(default_factory=list)
    recorded: int = 0  # steps recorded since the start (history keeps the first and the recent ones)
    error: str | None = None  # why a failed update failed: "timeout", "unreachable", "cancelled" or the error's type
    aborted: bool = False  # abandoned by FirmwareService.abort (a deadline passed)
    package_name: str | None = None  # the file server name a pull publishes under (None: a new one); never shown
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def last(self) -> UpdateProgress:
        return self.history[-1]

    @property
    def succeeded(self) -> bool:
        return self.done.is_set() and self.last.phase == "succeeded"

    def record(self, progress: UpdateProgress) -> None:
        self.history.append(progress)
        self.recorded += 1
        if len(self.history) > 512:  # keep the first steps and the recent ones
            del self.history[16:-256]
        self._changed.set()
        self._changed = asyncio.Event()

    def changed(self) -> asyncio.Event:
        """An event set at the next recorded step (take it before reading ``history``)."""
        return self._changed

    def as_dict(self) -> dict[str, object]:
        return {"endpoint": self.endpoint, "method": self.method, "total": self.total,
                "started_at": self.started_at, "finished_at": self.finished_at, "done": self.done.is_set(),
                "previous_version": self.previous_version, "last": asdict(self.last) if self.history else None}


@dataclass
class _Watch:
    """What the device last told us about /5/0/3 and /5/0/5; ``generation`` counts what we were told."""

    state: int | None = None
    result: int | None = None
    generation: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def forget(self) -> None:
        self.state = self.result = None

    def set(self, state: int | None = None, result: int | None = None) -> None:
        if state is not None:
            self.state = state
        if result is not None:
            self.result = result
        self.generation += 1
        self.changed.set()
        self.changed = asyncio.Event()


class FirmwareService:
    """Runs firmware updates of registered devices; one at a time per device. Every public method takes the
    caller's ``tenant_id`` (keyword, required): a device is ``(tenant_id, endpoint)``."""

    def __init__(self, management: DeviceManagement, files: FileServer, events: EventBus, *,
                 file_base_uri: str, secure_file_base_uri: str | None = None, clock: Callable[[], float] = time.time,
                 poll_interval: float = 1.0, quiet_check: float = 10.0, delivery_attempts: int = 3) -> None:
        """``file_base_uri`` is where devices pull packages from; ``secure_file_base_uri`` (coaps://), when given,
        is where devices that registered over DTLS pull from. ``poll_interval``: how often /5/0 is read from a
        device that does not notify; ``quiet_check``: how long a device that notifies may stay quiet before /5/0
        is read anyway (a notification sent NON may be lost)."""
        self.management = management
        self.files = files
        self.events = events
        self.file_base_uri = file_base_uri.rstrip("/")
        self.secure_file_base_uri = secure_file_base_uri.rstrip("/") if secure_file_base_uri else None
        self.clock = clock
        self.poll_interval = poll_interval
        self.quiet_check = quiet_check
        self.delivery_attempts = delivery_attempts  # a download that lost its connection is tried again
        self.jobs: dict[tuple[str, str], UpdateJob] = {}
        self._followers: set[asyncio.Task[None]] = set()
        self._delivering: dict[tuple[str, str], Callable[[], None]] = {}  # called when that device registers
        self._unsubscribe = events.subscribe(self._on_registered, (REGISTRATION_REGISTERED, REGISTRATION_UPDATED))

    def _on_registered(self, event: Event) -> None:
        """A device being delivered to registered anew, or came back on a new session (its observations are gone
        either way): poll it until the package is in."""
        if event.kind == REGISTRATION_UPDATED and not event.data.get("session_resumed"):
            return
        callback = self._delivering.get((event.tenant_id, event.endpoint or ""))
        if callback is not None:
            callback()

    def file_base_uri_for(self, registration: Registration) -> str:
        """The base of the Package URI for a device: coaps:// when it registered over DTLS (and we serve it)."""
        if registration.secure and self.secure_file_base_uri is not None:
            return self.secure_file_base_uri
        return self.file_base_uri

    def job(self, endpoint: str, *, tenant_id: str) -> UpdateJob | None:
        return self.jobs.get((tenant_id, endpoint))

    def start(self, endpoint: str, package: bytes, *, method: Method | None = None, timeout: float = 300.0,
              block_size: int = DEFAULT_BLOCK_SIZE, tenant_id: str,
              previous_version: str | None = None, package_name: str | None = None) -> UpdateJob:
        """Start an update in the background and return its job (refused while one runs for this device).
        ``previous_version``: the device's /3/0/3 when the caller has just read it (else it is read here).
        ``package_name``: the name a pull publishes under (see the module docstring); it is withdrawn when the
        update ends, whichever way it was delivered."""
        self.management.registration(endpoint, tenant_id=tenant_id)  # unknown endpoint: fail now, not in the task
        if not package:
            raise InvalidRequestError("the package is empty")
        running = self.jobs.get((tenant_id, endpoint))
        if running is not None and not running.done.is_set():
            raise UpdateInProgressError(f"an update of {endpoint} is already running")
        job = UpdateJob(endpoint, len(package), tenant_id, previous_version=previous_version,
                        package_name=package_name)
        self.jobs[(tenant_id, endpoint)] = job
        job.task = asyncio.get_running_loop().create_task(
            self._run(job, package, method, timeout, block_size, tenant_id), name=f"firmware-{endpoint}")
        self.events.emit(FIRMWARE_STARTED, self.clock(), tenant_id=tenant_id, endpoint=endpoint,
                         data={"method": None if method is None else method.value, "bytes": len(package)})
        return job

    def abort(self, endpoint: str, *, tenant_id: str) -> bool:
        """Abandon the running update of ``endpoint`` (its caller gave up waiting): it ends failed with error
        ``"timeout"``. False when none runs."""
        job = self.jobs.get((tenant_id, endpoint))
        if job is None or job.done.is_set() or job.task is None or job.task.done():
            return False
        job.aborted = True
        job.task.cancel()
        return True

    async def update(self, endpoint: str, package: bytes, *, tenant_id: str, **options: object) -> UpdateJob:
        """Run an update to its end and return the finished job."""
        job = self.start(endpoint, package, tenant_id=tenant_id, **options)  # type: ignore[arg-type]
        await job.done.wait()
        return job

    async def close(self) -> None:
        self._unsubscribe()
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        tasks += list(self._followers)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # ------------------------------------------------------------------ one update

    async def _run(self, job: UpdateJob, package: bytes, method: Method | None, timeout: float, block_size: int,
                   tenant_id: str) -> None:
        ep = job.endpoint
        try:
            async with asyncio.timeout(timeout):
                await self._update(job, package, method, block_size, tenant_id)
        except TimeoutError:
            job.error = "timeout"
            self._finish(job, "failed", message=f"the update did not finish within {timeout:g} s")
        except FirmwareUpdateError as e:
            job.error = type(e).__name__
            self._finish(job, "failed", result=e.result, message=str(e))
        except (RequestTimeoutError, ClientSleepingError, UnknownEndpointError) as e:
            job.error = "timeout" if isinstance(e, RequestTimeoutError) else "unreachable"
            self._finish(job, "failed", message=f"{type(e).__name__}: {e}")
        except Lwm2mError as e:
            job.error = type(e).__name__
            self._finish(job, "failed", message=f"{type(e).__name__}: {e}")
        except asyncio.CancelledError:
            job.error = "timeout" if job.aborted else "cancelled"
            self._finish(job, "failed", message="abandoned: its deadline passed" if job.aborted
                         else "cancelled (server stopping)")
            raise
        except Exception as e:
            log.exception("firmware update of %s failed", ep)
            self._finish(job, "failed", message=f"internal error: {type(e).__name__}")

    def _progress(self, job: UpdateJob, phase: str, **fields: object) -> None:
        last = job.last if job.history else None
        values: dict[str, object] = {"method": job.method}
        if last is not None:
            values.update(sent=last.sent, total=last.total, blocks=last.blocks, state=last.state,
                          result=last.result, version=last.version)
        else:
            values["total"] = job.total
        values.update(fields)
        job.record(UpdateProgress(job.endpoint, phase, **values))  # type: ignore[arg-type]

    def _finish(self, job: UpdateJob, phase: str, **fields: object) -> None:
        if job.done.is_set():
            return
        self._progress(job, phase, **fields)
        job.finished_at = self.clock()
        job.done.set()
        last = job.last
        self.events.emit(FIRMWARE_FINISHED, job.finished_at, tenant_id=job.tenant_id, endpoint=job.endpoint,
                         data={"success": phase == "succeeded", "method": job.method, "result": last.result,
                               "version": last.version, "previous_version": job.previous_version,
                               "bytes": job.total, "seconds": round(job.finished_at - job.started_at, 3),
                               "message": last.message})

    async def _update(self, job: UpdateJob, package: bytes, method: Method | None, block_size: int,
                      tenant_id: str) -> None:
        ep = job.endpoint
        mgmt = self.management
        reg = mgmt.registration(ep, tenant_id=tenant_id)
        if not reg.supports_object(5):
            raise FirmwareUpdateError(f"{ep} has no Firmware Update object (/5)")
        self._progress(job, "preparing", message="reading /5/0")
        fw = await self._read_instance(ep, tenant_id)
        if job.previous_version is None:
            job.previous_version = await self._firmware_version(ep, tenant_id)
        base_uri = self.file_base_uri_for(reg)
        chosen = self._choose(ep, fw, method, base_uri)
        job.method = chosen.value
        watch = _Watch(state=_int(fw.get(3)), result=_int(fw.get(5)))
        if watch.state == State.UPDATING:
            raise FirmwareUpdateError(f"{ep} is installing a firmware already (state Updating)")
        name = job.package_name
        # the device pulls (or has pulled) this very delivery, published again after a restart: let it go on
        digest = hashlib.sha256(package).hexdigest() if reg.parent_id is not None else None
        going_on = (chosen is Method.PULL and name is not None and fw.get(1) == package_uri(base_uri, name, digest)
                    and watch.state in (State.DOWNLOADING, State.DOWNLOADED))
        if watch.state != State.IDLE and not going_on:
            self._progress(job, "preparing", state=watch.state, message="resetting an earlier download")
            await self._reset(ep, chosen, tenant_id)
        observers = await self._observe(ep, watch, tenant_id)
        poller = None if observers else asyncio.create_task(self._poll(ep, watch, tenant_id))

        def on_registered() -> None:  # a device that registers anew has dropped its observations: poll instead
            nonlocal poller
            if poller is None:
                poller = asyncio.get_running_loop().create_task(self._poll(ep, watch, tenant_id))

        self._delivering[(tenant_id, ep)] = on_registered
        unsubscribe = functools.partial(self._delivering.pop, (tenant_id, ep), None)
        try:
            for attempt in range(1, self.delivery_attempts + 1):
                if not (going_on and attempt == 1):
                    watch.forget()  # the old Update Result means nothing once a new download starts
                try:
                    if chosen is Method.PUSH:
                        await self._push(job, reg, package, block_size, watch)
                    else:
                        name = self.files.publish(package, name)
                        await self._pull(job, ep, package_uri(base_uri, name, digest), name, watch, tenant_id,
                                         write=not (going_on and attempt == 1))
                    await self._wait_downloaded(job, ep, watch, tenant_id)
                    break
                except FirmwareUpdateError as e:
                    if e.result != UpdateResult.CONNECTION_LOST or attempt == self.delivery_attempts:
                        raise
                    self._progress(job, "delivering", sent=0, blocks=0, result=e.result,
                                   message=f"connection lost; delivering again (attempt {attempt + 1})")
            unsubscribe()  # the registration after the Execute is the reboot: _execute_and_wait expects it
            self.events.emit(FIRMWARE_DELIVERED, self.clock(), tenant_id=tenant_id, endpoint=ep,
                             data={"method": chosen.value, "bytes": len(package)})
            await self._execute_and_wait(job, ep, watch, tenant_id)
        finally:
            unsubscribe()
            if name is not None:
                self.files.withdraw(name)
            if poller is not None:
                poller.cancel()
            for obs in observers:
                obs.cancel()

    async def _read_instance(self, ep: str, tenant_id: str) -> dict[int, object]:
        response = await self.management.send(ep, ReadRequest(FIRMWARE), tenant_id=tenant_id)
        node = response.content
        if not isinstance(node, Instance):
            raise FirmwareUpdateError(f"{ep} answered the Read of /5/0 with no object instance")
        values: dict[int, object] = {}
        for rid, res in node.resources.items():
            if isinstance(res, SingleResource):
                values[rid] = res.value
            elif isinstance(res, MultipleResource):
                values[rid] = tuple(res.instances.values())
        return values

    async def _firmware_version(self, ep: str, tenant_id: str) -> str | None:
        with contextlib.suppress(Lwm2mError):
            node = (await self.management.send(ep, ReadRequest(FIRMWARE_VERSION), tenant_id=tenant_id)).content
            if isinstance(node, SingleResource):
                return device_text(node.value)
        return None

    def _choose(self, ep: str, fw: dict[int, object], method: Method | None, base_uri: str) -> Method:
        delivery = _int(fw.get(9))
        protocols = fw.get(8)
        scheme = PROTOCOL_COAPS if base_uri.startswith("coaps:") else PROTOCOL_COAP
        pull_ok = delivery in (None, DELIVERY_PULL, DELIVERY_BOTH) and (
            protocols is None or scheme in tuple(_int(p) for p in protocols))  # type: ignore[attr-defined]
        push_ok = delivery in (None, DELIVERY_PUSH, DELIVERY_BOTH)
        if method is Method.PUSH and not push_ok:
            raise FirmwareUpdateError(f"{ep} does not take pushed packages (/5/0/9 = {delivery})")
        if method is Method.PULL and not pull_ok:
            raise FirmwareUpdateError(f"{ep} cannot pull from {base_uri} (/5/0/9 = {delivery}, "
                                      f"/5/0/8 = {protocols})")
        if method is not None:
            return method
        if pull_ok and delivery is not None:
            return Method.PULL
        if push_ok:
            return Method.PUSH
        raise FirmwareUpdateError(f"{ep} offers no delivery method we can use")

    async def _reset(self, ep: str, method: Method, tenant_id: str) -> None:
        """Writing an empty Package URI (or Package) sends Object 5 back to Idle (OMA)."""
        if method is Method.PULL:
            node: Node = SingleResource(1, ResourceType.STRING, "")
            path = PACKAGE_URI
        else:
            node, path = SingleResource(0, ResourceType.OPAQUE, b"\0"), PACKAGE
        await self.management.send(ep, WriteRequest(path, node), tenant_id=tenant_id)

    async def _observe(self, ep: str, watch: _Watch, tenant_id: str) -> list[ObservationHandle]:
        """Observe /5/0/3 and /5/0/5; an empty list when the device does not take Observe."""
        observations: list[ObservationHandle] = []
        try:
            for path, rid in ((STATE, 3), (RESULT, 5)):
                obs = await self.management.observe(ep, ObserveRequest(path), tenant_id=tenant_id)
                if not obs.established:
                    raise ErrorResponseError(0x45, "no Observe option in the answer")
                observations.append(obs)
                initial = obs.initial.content
                if isinstance(initial, SingleResource):
                    watch.set(**{"state" if rid == 3 else "result": _int(initial.value)})
                self._followers.add(asyncio.get_running_loop().create_task(self._follow(obs, watch, rid)))
        except Lwm2mError as e:
            log.info("%s: Observe of /5/0 failed (%s); polling instead", ep, e)
            for obs in observations:
                obs.cancel()
            return []
        return observations

    async def _follow(self, obs: ObservationHandle, watch: _Watch, rid: int) -> None:
        try:
            async for node in obs.notifications():
                if isinstance(node, SingleResource):
                    if rid == 3:
                        watch.set(state=_int(node.value))
                    else:
                        watch.set(result=_int(node.value))
        except Lwm2mError:
            pass  # the observation ended (the device rebooted, or we cancelled it)
        finally:
            self._followers.discard(asyncio.current_task())  # type: ignore[arg-type]

    async def _poll(self, ep: str, watch: _Watch, tenant_id: str) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            await self._check(ep, watch, tenant_id)

    async def _check(self, ep: str, watch: _Watch, tenant_id: str) -> None:
        """Read /5/0/3 and /5/0/5 into ``watch``, unless a notification came while the read was under way: under
        loss the read's answer can be older than the notification (a retransmitted request gets the answer the
        device cached when it first saw it)."""
        generation = watch.generation
        with contextlib.suppress(Lwm2mError):
            fw = await self._read_instance(ep, tenant_id)
            if watch.generation == generation:
                watch.set(state=_int(fw.get(3)), result=_int(fw.get(5)))

    async def _push(self, job: UpdateJob, reg: Registration, package: bytes, block_size: int, watch: _Watch) -> None:
        sender = self.management.sender

        last = 0.0

        def on_progress(p: PushProgress) -> None:  # at most 10 steps a second, and the last block
            nonlocal last
            now = time.monotonic()
            if p.done or now - last >= 0.1:
                last = now
                self._progress(job, "delivering", sent=p.sent, total=p.total, blocks=p.blocks)

        self._progress(job, "delivering", sent=0, total=len(package), message="pushing to /5/0/0")
        try:
            await sender.push(reg, package, block_size=block_size, on_progress=on_progress)
        except ErrorResponseError as e:
            result = None  # the device refused a block: it may say why in /5/0/5
            with contextlib.suppress(Lwm2mError):
                result = _int((await self._read_instance(job.endpoint, job.tenant_id)).get(5))
            label = f" ({result_label(result)})" if result else ""
            raise FirmwareUpdateError(f"{job.endpoint} refused the package: {e}{label}", result or None) from None

    async def _pull(self, job: UpdateJob, ep: str, uri: str, name: str, watch: _Watch, tenant_id: str, *,
                    write: bool = True) -> None:
        """Write the Package URI (unless ``write`` is False: the device pulls it already) and follow the download."""
        if write:
            self._progress(job, "delivering", sent=0, total=job.total, message="Package URI written")
            await self.management.send(ep, WriteRequest(PACKAGE_URI, SingleResource(1, ResourceType.STRING, uri)),
                                       tenant_id=tenant_id)
        elif watch.state in (State.DOWNLOADED, State.UPDATING):
            return  # it finished the download while nobody watched: the job does not go back to delivering
        else:
            self._progress(job, "delivering", sent=0, total=job.total, state=watch.state,
                           message="the device goes on with the download it had under way")
        with _QuietCheck(self, ep, watch, tenant_id) as quiet:
            while watch.state not in (State.DOWNLOADED, State.UPDATING) and not _failed(watch):
                changed = watch.changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.25)
                blocks, sent = self.files.served(name)
                last = job.last
                if (blocks, min(sent, job.total)) != (last.blocks, last.sent) or changed.is_set():
                    quiet.news()
                    self._progress(job, "delivering", sent=min(sent, job.total), blocks=blocks, state=watch.state)
                else:
                    quiet.tick()

    async def _wait_downloaded(self, job: UpdateJob, ep: str, watch: _Watch, tenant_id: str) -> None:
        with _QuietCheck(self, ep, watch, tenant_id) as quiet:
            while watch.state not in (State.DOWNLOADED, State.UPDATING):
                if _failed(watch):
                    label = result_label(watch.result)
                    raise FirmwareUpdateError(f"{ep} did not take the package: {label}", watch.result)
                changed = watch.changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.25)
                if changed.is_set():
                    quiet.news()
                else:
                    quiet.tick()
        self._progress(job, "downloaded", sent=job.total, state=watch.state, result=watch.result)

    async def _execute_and_wait(self, job: UpdateJob, ep: str, watch: _Watch, tenant_id: str) -> None:
        with self.events.queue(REGISTRATION_REGISTERED) as registrations:
            try:
                await self.management.send(ep, ExecuteRequest(UPDATE), tenant_id=tenant_id)
            except ErrorResponseError as e:
                raise FirmwareUpdateError(f"{ep} refused the Update: {e}", watch.result or None) from None
            self._progress(job, "updating", state=State.UPDATING, result=UpdateResult.INITIAL)
            rebooted = asyncio.get_running_loop().create_task(_next_registration(registrations, ep, tenant_id))
            try:
                while not rebooted.done():
                    if watch.state == State.IDLE and watch.result not in (None, UpdateResult.INITIAL):
                        break  # a device that updates without rebooting reports the result in place
                    waiter = asyncio.ensure_future(watch.changed.wait())
                    try:
                        await asyncio.wait([rebooted, waiter], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()
            finally:
                if not rebooted.done():
                    rebooted.cancel()
        if rebooted.done() and not rebooted.cancelled():
            self._progress(job, "rebooted", message="the device registered again")
        while True:  # the device may report its result a little after registering
            fw = await self._read_instance(ep, tenant_id)
            state, result = _int(fw.get(3)), _int(fw.get(5))
            if state != State.UPDATING and result not in (None, UpdateResult.INITIAL):
                break
            await asyncio.sleep(min(self.poll_interval, 0.25))
        version = await self._firmware_version(ep, tenant_id)
        reported = fw.get(7)
        pkg_version = device_text(reported) if isinstance(reported, str) and reported else None
        if result == UpdateResult.SUCCESS:
            self._finish(job, "succeeded", state=state, result=result, version=version,
                         message=f"{ep} runs {version or pkg_version or 'the new firmware'}")
            return
        label = result_label(result)
        self._finish(job, "failed", state=state, result=result, version=version,
                     message=f"{ep} reported {label}; it runs {version or 'its previous firmware'}")


class _QuietCheck:
    """Reads /5/0 in the background (:meth:`FirmwareService._check`) once a device has told nothing for
    ``quiet_check`` seconds, one read at a time, while the caller goes on listening to notifications."""

    def __init__(self, service: FirmwareService, ep: str, watch: _Watch, tenant_id: str) -> None:
        self.service, self.ep, self.watch, self.tenant_id = service, ep, watch, tenant_id
        self.quiet_since = service.clock()
        self.task: asyncio.Task[None] | None = None

    def __enter__(self) -> _QuietCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()

    def news(self) -> None:
        self.quiet_since = self.service.clock()

    def tick(self) -> None:
        if self.service.clock() - self.quiet_since < self.service.quiet_check:
            return
        if self.task is None or self.task.done():
            self.quiet_since = self.service.clock()
            self.task = asyncio.get_running_loop().create_task(
                self.service._check(self.ep, self.watch, self.tenant_id))


def package_uri(base_uri: str, name: str, sha256: str | None = None) -> str:
    """The Package URI of the delivery published as ``name``. With ``sha256`` (for an end device behind a gateway)
    it names the package's digest too (``?sha256=<hex>``): the gateway fetches one package once for all the devices
    behind it, and checks what it got. The device still verifies the package itself."""
    uri = f"{base_uri}/fw/{name}"
    return uri if sha256 is None else f"{uri}?sha256={sha256}"


async def _next_registration(queue: object, endpoint: str, tenant_id: str) -> Event:
    async for event in queue:  # type: ignore[attr-defined]
        if event.endpoint == endpoint and event.tenant_id == tenant_id:
            return event  # type: ignore[no-any-return]
    raise NotFoundError("the event queue closed")


def result_label(result: int | None) -> str:
    known = UpdateResult.known(result)
    return known.label if known is not None else f"result {result}"


def _failed(watch: _Watch) -> bool:
    return watch.state == State.IDLE and watch.result not in (None, UpdateResult.INITIAL, UpdateResult.SUCCESS,
                                                               UpdateResult.DEFERRED)


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float | str):
        with contextlib.suppress(ValueError):
            return int(value)
    return None


__all__ = [
    "FIRMWARE_DELIVERED",
    "FIRMWARE_FINISHED",
    "FIRMWARE_STARTED",
    "PHASES",
    "FirmwareService",
    "FirmwareUpdateError",
    "Method",
    "UpdateInProgressError",
    "UpdateJob",
    "UpdateProgress",
]
