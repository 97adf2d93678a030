"""End devices behind LwM2M gateways: each becomes a registration of its own, with its gateway as parent.

A gateway registers with ``/25/i`` instances (see :mod:`lwm2m_server.core.gateway`). When it registers, or updates
with new object links, its ``/25`` is read and the end devices are made to match: a new one is registered (same
tenant, lifetime, security and identity as its gateway; ``parent_id`` = the gateway's registration id,
``path_prefix`` = its prefix), one whose ``/25`` instance changed (a new instance id: it rebooted or came back) is
registered anew, one no longer listed is de-registered (reason ``left-gateway``). Every Update of the gateway
refreshes its end devices' lifetimes; when the gateway de-registers, expires or is replaced, they go with it (reason
``gateway-left``). Requests to an end device go through its gateway (:func:`~lwm2m_server.transport.downlink.route_to`).

Invariants: an end device is only ever registered in its gateway's tenant; a gateway cannot take over an endpoint
that is registered directly or behind another gateway, nor one that holds a DTLS credential of its own (it must
prove itself; refused and logged, the live one kept); at most one read of a
gateway's ``/25`` runs at a time (a change arriving meanwhile triggers one more read after it); a gateway found
offline by :meth:`EndDevices.gateway_down` stays marked offline until it next registers or updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from lwm2m_server.core.errors import CoapCode, ErrorResponseError, Lwm2mError, UnknownRegistrationError
from lwm2m_server.core.gateway import GATEWAY_OBJECT, EndDevice, end_devices
from lwm2m_server.core.nodes import Node, Obj
from lwm2m_server.core.rate_limit import RateLimitedError
from lwm2m_server.core.registration import RegisterParams, Registration, UpdateParams
from lwm2m_server.events import (
    REGISTRATION_DEREGISTERED,
    REGISTRATION_EXPIRED,
    REGISTRATION_REGISTERED,
    REGISTRATION_UPDATED,
    Event,
    EventBus,
)
from lwm2m_server.registry.service import RegistrationService

__all__ = ["GATEWAY_INSTANCE", "EndDevices"]

log = logging.getLogger(__name__)

GATEWAY_INSTANCE = "gw_instance"  # the extra registration parameter holding the end device's /25 instance id
PROBE_TTL = 5.0  # seconds a gateway probe's answer is reused by the end devices asking

ReadGateway = Callable[[Registration], Awaitable[Node]]
ProbeGateway = Callable[[Registration], Awaitable[None]]


class EndDevices:
    """Keeps the registry's end devices in step with their gateways' ``/25`` (see the module docstring).

    ``read_gateway(gw)`` reads ``/25`` of a gateway; ``probe_gateway(gw)`` sends it one cheap request and raises
    when it does not answer."""

    def __init__(self, registrations: RegistrationService, events: EventBus, read_gateway: ReadGateway,
                 probe_gateway: ProbeGateway, *, clock: Callable[[], float], retry: float = 5.0,
                 endpoint_is_bound: Callable[[str, str], bool] | None = None) -> None:
        """``endpoint_is_bound(endpoint, tenant_id)``: whether the endpoint holds a DTLS credential of its own
        (then it must speak for itself: no gateway may list it)."""
        self.registrations = registrations
        self.endpoint_is_bound = endpoint_is_bound
        self.events = events
        self.read_gateway = read_gateway
        self.probe_gateway = probe_gateway
        self.clock = clock
        self.retry = retry
        self._children: dict[str, dict[str, str]] = {}  # gateway registration id -> endpoint -> child registration id
        self._parent: dict[str, str] = {}  # child registration id -> gateway registration id
        self._syncs: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._offline: set[str] = set()
        self._probes: dict[str, tuple[float, asyncio.Task[bool]]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        self.refused = 0

    def start(self) -> None:
        """Index the end devices loaded with the registry and follow registrations from now on."""
        for reg in self.registrations.all():
            if reg.parent_id is not None:
                self._index(reg.parent_id, reg.endpoint, reg.id)
        self._unsubscribe = self.events.subscribe(self._on_event, (
            REGISTRATION_REGISTERED, REGISTRATION_UPDATED, REGISTRATION_DEREGISTERED, REGISTRATION_EXPIRED))

    async def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = list(self._syncs.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ queries

    def children(self, gateway: Registration) -> list[Registration]:
        """The live end devices behind ``gateway``, by endpoint."""
        found = (self.registrations.get(cid) for cid in self._children.get(gateway.id, {}).values())
        return sorted((r for r in found if r is not None), key=lambda r: r.endpoint)

    def gateway_of(self, device: Registration) -> Registration | None:
        """The live registration of the gateway ``device`` sits behind (None for a direct device)."""
        return None if device.parent_id is None else self.registrations.get(device.parent_id)

    def offline(self, device: Registration) -> bool:
        """Whether ``device`` sits behind a gateway that is gone or was found not answering."""
        return device.parent_id is not None and (
            device.parent_id in self._offline or self.registrations.get(device.parent_id) is None)

    async def gateway_down(self, device: Registration) -> str | None:
        """For an end device whose request failed: its gateway's endpoint when the gateway itself is gone or does
        not answer a probe now (one probe per gateway answers every end device asking within ``PROBE_TTL`` s);
        None when the gateway answers (the device alone failed) or for a direct device."""
        if device.parent_id is None:
            return None
        gateway = self.registrations.get(device.parent_id)
        if gateway is None:
            return "its gateway"
        if (gateway.id not in self._offline and not await self._answers(gateway)
                and self.registrations.get(gateway.id) is not None):  # not gone meanwhile
            self._offline.add(gateway.id)
        return gateway.endpoint if gateway.id in self._offline else None

    async def _answers(self, gateway: Registration) -> bool:
        now = self.clock()
        cached = self._probes.get(gateway.id)
        if cached is None or now - cached[0] > PROBE_TTL:
            cached = now, asyncio.get_running_loop().create_task(self._probe(gateway))
            self._probes[gateway.id] = cached
        return await asyncio.shield(cached[1])

    async def _probe(self, gateway: Registration) -> bool:
        try:
            await self.probe_gateway(gateway)
        except Lwm2mError as e:
            log.info("gateway %s does not answer (%s): its end devices wait for it", gateway.endpoint, e)
            return False
        return True

    # ------------------------------------------------------------------ events

    def _on_event(self, event: Event) -> None:
        reg_id = event.data.get("id")
        if not isinstance(reg_id, str):
            return
        if event.kind in (REGISTRATION_DEREGISTERED, REGISTRATION_EXPIRED):
            self._gone(reg_id)
            return
        reg = self.registrations.get(reg_id)
        if reg is None or reg.parent_id is not None:
            return
        self._offline.discard(reg.id)
        self._probes.pop(reg.id, None)
        is_gateway = _may_be_gateway(reg) and reg.supports_object(GATEWAY_OBJECT)
        if event.kind == REGISTRATION_REGISTERED:
            if is_gateway:
                self._schedule(reg.id)
            return
        if event.data.get("links_changed") and (is_gateway or reg.id in self._children):
            self._schedule(reg.id)
        elif reg.id in self._children:
            self._refresh(reg)

    def _gone(self, reg_id: str) -> None:
        gateway_id = self._parent.pop(reg_id, None)
        if gateway_id is not None:  # an end device left (or was replaced): forget it
            mine = self._children.get(gateway_id, {})
            for ep, cid in list(mine.items()):
                if cid == reg_id:
                    del mine[ep]
            return
        self._offline.discard(reg_id)
        self._probes.pop(reg_id, None)
        self._dirty.discard(reg_id)
        task = self._syncs.pop(reg_id, None)
        if task is not None:
            task.cancel()
        for cid in self._children.pop(reg_id, {}).values():
            self._parent.pop(cid, None)
            with contextlib.suppress(UnknownRegistrationError):
                self.registrations.deregister(cid, reason="gateway-left")

    def _refresh(self, gateway: Registration) -> None:
        """The gateway updated: its end devices' lifetimes restart with it, and they follow its new remote."""
        for cid in list(self._children.get(gateway.id, {}).values()):
            with contextlib.suppress(UnknownRegistrationError):
                self.registrations.update(cid, UpdateParams(lifetime=gateway.lifetime), address=gateway.address,
                                          remote=gateway.remote)

    # ------------------------------------------------------------------ reading /25

    def _schedule(self, gateway_id: str) -> None:
        if gateway_id in self._syncs:
            self._dirty.add(gateway_id)
            return
        self._syncs[gateway_id] = asyncio.get_running_loop().create_task(
            self._sync_loop(gateway_id), name=f"gateway-{gateway_id}")

    async def _sync_loop(self, gateway_id: str) -> None:
        try:
            while True:
                self._dirty.discard(gateway_id)
                gateway = self.registrations.get(gateway_id)
                if gateway is None:
                    return
                try:
                    node: Node = await self.read_gateway(gateway)
                except Lwm2mError as e:
                    if not (isinstance(e, ErrorResponseError) and e.code == CoapCode.NOT_FOUND):
                        log.warning("gateway %s: cannot read /25 (%s); trying again in %g s", gateway.endpoint, e,
                                    self.retry)
                        await asyncio.sleep(self.retry)
                        self._dirty.add(gateway_id)
                        continue
                    node = Obj(GATEWAY_OBJECT)  # 4.04: no /25 instance at all, so no end devices
                gateway = self.registrations.get(gateway_id)
                if gateway is not None:
                    self._apply(gateway, node)
                if gateway_id not in self._dirty:
                    return
        finally:
            if self._syncs.get(gateway_id) is asyncio.current_task():
                del self._syncs[gateway_id]

    def _apply(self, gateway: Registration, node: Node) -> None:
        listed, refused = end_devices(node)
        for r in refused:
            self.refused += 1
            log.warning("gateway %s: /25/%d refused: %s", gateway.endpoint, r.instance, r.reason)
        mine = self._children.setdefault(gateway.id, {})
        for entry in listed:
            current = self.registrations.get(mine.get(entry.endpoint, ""))
            if current is not None and _same(current, entry):
                continue
            if self._bound(entry.endpoint, gateway.tenant_id):
                self.refused += 1
                log.warning("gateway %s lists %s, which holds a DTLS credential of its own: refused",
                            gateway.endpoint, entry.endpoint)
                continue
            other = self.registrations.by_endpoint(entry.endpoint, tenant_id=gateway.tenant_id)
            if other is not None and other.parent_id != gateway.id:
                self.refused += 1
                where = "directly" if other.parent_id is None else "behind another gateway"
                log.warning("gateway %s lists %s, which is registered %s: refused", gateway.endpoint,
                            entry.endpoint, where)
                continue
            params = RegisterParams(entry.endpoint, gateway.lifetime, gateway.lwm2m_version, "U", gateway.queue_mode,
                                    None, ((GATEWAY_INSTANCE, str(entry.instance)),), entry.links)
            try:
                child = self.registrations.register(
                    params, address=gateway.address, remote=gateway.remote, secure=gateway.secure,
                    identity=gateway.identity, tenant_id=gateway.tenant_id, parent_id=gateway.id,
                    path_prefix=entry.prefix)
            except RateLimitedError as e:
                log.warning("gateway %s: %s not registered: %s", gateway.endpoint, entry.endpoint, e)
                continue
            self._index(gateway.id, entry.endpoint, child.id)
            log.debug("gateway %s: %s registered behind it (/25/%d, prefix %s)", gateway.endpoint, entry.endpoint,
                      entry.instance, entry.prefix)
        names = {e.endpoint for e in listed}
        for ep, cid in list(mine.items()):
            if ep not in names:
                del mine[ep]
                self._parent.pop(cid, None)
                log.debug("gateway %s: %s left it", gateway.endpoint, ep)
                with contextlib.suppress(UnknownRegistrationError):
                    self.registrations.deregister(cid, reason="left-gateway")

    def _bound(self, endpoint: str, tenant_id: str) -> bool:
        if self.endpoint_is_bound is None:
            return False
        try:
            return self.endpoint_is_bound(endpoint, tenant_id)
        except Lwm2mError as e:  # the credential store failed: refuse rather than guess
            log.warning("cannot tell whether %s holds a credential (%s): not registered behind a gateway", endpoint,
                        e)
            return True

    def _index(self, gateway_id: str, endpoint: str, child_id: str) -> None:
        self._children.setdefault(gateway_id, {})[endpoint] = child_id
        self._parent[child_id] = gateway_id


def _may_be_gateway(reg: Registration) -> bool:
    """A cheap first look (no parse of the links: most devices are not gateways): some link mentions /25."""
    return any("/25" in link.target for link in reg.links)


def _same(reg: Registration, entry: EndDevice) -> bool:
    return (reg.path_prefix == entry.prefix and reg.links == entry.links
            and dict(reg.extra).get(GATEWAY_INSTANCE) == str(entry.instance))
