"""Device Management and Information Reporting, addressed by endpoint name.

Resolves the endpoint to its live registration, refuses to talk to a queue-mode device that is asleep, and hands
the request to the :class:`~lwm2m_server.transport.downlink.Downlink` (which routes a device behind a gateway
through it). Knows the gateways' end devices (:class:`~lwm2m_server.registry.end_devices.EndDevices`).
"""

from __future__ import annotations

from collections.abc import Callable

from lwm2m_server.core.errors import ClientSleepingError, MalformedPayloadError, UnknownEndpointError
from lwm2m_server.core.gateway import GATEWAY_OBJECT
from lwm2m_server.core.nodes import Instance, Node, Obj
from lwm2m_server.core.operations import DownlinkRequest, ObserveRequest, ReadRequest
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.core.registration import Registration
from lwm2m_server.core.responses import DownlinkResponse
from lwm2m_server.events import EventBus
from lwm2m_server.registry.end_devices import EndDevices
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.transport.downlink import Downlink, ObservationHandle

# LwM2M 1.1 Transport 6.x: a queue-mode client stays reachable for CoAP MAX_TRANSMIT_WAIT after it last spoke.
QUEUE_MODE_AWAKE_SECONDS = 93.0
GATEWAY_PROBE_TIMEOUT = 5.0
GATEWAY_PROBE = LwM2mPath.of(3, 0)  # a gateway is asked for its Device object to see whether it is there


def end_devices_over(registrations: RegistrationService, events: EventBus, sender: Downlink, *,
                     clock: Callable[[], float],
                     endpoint_is_bound: Callable[[str, str], bool] | None = None) -> EndDevices:
    """The end-device tracker of a server: it reads gateways' /25 and probes gateways through ``sender``."""

    async def read_gateway(gateway: Registration) -> Node:
        content = (await sender.send(gateway, ReadRequest(LwM2mPath.of(GATEWAY_OBJECT)))).content
        if not isinstance(content, Obj | Instance):
            raise MalformedPayloadError(f"{gateway.endpoint} answered the Read of /25 with no object")
        return content

    async def probe_gateway(gateway: Registration) -> None:
        await sender.send(gateway, ReadRequest(GATEWAY_PROBE), timeout=GATEWAY_PROBE_TIMEOUT)

    return EndDevices(registrations, events, read_gateway, probe_gateway, clock=clock,
                      endpoint_is_bound=endpoint_is_bound)


class DeviceManagement:
    """Every method takes the caller's ``tenant_id`` (keyword, required): an endpoint is found only in its tenant."""

    def __init__(self, registrations: RegistrationService, sender: Downlink, *, clock: Callable[[], float],
                 awake_seconds: float = QUEUE_MODE_AWAKE_SECONDS, end_devices: EndDevices | None = None) -> None:
        self.registrations = registrations
        self.sender = sender
        self.end_devices = end_devices
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
