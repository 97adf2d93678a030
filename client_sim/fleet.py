"""A fleet of simulated devices in one process, started and stopped with bounded concurrency.

Devices either register to one server (``Fleet(server_uri, count)``: endpoints ``prefix + str(i)``) or leave the
factory with their own bootstrap credentials (``Fleet.from_credentials(records)``: one device per record, named
as the record says, bootstrapping first).

Chosen devices get chosen faults: ``faults`` maps an endpoint to its :class:`~client_sim.firmware.Faults`, or is a
function of (index, endpoint) giving them (None: the device keeps the faults of its firmware options).

Invariants: at most ``concurrency`` devices are starting (or stopping) at a time; the status counts always add
up to the number of devices; ``stop()`` stops every device that was started, even when ``start()`` was cancelled
half-way. A device costs no thread and, once registered, one socket (its server connection).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from client_sim.credentials import FactoryCredentials
from client_sim.device import DeviceState, SimulatedDevice
from client_sim.firmware import Faults
from lwm2m_server.core.model.definitions import ObjectModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """How many devices are in each state; ``pending`` = not started yet, bootstrapping or (re-)registering
    (``bootstrapping`` says how many of them are bootstrapping)."""

    total: int
    pending: int
    registered: int
    failed: int
    stopped: int
    bootstrapping: int = 0
    offline: int = 0  # in an outage (fault injection)

    def __str__(self) -> str:
        boot = f" ({self.bootstrapping} bootstrapping)" if self.bootstrapping else ""
        offline = f", {self.offline} offline" if self.offline else ""
        return (f"{self.registered}/{self.total} registered, {self.pending} pending{boot}, {self.failed} failed"
                f"{offline}, {self.stopped} stopped")


ProgressListener = Callable[[FleetStatus], None]
FaultPlan = Callable[[int, str], Faults | None] | Mapping[str, Faults]
DeviceListener = Callable[[SimulatedDevice, DeviceState, DeviceState], None]


class Fleet:
    """``count`` simulated devices registering to one server, or one device per factory record."""

    def __init__(
        self,
        server_uri: str | None,
        count: int | None = None,
        *,
        credentials: Sequence[FactoryCredentials] = (),
        prefix: str = "sim-",
        lifetime: int = 300,
        lwm2m_version: str = "1.1",
        bind_host: str = "127.0.0.1",
        concurrency: int = 50,
        model: ObjectModel | None = None,
        on_progress: ProgressListener | None = None,
        on_device: DeviceListener | None = None,
        options_for: Callable[[int], Mapping[str, Any]] | None = None,
        faults: FaultPlan | None = None,
        **device_options: Any,
    ) -> None:
        """``device_options`` go to every device; ``options_for(i)`` overrides them for device ``i``. With
        ``credentials``, device ``i`` is ``credentials[i]`` fresh from the factory (the first ``count`` records
        when ``count`` is given); ``server_uri`` may then be None (the devices learn it from the bootstrap).
        ``faults`` (a mapping endpoint -> Faults, or a function of (index, endpoint)) gives chosen devices chosen
        faults; they win over a ``faults`` option."""
        records = list(credentials)
        if records:
            count = len(records) if count is None else min(count, len(records))
            records = records[:count]
        elif server_uri is None or count is None:
            raise ValueError("a fleet needs a server URI and a count, or factory credentials")
        if count < 0:
            raise ValueError("count must be >= 0")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self._on_progress = on_progress
        self._on_device = on_device
        self._counts: Counter[DeviceState] = Counter({DeviceState.IDLE: count})
        shared_model = model if model is not None else ObjectModel.default()
        self.devices: list[SimulatedDevice] = []
        for i in range(count):
            endpoint = records[i].endpoint if records else f"{prefix}{i}"
            options = {**device_options, **(options_for(i) if options_for is not None else {})}
            chosen = _faults_for(faults, i, endpoint)
            if chosen is not None:
                options["faults"] = chosen
            self.devices.append(SimulatedDevice(
                endpoint, server_uri, lifetime=lifetime, lwm2m_version=lwm2m_version, bind_host=bind_host,
                model=shared_model, on_state=self._device_state, factory=records[i] if records else None,
                **options))
        self._started: list[SimulatedDevice] = []
        self._stopping = False

    @classmethod
    def from_credentials(cls, credentials: Sequence[FactoryCredentials], count: int | None = None,
                         **options: Any) -> Fleet:
        """One device per factory record (the first ``count``), each bootstrapping before it registers."""
        if not credentials:
            raise ValueError("no factory credentials")
        return cls(options.pop("server_uri", None), count, credentials=credentials, **options)

    @property
    def status(self) -> FleetStatus:
        c = self._counts
        return FleetStatus(
            total=len(self.devices),
            pending=c[DeviceState.IDLE] + c[DeviceState.REGISTERING] + c[DeviceState.BOOTSTRAPPING],
            registered=c[DeviceState.REGISTERED],
            failed=c[DeviceState.FAILED],
            stopped=c[DeviceState.STOPPED],
            bootstrapping=c[DeviceState.BOOTSTRAPPING],
            offline=c[DeviceState.OFFLINE],
        )

    def _device_state(self, device: SimulatedDevice, old: DeviceState, new: DeviceState) -> None:
        self._counts[old] -= 1
        self._counts[new] += 1
        if self._on_device is not None:
            self._on_device(device, old, new)
        if self._on_progress is not None:
            self._on_progress(self.status)

    async def start(self, *, timeout_per_device: float | None = 30.0) -> FleetStatus:
        """Start every device (at most ``concurrency`` at a time) and wait for each first Register outcome."""
        semaphore = asyncio.Semaphore(self.concurrency)

        async def start_one(device: SimulatedDevice) -> None:
            async with semaphore:
                if self._stopping:
                    return
                self._started.append(device)
                try:
                    await device.start(timeout=timeout_per_device)
                except OSError as e:  # out of sockets or file descriptors
                    log.warning("%s: cannot start: %s", device.endpoint, e)

        await asyncio.gather(*(start_one(d) for d in self.devices))
        return self.status

    async def stop(self, *, deregister: bool = True, timeout: float = 5.0) -> FleetStatus:
        """De-register and stop every started device, at most ``concurrency`` at a time."""
        self._stopping = True
        semaphore = asyncio.Semaphore(self.concurrency)

        async def stop_one(device: SimulatedDevice) -> None:
            async with semaphore:
                try:
                    await device.stop(deregister=deregister, timeout=timeout)
                except Exception:
                    log.exception("%s: stop failed", device.endpoint)

        await asyncio.gather(*(stop_one(d) for d in self._started))
        self._started.clear()
        return self.status

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _faults_for(plan: FaultPlan | None, index: int, endpoint: str) -> Faults | None:
    if plan is None:
        return None
    if isinstance(plan, Mapping):
        return plan.get(endpoint)
    return plan(index, endpoint)
