"""Device Management and Information Reporting, addressed by endpoint name.

Resolves the endpoint to its live registration, refuses to talk to a queue-mode device that is asleep, and hands
the request to the :class:`DownlinkSender`.
"""

from __future__ import annotations

from collections.abc import Callable

from lwm2m_server.core.errors import ClientSleepingError, UnknownEndpointError
from lwm2m_server.core.operations import DownlinkRequest, ObserveRequest
from lwm2m_server.core.registration import Registration
from lwm2m_server.core.responses import DownlinkResponse
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.transport.downlink import Downlink, ObservationHandle

# LwM2M 1.1 Transport 6.x: a queue-mode client stays reachable for CoAP MAX_TRANSMIT_WAIT after it last spoke.
QUEUE_MODE_AWAKE_SECONDS = 93.0


class DeviceManagement:
    """Every method takes the caller's ``tenant_id`` (keyword, required): an endpoint is found only in its tenant."""

    def __init__(self, registrations: RegistrationService, sender: Downlink, *, clock: Callable[[], float],
                 awake_seconds: float = QUEUE_MODE_AWAKE_SECONDS) -> None:
        self.registrations = registrations
        self.sender = sender
        self.clock = clock
        self.awake_seconds = awake_seconds

    def registration(self, endpoint: str, *, tenant_id: str) -> Registration:
        reg = self.registrations.by_endpoint(endpoint, tenant_id=tenant_id)
        if reg is None:
            raise UnknownEndpointError(f"no device registered as {endpoint!r}")
        return reg

    def reachable(self, endpoint: str, *, tenant_id: str) -> Registration:
        reg = self.registration(endpoint, tenant_id=tenant_id)
        if reg.queue_mode and self.clock() - reg.updated_at > self.awake_seconds:
            raise ClientSleepingError(f"{endpoint} is in queue mode and asleep; it is reachable after its next Update")
        return reg

    async def send(self, endpoint: str, request: DownlinkRequest, *, timeout: float | None = None,
                   tenant_id: str) -> DownlinkResponse:
        return await self.sender.send(self.reachable(endpoint, tenant_id=tenant_id), request, timeout=timeout)

    async def observe(self, endpoint: str, request: ObserveRequest, *, timeout: float | None = None,
                      tenant_id: str) -> ObservationHandle:
        return await self.sender.observe(self.reachable(endpoint, tenant_id=tenant_id), request, timeout=timeout)
