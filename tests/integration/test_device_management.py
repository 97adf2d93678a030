"""Device Management and Information Reporting end to end: the real server drives real simulated devices over
CoAP on loopback, in every content format."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from client_sim.device import SimulatedDevice
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import (
    ClientSleepingError,
    ErrorResponseError,
    RequestFailedError,
    RequestTimeoutError,
    UnknownEndpointError,
)
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Obj,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
)
from lwm2m_server.core.operations import (
    CreateRequest,
    DeleteRequest,
    DiscoverRequest,
    ExecuteRequest,
    ObserveRequest,
    ReadCompositeRequest,
    ReadRequest,
    WriteAttributesRequest,
    WriteMode,
    WriteRequest,
)
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.server import Lwm2mServer
from tests.harness import coap_client, eventually, request, running_server

P = LwM2mPath.parse
MULTI = [ContentFormat.TLV, ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.LWM2M_CBOR]
SINGLE = [ContentFormat.TEXT, *MULTI]


@contextlib.asynccontextmanager
async def setup(tmp_path, *, version: str = "1.1", count: int = 1) -> AsyncIterator[tuple[Lwm2mServer, list]]:
    async with running_server(tmp_path) as srv:
        devices = [SimulatedDevice(f"dev-{i}", srv.coap_uri, lifetime=300, lwm2m_version=version)
                   for i in range(count)]
        try:
            for d in devices:
                assert await d.start(timeout=10)
            await eventually(lambda: srv.registrations.count() == count)
            yield srv, devices
        finally:
            for d in devices:
                await d.stop()


async def read(srv, ep, path, fmt=None):
    return (await srv.management.send(ep, ReadRequest(P(path), fmt), timeout=10, tenant_id="default")).content


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_read_every_level_in_every_format(tmp_path, version):
    async with setup(tmp_path, version=version) as (srv, [dev]):
        reference = dev.objects.read(P("/3/0/0"))
        for fmt in [None, *SINGLE]:
            assert await read(srv, "dev-0", "/3/0/0", fmt) == reference, fmt
        powers = dev.objects.read(P("/3/0/6"))
        assert isinstance(powers, MultipleResource) and powers.instances
        for fmt in [None, *MULTI]:
            assert await read(srv, "dev-0", "/3/0/6", fmt) == powers, fmt
            first = min(powers.instances)
            ri = await read(srv, "dev-0", f"/3/0/6/{first}", fmt)
            assert ri == ResourceInstance(first, powers.type, powers.instances[first]), fmt
            server_obj = await read(srv, "dev-0", "/1", fmt)
            assert isinstance(server_obj, Obj) and server_obj == dev.objects.read(P("/1")), fmt
            inst = await read(srv, "dev-0", "/4/0", fmt)
            assert isinstance(inst, Instance) and inst == dev.objects.read(P("/4/0")), fmt


async def test_device_object_reads_agree_across_formats(tmp_path):
    async with setup(tmp_path) as (srv, _):
        seen = {fmt: await read(srv, "dev-0", "/3/0", fmt) for fmt in MULTI}
        drifting = {9, 10, 13}  # battery, free memory and time move on their own
        stable = {f: {k: v for k, v in n.resources.items() if k not in drifting} for f, n in seen.items()}
        assert all(s == stable[MULTI[0]] for s in stable.values())
        assert stable[MULTI[0]][0] == SingleResource(0, ResourceType.STRING, "SCRATCh")


@pytest.mark.parametrize("fmt", SINGLE)
async def test_write_replace_single_resource(tmp_path, fmt):
    async with setup(tmp_path) as (srv, [dev]):
        node = SingleResource(14, ResourceType.STRING, "+05:30")
        resp = await srv.management.send("dev-0", WriteRequest(P("/3/0/14"), node, format=fmt), tenant_id="default")
        assert resp.code == 0x44
        assert dev.objects.read(P("/3/0/14")) == node
        assert await read(srv, "dev-0", "/3/0/14") == node


@pytest.mark.parametrize("fmt", MULTI)
async def test_write_partial_update_of_an_instance(tmp_path, fmt):
    async with setup(tmp_path) as (srv, [dev]):
        before = dev.objects.read(P("/1/0"))
        update = Instance.of(0, [SingleResource(1, ResourceType.UNSIGNED_INTEGER, 777),
                                 SingleResource(2, ResourceType.UNSIGNED_INTEGER, 3)])
        await srv.management.send("dev-0", WriteRequest(P("/1/0"), update, WriteMode.UPDATE, fmt), tenant_id="default")
        after = dev.objects.read(P("/1/0"))
        assert after.resources[1].value == 777 and after.resources[2].value == 3
        assert after.resources[0] == before.resources[0]  # untouched by a partial update
        assert dev.lifetime == 777


@pytest.mark.parametrize("fmt", MULTI)
async def test_write_replace_multiple_resource_and_resource_instance(tmp_path, fmt):
    async with setup(tmp_path, version="1.1") as (srv, [dev]):
        target = P("/1/0/24")  # Alternate APN Links: RW, multiple, Objlnk; optional, so the device gets one first
        rdef = srv.model.resource(1, 24)
        assert rdef is not None and rdef.writable and rdef.multiple and rdef.type is ResourceType.OBJLNK
        dev.objects.set_value(target, {})
        node = MultipleResource(24, ResourceType.OBJLNK, {0: ObjectLink(11, 0), 3: ObjectLink(11, 1)})
        await srv.management.send("dev-0", WriteRequest(target, node, format=fmt), tenant_id="default")
        assert dev.objects.read(target) == node
        assert await read(srv, "dev-0", "/1/0/24", fmt) == node
        one = ResourceInstance(3, ResourceType.OBJLNK, ObjectLink(11, 7))
        await srv.management.send("dev-0", WriteRequest(P("/1/0/24/3"), one, format=fmt), tenant_id="default")
        assert dev.objects.read(P("/1/0/24/3")) == one


@pytest.mark.parametrize("fmt", [ContentFormat.TLV, ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON])
async def test_create_and_delete_an_instance(tmp_path, fmt):
    async with setup(tmp_path) as (srv, [dev]):
        new = Instance.of(1, [SingleResource(0, ResourceType.INTEGER, 2),
                              SingleResource(1, ResourceType.UNSIGNED_INTEGER, 60),
                              SingleResource(6, ResourceType.BOOLEAN, False),
                              SingleResource(7, ResourceType.STRING, "U")])
        resp = await srv.management.send("dev-0", CreateRequest(P("/1"), new, fmt), tenant_id="default")
        assert resp.code == 0x41
        assert 1 in dev.objects.instance_ids(1)
        assert (await read(srv, "dev-0", "/1/1/1")).value == 60
        resp = await srv.management.send("dev-0", DeleteRequest(P("/1/1")), tenant_id="default")
        assert resp.code == 0x42 and 1 not in dev.objects.instance_ids(1)
        with pytest.raises(ErrorResponseError) as e:
            await read(srv, "dev-0", "/1/1")
        assert e.value.code == 0x84


async def test_execute_with_and_without_arguments(tmp_path):
    async with setup(tmp_path) as (srv, _):
        before = srv.registrations.by_endpoint("dev-0", tenant_id="default").id
        resp = await srv.management.send("dev-0", ExecuteRequest(P("/1/0/8"), "0='now',1"), tenant_id="default")
        assert resp.code == 0x44
        resp = await srv.management.send("dev-0", ExecuteRequest(P("/3/0/4")), tenant_id="default")
        assert resp.code == 0x44
        # A reboot re-registers: a new registration replaces the old one.
        await eventually(lambda: (r := srv.registrations.by_endpoint("dev-0", tenant_id="default")) is not None
                         and r.id != before)


async def test_write_attributes_then_discover(tmp_path):
    async with setup(tmp_path) as (srv, _):
        await srv.management.send("dev-0", WriteAttributesRequest(P("/3/0/9"), {"pmin": 5, "pmax": 60, "gt": 50.5}),
                                  tenant_id="default")
        links = (await srv.management.send("dev-0", DiscoverRequest(P("/3/0")), tenant_id="default")).content
        by_target = {link.target: link for link in links}
        assert "/3/0" in by_target and "/3/0/0" in by_target
        assert (by_target["/3/0/9"].get("pmin"), by_target["/3/0/9"].get("pmax")) == ("5", "60")
        assert by_target["/3/0/9"].get("gt") == "50.5"
        assert by_target["/3/0/6"].get("dim") is not None  # multiple resources say how many instances
        objects = (await srv.management.send("dev-0", DiscoverRequest(P("/1")), tenant_id="default")).content
        assert {"/1", "/1/0", "/1/0/1"} <= {link.target for link in objects}
        # Removing an attribute
        await srv.management.send("dev-0", WriteAttributesRequest(P("/3/0/9"), {"pmin": None}), tenant_id="default")
        links = (await srv.management.send("dev-0", DiscoverRequest(P("/3/0/9")), tenant_id="default")).content
        assert all(link.get("pmin") is None for link in links)


@pytest.mark.parametrize("fmt", [None, ContentFormat.TLV, ContentFormat.SENML_CBOR, ContentFormat.TEXT])
async def test_observe_notifies_and_cancel_stops(tmp_path, fmt):
    async with setup(tmp_path) as (srv, [dev]):
        await srv.management.send("dev-0", WriteAttributesRequest(P("/3/0/13"), {"pmin": 0, "pmax": 1}),
                                  tenant_id="default")
        obs = await srv.management.observe("dev-0", ObserveRequest(P("/3/0/13"), fmt), tenant_id="default")
        assert obs.established
        assert isinstance(obs.initial.content, SingleResource) and obs.initial.content.type is ResourceType.TIME
        seen = []
        stream = obs.notifications().__aiter__()
        for _ in range(2):
            seen.append(await asyncio.wait_for(stream.__anext__(), 10))
        assert all(isinstance(n, SingleResource) and n.id == 13 for n in seen)
        assert dev.observation_count == 1
        obs.cancel()
        # The device forgets the observation when its next notification is refused (reset).
        await eventually(lambda: dev.observation_count == 0, timeout=10)


async def test_observe_an_instance_reports_changes_written_by_the_server(tmp_path):
    async with setup(tmp_path) as (srv, _):
        obs = await srv.management.observe("dev-0", ObserveRequest(P("/3/0/14"), ContentFormat.TEXT),
                                           tenant_id="default")
        try:
            stream = obs.notifications().__aiter__()
            await srv.management.send("dev-0", WriteRequest(
                P("/3/0/14"), SingleResource(14, ResourceType.STRING, "+09:00")), tenant_id="default")
            n = await asyncio.wait_for(stream.__anext__(), 10)
            assert n == SingleResource(14, ResourceType.STRING, "+09:00")
        finally:
            obs.cancel()


@pytest.mark.parametrize("fmt", [ContentFormat.SENML_JSON, ContentFormat.SENML_CBOR, ContentFormat.LWM2M_CBOR])
async def test_read_composite(tmp_path, fmt):
    async with setup(tmp_path) as (srv, [dev]):
        paths = (P("/3/0/0"), P("/1/0/1"), P("/4/0"))
        content = (await srv.management.send("dev-0", ReadCompositeRequest(paths, fmt, fmt),
                                             tenant_id="default")).content
        assert content[P("/3/0/0")] == dev.objects.read(P("/3/0/0"))
        assert content[P("/1/0/1")] == dev.objects.read(P("/1/0/1"))
        assert content[P("/4/0")] == dev.objects.read(P("/4/0"))


ERRORS = [
    ("unknown resource", ReadRequest(P("/3/0/99")), 0x84),
    ("unknown object", ReadRequest(P("/42/0")), 0x84),
    ("write a read-only resource", WriteRequest(P("/3/0/0"), SingleResource(0, ResourceType.STRING, "x")), 0x85),
    ("execute a readable resource", ExecuteRequest(P("/3/0/0")), 0x85),
    ("read the security object", ReadRequest(P("/0/0")), 0x81),
    ("an instance as text/plain", ReadRequest(P("/3/0"), ContentFormat.TEXT), 0x86),
    ("a string resource as opaque", ReadRequest(P("/3/0/0"), ContentFormat.OPAQUE), 0x86),
    ("delete an instance that does not exist", DeleteRequest(P("/1/7")), 0x84),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
async def test_device_errors_carry_the_device_code(tmp_path, case):
    _, request, code = case
    async with setup(tmp_path) as (srv, _):
        with pytest.raises(ErrorResponseError) as e:
            await srv.management.send("dev-0", request, timeout=10, tenant_id="default")
        assert e.value.code == code


async def test_a_vanished_device_does_not_fail_requests_to_the_others(tmp_path):
    """On Linux, the ICMP port unreachable that a vanished device's closed port sends back fails the next send of
    the server's shared UDP socket, whoever it goes to; that send is made again, so only the vanished device's
    requests fail."""
    async with setup(tmp_path, count=2) as (srv, [gone, healthy]):
        await gone.stop(deregister=False)
        for _ in range(10):
            answers = await asyncio.gather(srv.management.send("dev-0", ReadRequest(P("/3/0/0")), timeout=5,
                                                               tenant_id="default"),
                                           srv.management.send("dev-1", ReadRequest(P("/3/0/0")), timeout=5,
                                                               tenant_id="default"),
                                           return_exceptions=True)
            assert isinstance(answers[0], RequestFailedError), answers[0]
            assert not isinstance(answers[1], BaseException), answers[1]
            assert answers[1].content == healthy.objects.read(P("/3/0/0"))


async def test_unknown_endpoint_silent_device_and_sleeping_device(tmp_path):
    async with setup(tmp_path) as (srv, [dev]):
        with pytest.raises(UnknownEndpointError):
            await srv.management.send("nobody", ReadRequest(P("/3/0/0")), tenant_id="default")
        # The device vanishes without de-registering: its port is closed, the request fails.
        await dev.stop(deregister=False)
        with pytest.raises(RequestFailedError):
            await srv.management.send("dev-0", ReadRequest(P("/3/0/0")), timeout=2, tenant_id="default")
        # A device that registers and then never answers: the request times out.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind(("127.0.0.1", 0))
            silent.setblocking(False)
            silent.connect(("127.0.0.1", srv.coap_port))
            # CON POST /rd?ep=silent, MID 0x1234, no token, payload </3/0>
            silent.send(b"\x40\x02\x12\x34" + b"\xb2rd" + b"\x49ep=silent" + b"\xff</3/0>")
            ack = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(silent, 1500), 5)
            assert ack[1] == 0x41  # 2.01 Created, piggybacked
            with pytest.raises(RequestTimeoutError):
                await srv.management.send("silent", ReadRequest(P("/3/0/0")), timeout=0.5, tenant_id="default")
        # A queue-mode device that has not spoken for longer than it stays awake is not sent anything.
        async with coap_client() as ctx:
            r = await request(ctx, Message(code=Code.POST, payload=b"</3/0>",
                                           uri=f"coap://127.0.0.1:{srv.coap_port}/rd?ep=sleepy&lwm2m=1.1&Q"))
            assert r.code == Code.CREATED
        srv.management.awake_seconds = 0.0
        await asyncio.sleep(0.01)
        with pytest.raises(ClientSleepingError):
            await srv.management.send("sleepy", ReadRequest(P("/3/0/0")), tenant_id="default")


async def test_many_devices_concurrently(tmp_path):
    async with setup(tmp_path, count=20) as (srv, devices):
        answers = await asyncio.gather(*(read(srv, d.endpoint, "/3/0/2", ContentFormat.TEXT) for d in devices))
        assert [a.value for a in answers] == [d.objects.read(P("/3/0/2")).value for d in devices]
        assert len({a.value for a in answers}) == 20  # serial numbers are unique
