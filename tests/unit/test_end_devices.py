"""End devices behind LwM2M gateways: the /25 parser (pure, property-based) and the registry follower
(:class:`EndDevices` over a real RegistrationService on memory stores; the gateway's /25 is the test's input)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lwm2m_server.core.codec.link import Link, parse_links
from lwm2m_server.core.errors import ErrorResponseError, RequestTimeoutError
from lwm2m_server.core.gateway import end_devices, valid_prefix
from lwm2m_server.core.nodes import Instance, Node, Obj, ResourceType, SingleResource
from lwm2m_server.core.registration import RegisterParams, Registration, UpdateParams
from lwm2m_server.events import REGISTRATION_DEREGISTERED, Event, EventBus
from lwm2m_server.registry.end_devices import GATEWAY_INSTANCE, EndDevices
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.storage.memory import MemoryDeviceStore, MemoryRegistrationStore
from lwm2m_server.transport.downlink import route_to

T0 = 1_700_000_000.0


def instance(iid: int, endpoint: str, prefix: str, objects: str = "</3/0>,</5/0>") -> Instance:
    return Instance(iid, {0: SingleResource(0, ResourceType.STRING, endpoint),
                          1: SingleResource(1, ResourceType.STRING, prefix),
                          3: SingleResource(3, ResourceType.CORELNK, objects)})


def gateway_object(*entries: tuple[int, str, str]) -> Obj:
    return Obj(25, {iid: instance(iid, ep, prefix) for iid, ep, prefix in entries})


# ---------------------------------------------------------------------------------------------------- the parser


def test_end_devices_are_read_in_instance_order_with_their_links() -> None:
    listed, refused = end_devices(gateway_object((3, "c-3", "d3"), (0, "c-0", "d0")))
    assert refused == ()
    assert [(e.instance, e.endpoint, e.prefix) for e in listed] == [(0, "c-0", "d0"), (3, "c-3", "d3")]
    assert listed[0].links == parse_links("</3/0>,</5/0>")


def test_bad_instances_are_refused_one_by_one_and_the_rest_kept() -> None:
    node = Obj(25, {
        0: instance(0, "good", "d0"),
        1: instance(1, "numeric-prefix", "17"),  # could not be told from an object id
        2: instance(2, "two-segments", "a/b"),
        3: instance(3, "good", "d3"),  # the device id again
        4: instance(4, "same-prefix", "d0"),
        5: instance(5, "bad-links", "d5", "</3/x>"),
        6: Instance(6, {1: SingleResource(1, ResourceType.STRING, "d6")}),  # no device id
    })
    listed, refused = end_devices(node)
    assert [e.endpoint for e in listed] == ["good"]
    assert [r.instance for r in refused] == [1, 2, 3, 4, 5, 6]
    assert "listed twice" in refused[2].reason and "listed twice" in refused[3].reason


def test_at_most_max_devices_are_taken() -> None:
    node = gateway_object(*((i, f"c{i}", f"d{i}") for i in range(5)))
    listed, refused = end_devices(node, max_devices=3)
    assert len(listed) == 3 and [r.instance for r in refused] == [3, 4]


def test_a_read_without_instances_is_refused_not_raised() -> None:
    listed, refused = end_devices(SingleResource(0, ResourceType.STRING, "x"))
    assert listed == () and len(refused) == 1


_segment = st.text(st.sampled_from("abcXYZ019_.~-/ %"), min_size=0, max_size=70)


@given(_segment)
def test_valid_prefix_is_one_non_numeric_path_segment(prefix: str) -> None:
    ok = valid_prefix(prefix)
    if ok:
        assert "/" not in prefix and " " not in prefix and "%" not in prefix
        assert 1 <= len(prefix) <= 64 and not prefix.isdigit() and prefix not in (".", "..")


@given(st.lists(st.tuples(st.integers(0, 65534), st.sampled_from(["a", "b", "c", "d"]),
                          st.sampled_from(["p", "q", "r", "1", "x/y"])), max_size=12))
def test_parsed_end_devices_are_unique_and_valid(entries: list[tuple[int, str, str]]) -> None:
    node = Obj(25, {iid: instance(iid, ep, prefix) for iid, ep, prefix in entries})
    listed, refused = end_devices(node)
    assert len({e.endpoint for e in listed}) == len(listed) == len({e.prefix for e in listed})
    assert all(valid_prefix(e.prefix) for e in listed)
    assert len(listed) + len(refused) == len({iid for iid, _, _ in entries})


# ---------------------------------------------------------------------------------------------------- the follower


class Gateways:
    """What each gateway's /25 reads as (by endpoint), and whether it answers."""

    def __init__(self) -> None:
        self.objects: dict[str, Node] = {}
        self.silent: set[str] = set()
        self.missing: set[str] = set()  # answer 4.04 to the Read of /25
        self.reads = 0
        self.probes = 0

    async def read(self, gateway: Registration) -> Node:
        self.reads += 1
        await asyncio.sleep(0)
        if gateway.endpoint in self.silent:
            raise RequestTimeoutError(f"{gateway.endpoint} did not answer")
        if gateway.endpoint in self.missing:
            raise ErrorResponseError(0x84, "no /25")
        return self.objects[gateway.endpoint]

    async def probe(self, gateway: Registration) -> None:
        self.probes += 1
        await asyncio.sleep(0)
        if gateway.endpoint in self.silent:
            raise RequestTimeoutError(f"{gateway.endpoint} did not answer")


class World:
    def __init__(self) -> None:
        self.now = T0
        self.events = EventBus()
        self.registry = RegistrationService(MemoryRegistrationStore(), MemoryDeviceStore(), self.events,
                                            lambda: self.now, load=False)
        self.gateways = Gateways()
        self.follower = EndDevices(self.registry, self.events, self.gateways.read, self.gateways.probe,
                                   clock=lambda: self.now, retry=0.01)
        self.follower.start()
        self.remote = object()

    def register_gateway(self, endpoint: str, *entries: tuple[int, str, str], tenant: str = "t1") -> Registration:
        self.gateways.objects[endpoint] = gateway_object(*entries)
        links = (Link("/3/0"), *(Link(f"/25/{iid}") for iid, _, _ in entries))
        params = RegisterParams(endpoint, 300, "1.1", "U", links=links)
        return self.registry.register(params, address="10.0.0.1:5683", remote=self.remote, tenant_id=tenant,
                                      secure=True, identity=f"id-{endpoint}")

    def update_links(self, gateway: Registration, *entries: tuple[int, str, str]) -> None:
        self.gateways.objects[gateway.endpoint] = gateway_object(*entries)
        links = (Link("/3/0"), *(Link(f"/25/{iid}") for iid, _, _ in entries))
        self.registry.update(gateway.id, UpdateParams(links=links), address=gateway.address, remote=gateway.remote)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)
        while self.follower._syncs:
            await asyncio.sleep(0.005)

    def child(self, endpoint: str, tenant: str = "t1") -> Registration | None:
        return self.registry.by_endpoint(endpoint, tenant_id=tenant)


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


async def test_a_gateways_end_devices_become_registrations_with_a_parent_and_a_route(world: World) -> None:
    gw = world.register_gateway("gw-1", (0, "c-0", "d0"), (1, "c-1", "d1"))
    await world.settle()
    c0 = world.child("c-0")
    assert c0 is not None and c0.parent_id == gw.id and c0.path_prefix == "d0"
    assert (c0.tenant_id, c0.secure, c0.identity, c0.lifetime) == ("t1", True, "id-gw-1", 300)
    assert dict(c0.extra)[GATEWAY_INSTANCE] == "0" and c0.supports_object(5)
    assert [c.endpoint for c in world.follower.children(gw)] == ["c-0", "c-1"]
    assert world.follower.gateway_of(c0) == gw
    route = route_to(c0, world.registry.get)
    assert (route.remote, route.root_path, route.via) == (world.remote, "/d0/", "gw-1")
    assert world.child("c-0", tenant="t2") is None  # only in the gateway's tenant


async def test_devices_appearing_rebooting_and_leaving_are_followed(world: World) -> None:
    gw = world.register_gateway("gw-1", (0, "c-0", "d0"), (1, "c-1", "d1"))
    await world.settle()
    first = world.child("c-0")
    assert first is not None
    gone: list[Event] = []
    world.events.subscribe(gone.append, REGISTRATION_DEREGISTERED)
    world.update_links(gw, (2, "c-0", "d0"), (3, "c-2", "d2"))  # c-0 rebooted (new instance), c-1 left
    await world.settle()
    reasons = sorted(str(e.data["reason"]) for e in gone)
    again = world.child("c-0")
    assert again is not None and again.id != first.id and dict(again.extra)[GATEWAY_INSTANCE] == "2"
    assert world.child("c-1") is None and world.child("c-2") is not None
    assert reasons == ["left-gateway", "replaced"]
    assert [c.endpoint for c in world.follower.children(gw)] == ["c-0", "c-2"]


async def test_an_update_without_new_links_refreshes_the_end_devices(world: World) -> None:
    gw = world.register_gateway("gw-1", (0, "c-0", "d0"))
    await world.settle()
    reads = world.gateways.reads
    world.now += 200
    world.registry.update(gw.id, UpdateParams(), address=gw.address, remote=gw.remote)
    await world.settle()
    child = world.child("c-0")
    assert child is not None and child.updated_at == world.now and world.gateways.reads == reads


async def test_end_devices_go_with_their_gateway(world: World) -> None:
    gw = world.register_gateway("gw-1", (0, "c-0", "d0"), (1, "c-1", "d1"))
    await world.settle()
    world.registry.deregister(gw.id)
    assert world.child("c-0") is None and world.child("c-1") is None
    gw2 = world.register_gateway("gw-2", (0, "c-0", "d0"))
    await world.settle()
    world.now += 300 + 60  # the gateway's lifetime ran out
    world.registry.expire_due(world.now)
    assert world.child("c-0") is None and world.follower.children(gw2) == []


async def test_a_gateway_cannot_take_over_a_direct_device_or_another_gateways(world: World) -> None:
    direct = world.registry.register(RegisterParams("direct-1", 300, "1.1", "U"), address="a", remote=object(),
                                     tenant_id="t1")
    world.register_gateway("gw-1", (0, "c-0", "d0"))
    await world.settle()
    world.register_gateway("gw-2", (0, "direct-1", "d0"), (1, "c-0", "d1"), (2, "c-9", "d2"))
    await world.settle()
    assert world.child("direct-1") == direct
    c0 = world.child("c-0")
    assert c0 is not None and world.follower.gateway_of(c0) is not None
    assert world.follower.gateway_of(c0).endpoint == "gw-1"  # type: ignore[union-attr]
    assert world.child("c-9") is not None and world.follower.refused == 2


async def test_a_gateway_that_does_not_answer_is_read_again_later(world: World) -> None:
    world.gateways.silent.add("gw-1")
    world.register_gateway("gw-1", (0, "c-0", "d0"))
    await asyncio.sleep(0.05)
    assert world.child("c-0") is None and world.gateways.reads >= 2
    world.gateways.silent.clear()
    await world.settle()
    assert world.child("c-0") is not None


async def test_gateway_down_probes_once_and_marks_it_offline_until_it_speaks(world: World) -> None:
    gw = world.register_gateway("gw-1", (0, "c-0", "d0"), (1, "c-1", "d1"))
    await world.settle()
    c0, c1 = world.child("c-0"), world.child("c-1")
    assert c0 is not None and c1 is not None
    assert await world.follower.gateway_down(c0) is None and not world.follower.offline(c0)
    world.gateways.silent.add("gw-1")
    world.now += 10  # past the shared probe's life
    probes = world.gateways.probes
    down = await asyncio.gather(world.follower.gateway_down(c0), world.follower.gateway_down(c1))
    assert down == ["gw-1", "gw-1"] and world.gateways.probes == probes + 1
    assert world.follower.offline(c0) and world.follower.offline(c1)
    world.gateways.silent.clear()
    world.registry.update(gw.id, UpdateParams(), address=gw.address, remote=gw.remote)  # it is back
    assert not world.follower.offline(c0)
    direct = world.registry.register(RegisterParams("direct-1", 300, "1.1", "U"), address="a", remote=object(),
                                     tenant_id="t1")
    assert await world.follower.gateway_down(direct) is None



async def test_a_not_found_answer_means_no_end_devices_and_no_retry(world: World) -> None:
    gw = world.register_gateway("gw-1", (0, "c-0", "d0"))
    await world.settle()
    world.gateways.missing.add("gw-1")
    world.update_links(gw)  # its last /25 instance went, and the Read of /25 is 4.04
    await world.settle()
    reads = world.gateways.reads
    await asyncio.sleep(0.05)  # longer than the retry interval: no read again
    assert world.child("c-0") is None and world.gateways.reads == reads and not world.follower._syncs
    plain = world.registry.register(RegisterParams("sensor-1", 300, "1.1", "U", links=(Link("/3/0"), Link("/5/0"))),
                                    address="a", remote=object(), tenant_id="t1")
    await world.settle()
    assert world.gateways.reads == reads and plain.parent_id is None  # no /25 link: never asked


async def test_an_endpoint_with_a_credential_of_its_own_cannot_sit_behind_a_gateway(world: World) -> None:
    bound = {("t1", "meter-7")}
    world.follower.endpoint_is_bound = lambda endpoint, tenant: (tenant, endpoint) in bound
    world.register_gateway("gw-1", (0, "meter-7", "d0"), (1, "c-1", "d1"))
    await world.settle()
    assert world.child("meter-7") is None and world.child("c-1") is not None and world.follower.refused == 1
