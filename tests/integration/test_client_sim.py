"""Simulated devices over real loopback UDP: a tiny resource directory made with aiocoap stands in for the
LwM2M server (its context also sends the downlink requests, as a server does from its registration socket).

Every await is bounded by ``asyncio.wait_for``; every device and context a test starts is stopped; no assertion
depends on how long something took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.resource import PathCapable, Resource

from client_sim.device import DeviceState, SimulatedDevice
from client_sim.errors import BadValueError, NotAuthorizedError, OperationNotAllowedError, PathNotFoundError
from client_sim.fleet import Fleet
from client_sim.objects import ObjectTree, parse_execute_arguments
from lwm2m_server.coap.udp import bound_port
from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
)
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.core.registration import parse_register

T = 10.0  # bound on every wait
P = LwM2mPath.parse
F = ContentFormat

# --------------------------------------------------------------------------------------------- test object model

_R = ResourceDefinition
TEST_OBJECT = ObjectDefinition(
    33000, "Sim Test", "1.0", "1.1", True, False, "urn:oma:lwm2m:x:33000",
    {
        0: _R(0, "Blob", "RW", False, True, ResourceType.OPAQUE),
        1: _R(1, "Level", "RW", False, False, ResourceType.INTEGER, range="0..100"),
        2: _R(2, "Ratio", "RW", False, False, ResourceType.FLOAT),
        3: _R(3, "Link", "RW", False, False, ResourceType.OBJLNK),
        4: _R(4, "Stamp", "RW", False, False, ResourceType.TIME),
        5: _R(5, "Flag", "RW", False, False, ResourceType.BOOLEAN),
        6: _R(6, "Counts", "RW", True, False, ResourceType.UNSIGNED_INTEGER),
        7: _R(7, "Big", "R", False, False, ResourceType.OPAQUE),
        8: _R(8, "Poke", "E", False, False, ResourceType.NONE),
    },
)
MODEL = ObjectModel.default().with_definitions([TEST_OBJECT])
BIG = bytes(range(256)) * 16  # 4 KiB: forces Block2 on reads


def sample_object() -> Obj:
    return Obj.of(33000, [Instance.of(0, [
        SingleResource(0, ResourceType.OPAQUE, b"\x00\x01\xfe"),
        SingleResource(1, ResourceType.INTEGER, 50),
        SingleResource(2, ResourceType.FLOAT, 0.5),
        SingleResource(3, ResourceType.OBJLNK, ObjectLink(3, 0)),
        SingleResource(4, ResourceType.TIME, 1_700_000_000),
        SingleResource(5, ResourceType.BOOLEAN, True),
        MultipleResource(6, ResourceType.UNSIGNED_INTEGER, {0: 1, 1: 2}),
        SingleResource(7, ResourceType.OPAQUE, BIG),
        SingleResource(8, ResourceType.NONE, None),
    ])])


# --------------------------------------------------------------------------------------------- the stand-in server


@dataclass(frozen=True)
class RdEvent:
    kind: str  # register | update | deregister
    reg_id: str
    endpoint: str
    query: tuple[str, ...]
    payload: bytes
    remote: str


class ResourceDirectory(Resource, PathCapable):
    """POST /rd registers (2.01, Location-Path rd/<n>), POST /rd/<n> updates, DELETE /rd/<n> de-registers;
    an unknown /rd/<n> gets 4.04. Every request is recorded as an :class:`RdEvent`."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[RdEvent] = []
        self.live: dict[str, str] = {}  # registration id -> endpoint
        self.context: Context | None = None
        self.uri = ""
        self._next = 0
        self._changed = asyncio.Event()

    def _record(self, event: RdEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = asyncio.Event()

    async def render_post(self, request: Message) -> Message:
        path = request.opt.uri_path
        query = tuple(request.opt.uri_query)
        if path == ("rd",):
            endpoint = next(q[3:] for q in query if q.startswith("ep="))
            self._next += 1
            reg_id = str(self._next)
            self.live[reg_id] = endpoint
            self._record(RdEvent("register", reg_id, endpoint, query, request.payload, request.remote.hostinfo))
            return Message(code=Code.CREATED, location_path=("rd", reg_id))
        if len(path) == 2 and path[0] == "rd" and path[1] in self.live:
            self._record(RdEvent("update", path[1], self.live[path[1]], query, request.payload,
                                 request.remote.hostinfo))
            return Message(code=Code.CHANGED)
        return Message(code=Code.NOT_FOUND)

    async def render_delete(self, request: Message) -> Message:
        path = request.opt.uri_path
        if len(path) == 2 and path[0] == "rd" and path[1] in self.live:
            endpoint = self.live.pop(path[1])
            self._record(RdEvent("deregister", path[1], endpoint, (), b"", request.remote.hostinfo))
            return Message(code=Code.DELETED)
        return Message(code=Code.NOT_FOUND)

    def of(self, kind: str, endpoint: str | None = None) -> list[RdEvent]:
        return [e for e in self.events if e.kind == kind and (endpoint is None or e.endpoint == endpoint)]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = T) -> None:
        async def waiting() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(waiting(), timeout)

    async def request(self, code: Code, device: SimulatedDevice, path: str, *, payload: bytes = b"",
                      content_format: int | None = None, accept: int | None = None,
                      query: tuple[str, ...] = ()) -> Message:
        """A downlink request to ``device`` (block-wise handled by aiocoap), bounded by T."""
        assert self.context is not None
        msg = Message(code=code, uri=device.uri + path, payload=payload)
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        if query:
            msg.opt.uri_query = query
        return await asyncio.wait_for(self.context.request(msg).response, T)


@pytest.fixture
async def rd() -> AsyncIterator[ResourceDirectory]:
    directory = ResourceDirectory()
    directory.context = await Context.create_server_context(directory, bind=("127.0.0.1", 0), transports=["udp6"])
    directory.uri = f"coap://127.0.0.1:{bound_port(directory.context)}"
    yield directory
    await directory.context.shutdown()


async def started(rd: ResourceDirectory, endpoint: str = "dev-1", **options: object) -> SimulatedDevice:
    options.setdefault("drift_interval", 0)
    options.setdefault("model", MODEL)
    options.setdefault("extra_objects", [sample_object()])
    device = SimulatedDevice(endpoint, rd.uri, **options)  # type: ignore[arg-type]
    assert await device.start(timeout=T)
    return device


@pytest.fixture
async def device(rd: ResourceDirectory) -> AsyncIterator[SimulatedDevice]:
    dev = await started(rd)
    yield dev
    await asyncio.wait_for(dev.stop(), T)


def without_clock(node: Node) -> Node:
    """Drop /3/0/13 (Current Time follows the clock, two reads may differ by a second)."""
    if isinstance(node, Obj) and node.id == 3:
        return Obj(3, {i: without_clock(inst) for i, inst in node.instances.items()})  # type: ignore[misc]
    if isinstance(node, Instance) and 13 in node.resources:
        return Instance(node.id, {k: v for k, v in node.resources.items() if k != 13})
    return node


# --------------------------------------------------------------------------------------------- registration


async def test_register_query_payload_and_source_address(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    [reg] = rd.of("register")
    assert reg.query == ("ep=dev-1", "lt=300", "lwm2m=1.1", "b=U")
    assert reg.payload.decode() == ('</>;rt="oma.lwm2m";ct="0 42 11542 110 112 11544",'
                                    "</1/0>,</3>;ver=1.2,</3/0>,</4>;ver=1.3,</4/0>,</33000/0>")
    assert reg.remote == f"127.0.0.1:{device.address[1]}"  # Register comes from the serving socket
    assert device.location == ("rd", reg.reg_id)
    assert device.state is DeviceState.REGISTERED
    params = parse_register(reg.query, reg.payload)  # the core's parser accepts what the device sends
    assert params.endpoint == "dev-1" and params.lwm2m_version == "1.1"


async def test_object_5_is_announced_and_security_never(rd: ResourceDirectory) -> None:
    firmware = Obj.of(5, [Instance.of(0, [SingleResource(1, ResourceType.STRING, ""),
                                          SingleResource(3, ResourceType.INTEGER, 0),
                                          SingleResource(5, ResourceType.INTEGER, 0),
                                          SingleResource(9, ResourceType.INTEGER, 2)])])
    dev = await started(rd, "fw-1", extra_objects=[firmware], lwm2m_version="1.0")
    try:
        [reg] = rd.of("register", "fw-1")
        assert "lwm2m=1.0" in reg.query
        text = reg.payload.decode()
        assert text.endswith(",</1/0>,</3>;ver=1.2,</3/0>,</4>;ver=1.3,</4/0>,</5>;ver=1.2,</5/0>")
        assert "</0" not in text
    finally:
        await asyncio.wait_for(dev.stop(), T)


async def test_update_before_the_lifetime_runs_out(rd: ResourceDirectory) -> None:
    dev = await started(rd, "short-1", lifetime=2)
    try:
        await rd.wait_until(lambda: len(rd.of("update", "short-1")) >= 2)
        updates = rd.of("update", "short-1")
        assert all(u.query == () and u.payload == b"" for u in updates)  # nothing changed: a bare Update
        assert {u.reg_id for u in updates} == {dev.location[1]}  # type: ignore[index]
        assert len(rd.of("register", "short-1")) == 1
    finally:
        await asyncio.wait_for(dev.stop(), T)


async def test_update_trigger_lifetime_write_and_reregistration_on_404(
    rd: ResourceDirectory, device: SimulatedDevice
) -> None:
    assert (await rd.request(Code.POST, device, "/1/0/8")).code == Code.CHANGED
    await rd.wait_until(lambda: len(rd.of("update")) == 1)

    resp = await rd.request(Code.PUT, device, "/1/0/1", payload=b"120", content_format=F.TEXT)
    assert resp.code == Code.CHANGED
    await rd.wait_until(lambda: len(rd.of("update")) == 2)
    assert rd.of("update")[1].query == ("lt=120",)

    rd.live.clear()  # the server forgets the device: the next Update gets 4.04, the device registers again
    device.request_update()
    await rd.wait_until(lambda: len(rd.of("register")) == 2)
    assert "lt=120" in rd.of("register")[1].query
    await device.wait_for(lambda d: d.location == ("rd", rd.of("register")[1].reg_id), T)


async def test_deregister_on_stop(rd: ResourceDirectory) -> None:
    dev = await started(rd, "bye-1")
    reg_id = dev.location[1]  # type: ignore[index]
    await asyncio.wait_for(dev.stop(), T)
    [bye] = rd.of("deregister")
    assert (bye.reg_id, bye.endpoint) == (reg_id, "bye-1")
    assert dev.state is DeviceState.STOPPED and dev.counters.deregisters == 1
    await asyncio.wait_for(dev.stop(), T)  # idempotent


async def test_registration_failure_is_reported_and_retried(rd: ResourceDirectory) -> None:
    dev = SimulatedDevice("nobody", "coap://127.0.0.1:9", request_timeout=0.5, drift_interval=0, model=MODEL)
    try:
        assert await dev.start(timeout=T) is False
        assert dev.state is DeviceState.FAILED
    finally:
        await asyncio.wait_for(dev.stop(), T)
    assert dev.state is DeviceState.STOPPED


# --------------------------------------------------------------------------------------------- read


@pytest.mark.parametrize("fmt", [F.TLV, F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR])
@pytest.mark.parametrize("path", ["/3", "/3/0", "/3/0/6", "/3/0/6/1", "/3/0/9", "/33000/0", "/33000/0/7"])
async def test_read_every_level_in_every_format(
    rd: ResourceDirectory, device: SimulatedDevice, fmt: ContentFormat, path: str
) -> None:
    resp = await rd.request(Code.GET, device, path, accept=fmt)
    assert resp.code == Code.CONTENT, resp.payload
    assert int(resp.opt.content_format) == fmt
    node = registry.decode(resp.payload, fmt, P(path), MODEL)
    assert without_clock(node) == without_clock(device.objects.read(P(path)))


async def test_read_text_opaque_and_defaults(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    cases = [("/3/0/0", None, F.TEXT, b"SCRATCh"), ("/3/0/9", F.TEXT, F.TEXT, b"100"),
             ("/33000/0/2", None, F.TEXT, b"0.5"), ("/33000/0/3", None, F.TEXT, b"3:0"),
             ("/33000/0/5", None, F.TEXT, b"1"), ("/3/0/6/1", F.TEXT, F.TEXT, b"5"),
             ("/33000/0/0", None, F.OPAQUE, b"\x00\x01\xfe"), ("/33000/0/0", F.OPAQUE, F.OPAQUE, b"\x00\x01\xfe"),
             ("/33000/0/7", None, F.OPAQUE, BIG)]
    for path, accept, fmt, payload in cases:
        resp = await rd.request(Code.GET, device, path, accept=accept)
        assert (resp.code, int(resp.opt.content_format), resp.payload) == (Code.CONTENT, fmt, payload), path
    resp = await rd.request(Code.GET, device, "/3/0")  # bigger than one value: SenML CBOR for LwM2M 1.1
    assert (resp.code, int(resp.opt.content_format)) == (Code.CONTENT, F.SENML_CBOR)
    resp = await rd.request(Code.GET, device, "/3/0/6")
    assert int(resp.opt.content_format) == F.SENML_CBOR


async def test_lwm2m_1_0_device_answers_in_tlv(rd: ResourceDirectory) -> None:
    dev = await started(rd, "old-1", lwm2m_version="1.0")
    try:
        resp = await rd.request(Code.GET, dev, "/3/0")
        assert (resp.code, int(resp.opt.content_format)) == (Code.CONTENT, F.TLV)
        assert registry.decode(resp.payload, F.TLV, P("/3/0"), MODEL).resources[0].value == "SCRATCh"  # type: ignore[union-attr]
    finally:
        await asyncio.wait_for(dev.stop(), T)


async def test_big_read_is_blockwise(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    """Ask for the first 64-byte block explicitly: the device answers with Block2 and more=1."""
    assert rd.context is not None
    msg = Message(code=Code.GET, uri=device.uri + "/33000/0/7", block2=(0, False, 2))
    resp = await asyncio.wait_for(rd.context.request(msg, handle_blockwise=False).response, T)
    assert resp.code == Code.CONTENT
    assert resp.opt.block2 is not None and resp.opt.block2.more and resp.opt.block2.size_exponent == 2
    assert resp.payload == BIG[:64]


async def test_read_current_time_follows_a_written_clock(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    assert (await rd.request(Code.PUT, device, "/3/0/13", payload=b"1000", content_format=F.TEXT)).code == Code.CHANGED
    now = int((await rd.request(Code.GET, device, "/3/0/13")).payload)
    assert 1000 <= now < 1000 + 3600


# --------------------------------------------------------------------------------------------- write


async def test_write_replace_and_partial_update(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    # replace one resource (text)
    resp = await rd.request(Code.PUT, device, "/3/0/14", payload=b"+05:00", content_format=F.TEXT)
    assert resp.code == Code.CHANGED
    assert (await rd.request(Code.GET, device, "/3/0/14")).payload == b"+05:00"

    # replace an instance (TLV): optional writable resources left out are removed, read-only ones stay
    server = Instance.of(0, [SingleResource(1, ResourceType.INTEGER, 600),
                             SingleResource(6, ResourceType.BOOLEAN, False),
                             SingleResource(7, ResourceType.STRING, "U")])
    payload = registry.encode(server, P("/1/0"), F.TLV, MODEL)
    assert (await rd.request(Code.PUT, device, "/1/0", payload=payload, content_format=F.TLV)).code == Code.CHANGED
    after = device.objects.read(P("/1/0"))
    assert isinstance(after, Instance)
    assert sorted(after.resources) == [0, 1, 6, 7]
    assert after.resources[1] == SingleResource(1, ResourceType.INTEGER, 600)

    # partial update of an instance (SenML JSON): multiple resources merge, others stay
    part = Instance.of(0, [SingleResource(1, ResourceType.INTEGER, 70),
                           MultipleResource(6, ResourceType.UNSIGNED_INTEGER, {2: 3})])
    payload = registry.encode(part, P("/33000/0"), F.SENML_JSON, MODEL)
    resp = await rd.request(Code.POST, device, "/33000/0", payload=payload, content_format=F.SENML_JSON)
    assert resp.code == Code.CHANGED
    assert device.objects.get_value(P("/33000/0/6")) == {0: 1, 1: 2, 2: 3}
    assert device.objects.get_value(P("/33000/0/1")) == 70
    assert device.objects.get_value(P("/33000/0/0")) == b"\x00\x01\xfe"

    # replace a multiple resource (SenML CBOR), then one resource instance (text)
    multi = MultipleResource(6, ResourceType.UNSIGNED_INTEGER, {5: 9})
    payload = registry.encode(multi, P("/33000/0/6"), F.SENML_CBOR, MODEL)
    resp = await rd.request(Code.PUT, device, "/33000/0/6", payload=payload, content_format=F.SENML_CBOR)
    assert resp.code == Code.CHANGED and device.objects.get_value(P("/33000/0/6")) == {5: 9}
    resp = await rd.request(Code.PUT, device, "/33000/0/6/5", payload=b"11", content_format=F.TEXT)
    assert resp.code == Code.CHANGED and device.objects.get_value(P("/33000/0/6")) == {5: 11}

    # a big opaque write goes block-wise (Block1) and lands whole
    resp = await rd.request(Code.PUT, device, "/33000/0/0", payload=BIG, content_format=F.OPAQUE)
    assert resp.code == Code.CHANGED and device.objects.get_value(P("/33000/0/0")) == BIG


async def test_write_composite_is_all_or_nothing(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    nodes: dict[LwM2mPath, Node] = {P("/3/0/14"): SingleResource(14, ResourceType.STRING, "+03:00"),
                                    P("/33000/0/1"): SingleResource(1, ResourceType.INTEGER, 7)}
    for fmt in (F.SENML_JSON, F.SENML_CBOR, F.LWM2M_CBOR):
        payload = registry.encode_composite(nodes, fmt, MODEL)
        assert (await rd.request(Code.iPATCH, device, "/", payload=payload, content_format=fmt)).code == Code.CHANGED
    assert device.objects.get_value(P("/3/0/14")) == "+03:00" and device.objects.get_value(P("/33000/0/1")) == 7

    bad = {P("/3/0/14"): SingleResource(14, ResourceType.STRING, "+09:00"),
           P("/3/0/0"): SingleResource(0, ResourceType.STRING, "Other")}
    payload = registry.encode_composite(bad, F.SENML_JSON, MODEL)
    resp = await rd.request(Code.iPATCH, device, "/", payload=payload, content_format=F.SENML_JSON)
    assert resp.code == Code.METHOD_NOT_ALLOWED
    assert device.objects.get_value(P("/3/0/14")) == "+03:00"


async def test_read_composite(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    paths = [P("/3/0/0"), P("/1/0/1"), P("/3/0/6"), P("/33000/0/99")]
    for fmt in (F.SENML_JSON, F.SENML_CBOR):
        resp = await rd.request(Code.FETCH, device, "/", payload=registry.encode_paths(paths, fmt), content_format=fmt)
        assert (resp.code, int(resp.opt.content_format)) == (Code.CONTENT, fmt)
        values = registry.decode_composite(resp.payload, fmt, MODEL)
        assert values[P("/3/0/0")] == SingleResource(0, ResourceType.STRING, "SCRATCh")
        assert values[P("/1/0/1")] == SingleResource(1, ResourceType.INTEGER, 300)
        assert values[P("/3/0/6/1")] == ResourceInstance(1, ResourceType.INTEGER, 5)
        assert not any(P("/33000/0/99").covers(p) for p in values)  # a missing path is left out
    payload = registry.encode_paths([P("/3/0/9")], F.SENML_JSON)
    resp = await rd.request(Code.FETCH, device, "/", payload=payload, content_format=F.SENML_JSON, accept=F.LWM2M_CBOR)
    assert (resp.code, int(resp.opt.content_format)) == (Code.CONTENT, F.LWM2M_CBOR)
    assert registry.decode_composite(resp.payload, F.LWM2M_CBOR, MODEL)[P("/3/0/9")].value == 100  # type: ignore[union-attr]
    resp = await rd.request(Code.FETCH, device, "/", payload=registry.encode_paths([P("/0/0")], F.SENML_JSON),
                            content_format=F.SENML_JSON)
    assert resp.code == Code.UNAUTHORIZED


# --------------------------------------------------------------------------------------------- attributes, discover


async def test_write_attributes_then_discover(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    resp = await rd.request(Code.PUT, device, "/3/0/9", query=("pmin=1", "pmax=30", "gt=50", "st=2"))
    assert resp.code == Code.CHANGED
    assert (await rd.request(Code.PUT, device, "/3", query=("pmax=60",))).code == Code.CHANGED

    resp = await rd.request(Code.GET, device, "/3/0/9", accept=F.LINK)
    assert (resp.code, int(resp.opt.content_format)) == (Code.CONTENT, F.LINK)
    assert resp.payload == b"</3/0/9>;pmin=1;pmax=30;gt=50;st=2"

    resp = await rd.request(Code.GET, device, "/3", accept=F.LINK)
    links = {lk.target: lk for lk in link_format.decode(resp.payload)}
    assert links["/3"].get("pmax") == "60" and links["/3"].get("ver") == "1.2"
    assert links["/3/0/6"].get("dim") == "2" and links["/3/0/9"].get("gt") == "50"
    assert "/3/0/4" in links  # executable resources are discovered too

    resp = await rd.request(Code.GET, device, "/3/0/6", accept=F.LINK)
    assert resp.payload == b"</3/0/6>;dim=2;pmax=60,</3/0/6/0>,</3/0/6/1>"  # inherited pmax, instances listed

    assert (await rd.request(Code.PUT, device, "/3/0/9", query=("pmin", "st"))).code == Code.CHANGED  # removal
    assert (await rd.request(Code.GET, device, "/3/0/9", accept=F.LINK)).payload == b"</3/0/9>;pmax=30;gt=50"

    for path, query in [("/3/0", ("gt=5",)), ("/3/0/9", ("pmin=10", "pmax=5")), ("/3/0/9", ("lt=60",)),
                        ("/3/0/9", ("bogus=1",)), ("/3/0/14", ("gt=1",)), ("/3/0/9", ("pmin=x",))]:
        assert (await rd.request(Code.PUT, device, path, query=query)).code == Code.BAD_REQUEST, (path, query)


# --------------------------------------------------------------------------------------------- execute, create, delete


async def test_execute_reboot_registers_again(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    assert (await rd.request(Code.POST, device, "/3/0/4")).code == Code.CHANGED
    await rd.wait_until(lambda: len(rd.of("register", "dev-1")) == 2)
    await device.wait_for(lambda d: d.state is DeviceState.REGISTERED and d.counters.registers == 2, T)
    assert device.counters.reboots == 1
    assert device.location == ("rd", rd.of("register")[1].reg_id)


async def test_execute_arguments_and_factory_reset(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    seen: list[str] = []
    device.objects.on_execute(P("/33000/0/8"), seen.append)
    resp = await rd.request(Code.POST, device, "/33000/0/8", payload=b"0='a,b',3")
    assert resp.code == Code.CHANGED and seen == ["0='a,b',3"]
    assert (await rd.request(Code.POST, device, "/33000/0/8", payload=b"x")).code == Code.BAD_REQUEST

    await rd.request(Code.PUT, device, "/3/0/14", payload=b"+07:00", content_format=F.TEXT)
    assert (await rd.request(Code.POST, device, "/3/0/5")).code == Code.CHANGED
    await device.wait_for(lambda d: d.counters.registers == 2 and d.state is DeviceState.REGISTERED, T)
    assert device.objects.get_value(P("/3/0/14")) == "+00:00"


async def test_create_and_delete(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    new = Instance.of(1, [SingleResource(0, ResourceType.OPAQUE, b"hi"), SingleResource(1, ResourceType.INTEGER, 9)])
    payload = registry.encode(Obj.of(33000, [new]), P("/33000"), F.SENML_JSON, MODEL)
    resp = await rd.request(Code.POST, device, "/33000", payload=payload, content_format=F.SENML_JSON)
    assert (resp.code, tuple(resp.opt.location_path)) == (Code.CREATED, ("33000", "1"))
    assert (await rd.request(Code.GET, device, "/33000/1/1")).payload == b"9"
    await rd.wait_until(lambda: any(b"</33000/1>" in u.payload for u in rd.of("update")))

    # TLV with the bare resources: the device picks the id
    bare = Instance.of(0, [SingleResource(0, ResourceType.OPAQUE, b"x")])
    payload = registry.encode(bare, P("/33000/0"), F.TLV, MODEL)
    resp = await rd.request(Code.POST, device, "/33000", payload=payload, content_format=F.TLV)
    assert (resp.code, tuple(resp.opt.location_path)) == (Code.CREATED, ("33000", "2"))

    payload = registry.encode(Obj.of(3, [Instance.of(1, [])]), P("/3"), F.TLV, MODEL)
    resp = await rd.request(Code.POST, device, "/3", payload=payload, content_format=F.TLV)
    assert resp.code == Code.BAD_REQUEST  # object 3 is single-instance

    assert (await rd.request(Code.DELETE, device, "/33000/1")).code == Code.DELETED
    assert (await rd.request(Code.GET, device, "/33000/1")).code == Code.NOT_FOUND
    await rd.wait_until(lambda: b"</33000/1>" not in rd.of("update")[-1].payload
                        and b"</33000/2>" in rd.of("update")[-1].payload)
    assert (await rd.request(Code.DELETE, device, "/33000/1")).code == Code.NOT_FOUND
    assert (await rd.request(Code.DELETE, device, "/3/0")).code == Code.METHOD_NOT_ALLOWED
    assert (await rd.request(Code.DELETE, device, "/33000")).code == Code.METHOD_NOT_ALLOWED


# --------------------------------------------------------------------------------------------- errors


async def test_error_codes(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    cases: list[tuple[Code, str, dict[str, object], Code]] = [
        (Code.GET, "/3/0/99", {}, Code.NOT_FOUND),
        (Code.GET, "/77", {}, Code.NOT_FOUND),
        (Code.GET, "/3/1", {}, Code.NOT_FOUND),
        (Code.GET, "/3/0/6/7", {}, Code.NOT_FOUND),
        (Code.GET, "/.well-known/core", {}, Code.NOT_FOUND),
        (Code.GET, "/3/0/4", {}, Code.METHOD_NOT_ALLOWED),  # executable: not readable
        (Code.PUT, "/3/0/0", {"payload": b"x", "content_format": F.TEXT}, Code.METHOD_NOT_ALLOWED),  # R only
        (Code.POST, "/3/0/0", {}, Code.METHOD_NOT_ALLOWED),  # execute on a non-E resource
        (Code.PUT, "/33000/0/1", {"payload": b"200", "content_format": F.TEXT}, Code.BAD_REQUEST),  # out of range
        (Code.PUT, "/33000/0/1", {"payload": b"abc", "content_format": F.TEXT}, Code.BAD_REQUEST),  # not a number
        (Code.PUT, "/3/0/14", {"payload": b"x"}, Code.BAD_REQUEST),  # no Content-Format
        (Code.PUT, "/3/0/14", {"payload": b"x", "content_format": 9999}, Code.UNSUPPORTED_CONTENT_FORMAT),
        (Code.GET, "/3/0", {"accept": F.TEXT}, Code.NOT_ACCEPTABLE),
        (Code.GET, "/3/0/0", {"accept": F.OPAQUE}, Code.NOT_ACCEPTABLE),
        (Code.GET, "/3/0/0", {"accept": 9999}, Code.NOT_ACCEPTABLE),
        (Code.GET, "/0", {}, Code.UNAUTHORIZED),
        (Code.GET, "/0/0/0", {}, Code.UNAUTHORIZED),
        (Code.GET, "/0/0", {"accept": F.LINK}, Code.UNAUTHORIZED),
        (Code.PUT, "/0/0/0", {"payload": b"coap://evil", "content_format": F.TEXT}, Code.UNAUTHORIZED),
        (Code.DELETE, "/0/0", {}, Code.UNAUTHORIZED),
    ]
    for code, path, kwargs, expected in cases:
        resp = await rd.request(code, device, path, **kwargs)  # type: ignore[arg-type]
        assert resp.code == expected, (code, path, kwargs, resp.code, resp.payload)


# --------------------------------------------------------------------------------------------- observe


async def test_observe_notifies_on_change_and_cancel_stops(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    assert rd.context is not None
    request = rd.context.request(Message(code=Code.GET, uri=device.uri + "/3/0/14", observe=0))
    first = await asyncio.wait_for(request.response, T)
    assert first.code == Code.CONTENT and first.opt.observe is not None and first.payload == b"+00:00"
    await device.wait_for(lambda d: d.observation_count == 1, T)
    notifications = request.observation.__aiter__()
    seen = []
    for value in (b"+01:00", b"+02:00"):
        await rd.request(Code.PUT, device, "/3/0/14", payload=value, content_format=F.TEXT)
        seen.append((await asyncio.wait_for(notifications.__anext__(), T)).payload)
    assert seen == [b"+01:00", b"+02:00"]

    # aiocoap 0.4.17 cancels lazily: it still acknowledges the next notification and resets the one after;
    # on that reset the device forgets the observation
    request.observation.cancel()
    for value in (b"+03:00", b"+04:00"):
        await rd.request(Code.PUT, device, "/3/0/14", payload=value, content_format=F.TEXT)
    await device.wait_for(lambda d: d.observation_count == 0, T)


async def test_observe_honours_pmax_and_pmin(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    assert rd.context is not None
    # pmax=1 on a value that never changes: notifications come anyway
    await rd.request(Code.PUT, device, "/3/0/15", query=("pmax=1",))
    request = rd.context.request(Message(code=Code.GET, uri=device.uri + "/3/0/15", observe=0))
    assert (await asyncio.wait_for(request.response, T)).code == Code.CONTENT
    notifications = request.observation.__aiter__()
    for _ in range(2):
        assert (await asyncio.wait_for(notifications.__anext__(), T)).payload == b"Etc/UTC"
    request.observation.cancel()

    # pmin=3600: a change does not notify now, it is held back (counted synchronously by the device)
    await rd.request(Code.PUT, device, "/3/0/14", query=("pmin=3600",))
    request = rd.context.request(Message(code=Code.GET, uri=device.uri + "/3/0/14", observe=0))
    assert (await asyncio.wait_for(request.response, T)).code == Code.CONTENT
    before = device.counters.notifications
    await rd.request(Code.PUT, device, "/3/0/14", payload=b"+04:00", content_format=F.TEXT)
    assert device.counters.notifications == before
    request.observation.cancel()


async def test_observe_gt_threshold(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    assert rd.context is not None
    await rd.request(Code.PUT, device, "/33000/0/1", query=("gt=60",))
    request = rd.context.request(Message(code=Code.GET, uri=device.uri + "/33000/0/1", observe=0))
    assert (await asyncio.wait_for(request.response, T)).payload == b"50"
    notifications = request.observation.__aiter__()
    before = device.counters.notifications
    device.objects.set_value(P("/33000/0/1"), 55)  # stays below gt: no notification
    assert device.counters.notifications == before
    device.objects.set_value(P("/33000/0/1"), 65)  # crosses gt
    assert (await asyncio.wait_for(notifications.__anext__(), T)).payload == b"65"
    request.observation.cancel()


async def test_drifting_values_notify(rd: ResourceDirectory) -> None:
    """The device's own ticks (battery, memory, signal, clock) reach observers like server writes do."""
    dev = await started(rd, "drift-1", drift_interval=0.05)
    try:
        assert rd.context is not None
        request = rd.context.request(Message(code=Code.GET, uri=dev.uri + "/3/0/13", observe=0))
        assert (await asyncio.wait_for(request.response, T)).code == Code.CONTENT
        notifications = request.observation.__aiter__()
        for _ in range(2):
            assert int((await asyncio.wait_for(notifications.__anext__(), T)).payload) > 1_600_000_000
        request.observation.cancel()
    finally:
        await asyncio.wait_for(dev.stop(), T)


async def test_observe_ends_when_the_instance_is_deleted(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    assert rd.context is not None
    request = rd.context.request(Message(code=Code.GET, uri=device.uri + "/33000/0", observe=0, accept=F.SENML_JSON))
    assert (await asyncio.wait_for(request.response, T)).code == Code.CONTENT
    await device.wait_for(lambda d: d.observation_count == 1, T)
    assert (await rd.request(Code.DELETE, device, "/33000/0")).code == Code.DELETED
    await device.wait_for(lambda d: d.observation_count == 0, T)


async def test_observe_composite(rd: ResourceDirectory, device: SimulatedDevice) -> None:
    assert rd.context is not None
    body = registry.encode_paths([P("/3/0/14"), P("/33000/0/1")], F.SENML_JSON)
    request = rd.context.request(Message(code=Code.FETCH, uri=device.uri + "/", observe=0, payload=body,
                                         content_format=F.SENML_JSON))
    first = await asyncio.wait_for(request.response, T)
    assert first.code == Code.CONTENT and first.opt.observe is not None
    notifications = request.observation.__aiter__()
    await rd.request(Code.PUT, device, "/33000/0/1", payload=b"42", content_format=F.TEXT)
    values = registry.decode_composite((await asyncio.wait_for(notifications.__anext__(), T)).payload,
                                       F.SENML_JSON, MODEL)
    assert values[P("/33000/0/1")] == SingleResource(1, ResourceType.INTEGER, 42)
    request.observation.cancel()


class _RawCoap(asyncio.DatagramProtocol):
    """A bare UDP endpoint: lets a test choose the token (needed to cancel with Observe=1 as RFC 7641 says)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(Message.decode(data))

    def send(self, msg: Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(msg.encode(), addr)

    async def response(self, token: bytes) -> Message:
        """The next response or notification for ``token``, acknowledging CON ones."""
        while True:
            msg = await asyncio.wait_for(self.queue.get(), T)
            if msg.mtype == Type.CON:
                self.send(Message(code=Code.EMPTY, _mtype=Type.ACK, _mid=msg.mid), self.peer)
            if msg.token == token and msg.code != Code.EMPTY:
                return msg

    peer: tuple[str, int] = ("127.0.0.1", 0)


async def test_observe_cancel_with_observe_1(device: SimulatedDevice) -> None:
    loop = asyncio.get_running_loop()
    transport, raw = await loop.create_datagram_endpoint(_RawCoap, local_addr=("127.0.0.1", 0))
    raw.peer = ("127.0.0.1", device.address[1])
    try:
        def get(observe: int, mid: int) -> Message:
            return Message(code=Code.GET, _mtype=Type.CON, _mid=mid, _token=b"\x7a\x01", uri_path=("3", "0", "14"),
                           observe=observe)

        raw.send(get(0, 1), raw.peer)
        first = await raw.response(b"\x7a\x01")
        assert first.code == Code.CONTENT and first.opt.observe is not None
        await device.wait_for(lambda d: d.observation_count == 1, T)
        raw.send(get(1, 2), raw.peer)
        again = await raw.response(b"\x7a\x01")
        assert again.code == Code.CONTENT and again.opt.observe is None  # a plain read answers the cancel
        await device.wait_for(lambda d: d.observation_count == 0, T)
    finally:
        transport.close()


# --------------------------------------------------------------------------------------------- fleet and CLI


async def test_fleet_of_50_registers_and_stops(rd: ResourceDirectory) -> None:
    progress = []
    fleet = Fleet(rd.uri, 50, prefix="fleet-", lifetime=300, concurrency=16, drift_interval=0,
                  on_progress=progress.append)
    try:
        status = await asyncio.wait_for(fleet.start(), 60)
        assert (status.registered, status.failed, status.pending) == (50, 0, 0)
        assert sorted(e.endpoint for e in rd.of("register")) == sorted(f"fleet-{i}" for i in range(50))
        assert len({e.remote for e in rd.of("register")}) == 50  # one socket per device
    finally:
        status = await asyncio.wait_for(fleet.stop(), 60)
    assert status.stopped == 50
    assert len(rd.of("deregister")) == 50 and not rd.live
    assert progress[-1] == status


async def test_cli_runs_a_fleet_until_sigterm(rd: ResourceDirectory) -> None:
    repo = Path(__file__).resolve().parents[2]
    code = ("from client_sim.cli import sim; "
            f"sim(server={rd.uri!r}, count=3, prefix='cli-', lifetime=60, insecure_accept_any=True)")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=repo, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []
    try:
        async def until_all_registered() -> None:
            while "3/3 registered" not in (lines[-1] if lines else ""):
                line = await proc.stdout.readline()  # type: ignore[union-attr]
                assert line, "the CLI ended early"
                lines.append(line.decode().strip())

        await asyncio.wait_for(until_all_registered(), 30)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert sorted(e.endpoint for e in rd.of("register")) == ["cli-0", "cli-1", "cli-2"]
    assert sorted(e.endpoint for e in rd.of("deregister")) == ["cli-0", "cli-1", "cli-2"]
    assert lines[0].startswith("starting 3 device(s) cli-0..cli-2")
    assert out.decode().splitlines()[-1] == "stopped: 0/3 registered, 0 pending, 0 failed, 3 stopped"


# --------------------------------------------------------------------------------------------- the tree alone


def test_tree_rules_without_sockets() -> None:
    tree = ObjectTree(MODEL)
    tree.add_instance(0, 0, {0: "coap://x", 1: False, 2: 3, 3: b"", 4: b"", 5: b""})
    tree.add_instance(3, 0, {0: "SCRATCh", 4: None, 9: 100, 11: {0: 0}, 16: "U"})
    for op, error in [
        (lambda: tree.read(P("/0/0/0")), NotAuthorizedError),
        (lambda: tree.read(P("/4")), PathNotFoundError),
        (lambda: tree.read(P("/")), OperationNotAllowedError),
        (lambda: tree.write(P("/3/0/9"), SingleResource(9, ResourceType.INTEGER, 5), replace=True),
         OperationNotAllowedError),
        (lambda: tree.write(P("/3"), Obj(3), replace=True), OperationNotAllowedError),
        (lambda: tree.execute(P("/3/0/9")), OperationNotAllowedError),
        (lambda: tree.execute(P("/3/0/4"), "0=x"), BadValueError),
        (lambda: tree.write_attributes(P("/3/0/9"), {"lt": "10", "gt": "20", "st": "6"}), BadValueError),
    ]:
        with pytest.raises(error):
            op()
    assert parse_execute_arguments("0='a,b',1,2=''") == {0: "a,b", 1: None, 2: ""}
    tree.write_attributes(P("/3/0/9"), {"lt": "10", "gt": "20", "st": "4"})
    assert tree.effective_attributes(P("/3/0/9")) == {"lt": "10", "gt": "20", "st": "4"}
