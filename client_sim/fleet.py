"""A fleet of simulated devices in one process, started and stopped with bounded concurrency.

Invariants: endpoints are ``prefix + str(i)`` for i in 0..count-1; at most ``concurrency`` devices are starting
(or stopping) at a time; the status counts always add up to ``count``; ``stop()`` stops every device that was
started, even when ``start()`` was cancelled half-way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from client_sim.device import DeviceState, SimulatedDevice
from lwm2m_server.core.model.definitions import ObjectModel

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """How many devices are in each state; ``pending`` = not started yet or (re-)registering."""

    total: int
    pending: int
    registered: int
    failed: int
    stopped: int

    def __str__(self) -> str:
        return (f"{self.registered}/{self.total} registered, {self.pending} pending, {self.failed} failed, "
                f"{self.stopped} stopped")


ProgressListener = Callable[[FleetStatus], None]
DeviceListener = Callable[[SimulatedDevice, DeviceState, DeviceState], None]


class Fleet:
    """``count`` simulated devices registering to one server."""

    def __init__(
        self,
        server_uri: str,
        count: int,
        *,
        prefix: str = "sim-",
        lifetime: int = 300,
        lwm2m_version: str = "1.1",
        bind_host: str = "127.0.0.1",
        concurrency: int = 50,
        model: ObjectModel | None = None,
        on_progress: ProgressListener | None = None,
        on_device: DeviceListener | None = None,
        options_for: Callable[[int], Mapping[str, Any]] | None = None,
        **device_options: Any,
    ) -> None:
        """``device_options`` go to every device; ``options_for(i)`` overrides them for device ``i``."""
        if count < 0:
            raise ValueError("count must be >= 0")
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.concurrency = concurrency
        self._on_progress = on_progress
        self._on_device = on_device
        self._counts: Counter[DeviceState] = Counter({DeviceState.IDLE: count})
        shared_model = model if model is not None else ObjectModel.default()
        self.devices: list[SimulatedDevice] = [
            SimulatedDevice(
                f"{prefix}{i}", server_uri, lifetime=lifetime, lwm2m_version=lwm2m_version, bind_host=bind_host,
                model=shared_model, on_state=self._device_state,
                **{**device_options, **(options_for(i) if options_for is not None else {})},
            )
            for i in range(count)
        ]
        self._started: list[SimulatedDevice] = []
        self._stopping = False

    @property
    def status(self) -> FleetStatus:
        c = self._counts
        return FleetStatus(
            total=len(self.devices),
            pending=c[DeviceState.IDLE] + c[DeviceState.REGISTERING],
            registered=c[DeviceState.REGISTERED],
            failed=c[DeviceState.FAILED],
            stopped=c[DeviceState.STOPPED],
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
