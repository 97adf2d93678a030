"""Eclipse Leshan's client demo (LwM2M 1.1, Californium) registers with our server, run in-process; our server
manages it: Read in every format it offers, Write, Execute, Observe, Discover, Write-Attributes, Read-Composite.

Object 3442 (Leshan's LwM2M v1.1 Test Object: one resource of every type, single and multiple) is the codec
oracle: the same instance read in TLV, SenML JSON, SenML CBOR and OMA JSON must decode to the same node, and values
we write in each format must read back unchanged in the others.

Needs LESHAN_CLIENT_DEMO (and LESHAN_BSSERVER_DEMO for the bootstrap test); skipped, with the reason, otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import ErrorResponseError
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
    CancelObservationRequest,
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
from tests.harness import eventually
from tests.interop.conftest import DemoProcess, LeshanBsServerDemo, LeshanClientFactory
from tests.interop.leshan import (
    MULTIPLE_VALUE_IDS,
    SINGLE_VALUE_IDS,
    edge_instance,
    edge_node,
    our_server,
    values_only,
)

pytestmark = pytest.mark.interop

P = LwM2mPath.parse
CF = ContentFormat
MULTI = [CF.TLV, CF.SENML_JSON, CF.SENML_CBOR]  # what Leshan's client reads and writes for any node
READ_ONLY_MULTI = [CF.OMA_JSON]  # Leshan offers it (ct 11543); we decode it but never send it
DEVICE_DRIFTS = {9, 10, 13, 20}  # battery level, free memory, current time, battery status move on their own


@contextlib.asynccontextmanager
async def managed(tmp_path: Path, leshan_client: LeshanClientFactory, endpoint: str, *options: str
                  ) -> AsyncIterator[tuple[Lwm2mServer, DemoProcess]]:
    """Our server, and a Leshan client demo registered with it (stopped before our server, so it de-registers)."""
    async with our_server(tmp_path / "data") as srv:
        assert srv.registrations is not None and srv.management is not None
        client = leshan_client(srv.coap_uri, endpoint, *options)
        try:
            registrations = srv.registrations
            await eventually(lambda: registrations.by_endpoint(endpoint, tenant_id="default") is not None
                             or not client.alive(),
                             timeout=30)
            assert client.alive(), f"the Leshan client exited:\n{client.tail()}"
            yield srv, client
        finally:
            await asyncio.get_running_loop().run_in_executor(None, client.stop)


async def read(srv: Lwm2mServer, ep: str, path: str, fmt: ContentFormat | None = None):  # type: ignore[no-untyped-def]
    assert srv.management is not None
    return (await srv.management.send(ep, ReadRequest(P(path), fmt), timeout=10, tenant_id="default")).content


async def send(srv: Lwm2mServer, ep: str, request):  # type: ignore[no-untyped-def]
    assert srv.management is not None
    return await srv.management.send(ep, request, timeout=10, tenant_id="default")


async def test_registration_announces_lwm2m_1_1_formats_and_objects(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-reg") as (srv, _):
        assert srv.registrations is not None
        reg = srv.registrations.by_endpoint("lc-reg", tenant_id="default")
        assert reg is not None
        assert (reg.lwm2m_version, reg.binding, reg.queue_mode) == ("1.1", "UT", False)
        assert {CF.CBOR, CF.SENML_JSON, CF.SENML_CBOR, CF.TLV, CF.OMA_JSON} <= reg.supported_formats
        assert CF.LWM2M_CBOR not in reg.supported_formats  # Leshan M17 has no LwM2M CBOR (11544)
        for oid in (1, 3, 3442):
            assert reg.supports_object(oid), oid
        assert reg.summary.versions.get(3) == "1.2"  # Leshan puts ver on the object link </3>;ver=1.2


async def test_device_object_reads_agree_across_formats(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-read3") as (srv, _):
        seen = {fmt: await read(srv, "lc-read3", "/3/0", fmt) for fmt in [None, *MULTI, *READ_ONLY_MULTI]}
        stable = {f: {k: v for k, v in values_only(n).items() if k not in DEVICE_DRIFTS} for f, n in seen.items()}
        reference = stable[CF.TLV]
        for fmt, resources in stable.items():
            assert resources == reference, fmt
        assert reference[0] == SingleResource(0, ResourceType.STRING, "Leshan Demo Device")
        assert reference[14].type is ResourceType.STRING
        assert all(isinstance(n, Instance) and n.resources[13].type is ResourceType.TIME for n in seen.values())
        # single resources in text/plain, and in every multi-value format
        for fmt in [CF.TEXT, *MULTI]:
            assert await read(srv, "lc-read3", "/3/0/0", fmt) == reference[0], fmt


async def test_formats_we_do_not_speak_are_refused_cleanly(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-406") as (srv, _):
        # LwM2M CBOR is not among the client's formats: it answers 4.06 Not Acceptable
        with pytest.raises(ErrorResponseError) as e:
            await read(srv, "lc-406", "/3/0", CF.LWM2M_CBOR)
        assert e.value.code == 0x86


async def test_test_object_3442_reads_agree_across_formats(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-3442") as (srv, _):
        seen = {fmt: await read(srv, "lc-3442", "/3442/0", fmt) for fmt in [*MULTI, *READ_ONLY_MULTI]}
        reference = values_only(seen[CF.TLV])
        for fmt, node in seen.items():
            assert values_only(node) == reference, fmt
        # Leshan's initial values, one of each type
        expected = {
            110: "initial value", 120: 1024, 125: 2**63, 130: 3.14159, 140: True,
            150: bytes.fromhex("0123456789abcdef"), 160: 946684800, 170: ObjectLink(3, 0), 180: "</3442>",
        }
        for rid, value in expected.items():
            assert reference[rid].value == value, rid  # type: ignore[union-attr]
            assert reference[rid + 1000].instances == {0: value}, rid + 1000  # type: ignore[union-attr]
        # every single resource alone, in every format it can travel in (opaque: octet-stream too)
        for rid in SINGLE_VALUE_IDS:
            formats = [CF.TEXT, *MULTI] + ([CF.OPAQUE] if rid == 150 else [])
            for fmt in formats:
                assert await read(srv, "lc-3442", f"/3442/0/{rid}", fmt) == reference[rid], (rid, fmt)
        for rid in MULTIPLE_VALUE_IDS:
            for fmt in MULTI:
                assert await read(srv, "lc-3442", f"/3442/0/{rid}", fmt) == reference[rid], (rid, fmt)


@pytest.mark.parametrize("fmt", [CF.TEXT, *MULTI])
async def test_written_values_read_back_in_every_format(tmp_path, leshan_client, fmt):
    """Each resource of 3442 written with edge values in ``fmt``, then read back in TLV and the SenMLs."""
    async with managed(tmp_path, leshan_client, f"lc-w-{fmt.label}") as (srv, _):
        ids = SINGLE_VALUE_IDS if fmt is CF.TEXT else (*SINGLE_VALUE_IDS, *MULTIPLE_VALUE_IDS)
        for rid in ids:
            node = edge_node(rid)
            resp = await send(srv, f"lc-w-{fmt.label}", WriteRequest(P(f"/3442/0/{rid}"), node, format=fmt))
            assert resp.code == 0x44, (rid, resp)
            for back_fmt in MULTI:
                got = await read(srv, f"lc-w-{fmt.label}", f"/3442/0/{rid}", back_fmt)
                assert got == node, (rid, back_fmt)


@pytest.mark.parametrize("mode", [WriteMode.UPDATE, WriteMode.REPLACE])
@pytest.mark.parametrize("fmt", MULTI)
async def test_write_whole_test_instance(tmp_path, leshan_client, fmt, mode):
    ep = f"lc-wi-{fmt.label}-{mode.value}"
    async with managed(tmp_path, leshan_client, ep) as (srv, _):
        instance = edge_instance()
        resp = await send(srv, ep, WriteRequest(P("/3442/0"), instance, mode, fmt))
        assert resp.code == 0x44
        for back_fmt in MULTI:
            got = values_only(await read(srv, ep, "/3442/0", back_fmt))
            for rid, node in instance.resources.items():
                if mode is WriteMode.UPDATE and isinstance(node, MultipleResource):
                    # a partial update merges resource instances: Leshan keeps its instance 0 beside ours
                    assert isinstance(got[rid], MultipleResource) and got[rid].type is node.type
                    assert node.instances.items() <= got[rid].instances.items(), (rid, back_fmt)
                else:
                    assert got[rid] == node, (rid, back_fmt)


async def test_objects_resource_instances_create_delete(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-levels") as (srv, _):
        for fmt in MULTI:
            device = await read(srv, "lc-levels", "/3", fmt)
            assert isinstance(device, Obj) and set(device.instances) == {0}, fmt
            assert await read(srv, "lc-levels", "/3/0/11/0", fmt) == ResourceInstance(0, ResourceType.INTEGER, 0), fmt
            one = ResourceInstance(0, ResourceType.STRING, f"instance 0 in {fmt.label}")
            resp = await send(srv, "lc-levels", WriteRequest(P("/3442/0/1110/0"), one, format=fmt))
            assert resp.code == 0x44
            assert await read(srv, "lc-levels", "/3442/0/1110/0", CF.TEXT) == one
            server = Instance.of(1, [SingleResource(0, ResourceType.INTEGER, 2),
                                     SingleResource(1, ResourceType.INTEGER, 60),
                                     SingleResource(6, ResourceType.BOOLEAN, False),
                                     SingleResource(7, ResourceType.STRING, "U")])
            assert (await send(srv, "lc-levels", CreateRequest(P("/1"), server, fmt))).code == 0x41, fmt
            created = await read(srv, "lc-levels", "/1/1", fmt)
            assert {rid: created.resources[rid] for rid in server.resources} == dict(server.resources)
            assert (await send(srv, "lc-levels", DeleteRequest(P("/1/1")))).code == 0x42
            with pytest.raises(ErrorResponseError) as e:
                await read(srv, "lc-levels", "/1/1", fmt)
            assert e.value.code == 0x84
        for request, code in [(ReadRequest(P("/3/0/99")), 0x84), (ReadRequest(P("/42")), 0x84),
                              (WriteRequest(P("/3/0/0"), SingleResource(0, ResourceType.STRING, "x")), 0x85),
                              (ExecuteRequest(P("/3/0/0")), 0x85), (DeleteRequest(P("/3/0")), 0x85)]:
            with pytest.raises(ErrorResponseError) as e:
                await send(srv, "lc-levels", request)
            assert e.value.code == code, request


async def test_lwm2m_cbor_writes_are_refused_with_4_15(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-415") as (srv, _):
        with pytest.raises(ErrorResponseError) as e:
            await send(srv, "lc-415", WriteRequest(P("/3442/0/110"), edge_node(110), format=CF.LWM2M_CBOR))
        assert e.value.code == 0x8F  # 4.15 Unsupported Content-Format


async def test_write_utc_offset_and_lifetime(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-write") as (srv, _):
        assert srv.registrations is not None
        for fmt in [None, CF.TEXT, *MULTI]:
            value = f"+0{MULTI.index(fmt) + 1 if fmt in MULTI else 0}:30"
            node = SingleResource(14, ResourceType.STRING, value)
            assert (await send(srv, "lc-write", WriteRequest(P("/3/0/14"), node, format=fmt))).code == 0x44
            assert await read(srv, "lc-write", "/3/0/14") == node, fmt
        lifetime = SingleResource(1, ResourceType.INTEGER, 123)
        assert (await send(srv, "lc-write", WriteRequest(P("/1/0/1"), lifetime))).code == 0x44
        assert (await read(srv, "lc-write", "/1/0/1", CF.TEXT)).value == 123
        registrations = srv.registrations
        # a new lifetime makes the client send a Registration Update carrying lt=123
        await eventually(lambda: registrations.by_endpoint("lc-write", tenant_id="default").lifetime == 123, timeout=10)


async def test_execute_with_arguments_and_reboot(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-exec") as (srv, client):
        assert srv.registrations is not None
        assert (await send(srv, "lc-exec", ExecuteRequest(P("/3442/0/3"), "0='abc',1,7='x-y'"))).code == 0x44
        args = await read(srv, "lc-exec", "/3442/0/4")
        assert args == MultipleResource(4, ResourceType.STRING, {0: "abc", 1: "", 7: "x-y"})
        registrations = srv.registrations
        before = registrations.by_endpoint("lc-exec", tenant_id="default").id
        assert (await send(srv, "lc-exec", ExecuteRequest(P("/3/0/4")))).code == 0x44
        # the demo de-registers and registers again: a new registration replaces the old one
        await eventually(lambda: (r := registrations.by_endpoint("lc-exec", tenant_id="default")) is not None
                         and r.id != before,
                         timeout=20)
        assert client.alive()
        assert (await read(srv, "lc-exec", "/3/0/0", CF.TEXT)).value == "Leshan Demo Device"


@pytest.mark.parametrize("fmt", [None, CF.TEXT, CF.TLV, CF.SENML_CBOR])
async def test_observe_current_time_notifies(tmp_path, leshan_client, fmt):
    ep = f"lc-obs-{fmt.label if fmt else 'default'}"
    async with managed(tmp_path, leshan_client, ep) as (srv, _):
        assert srv.management is not None
        await send(srv, ep, WriteAttributesRequest(P("/3/0/13"), {"pmin": 1, "pmax": 2}))
        obs = await srv.management.observe(ep, ObserveRequest(P("/3/0/13"), fmt), timeout=10, tenant_id="default")
        try:
            assert obs.established
            first = obs.initial.content
            assert isinstance(first, SingleResource) and first.type is ResourceType.TIME
            stream = obs.notifications().__aiter__()
            later = await asyncio.wait_for(stream.__anext__(), 15)
            assert isinstance(later, SingleResource) and later.id == 13 and later.value >= first.value
        finally:
            obs.cancel()


async def test_observe_reports_a_value_we_write(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-obs-w") as (srv, _):
        assert srv.management is not None
        obs = await srv.management.observe("lc-obs-w", ObserveRequest(P("/3442/0/110"), CF.TEXT), timeout=10,
                                           tenant_id="default")
        try:
            assert obs.initial.content == SingleResource(110, ResourceType.STRING, "initial value")
            stream = obs.notifications().__aiter__()
            new = SingleResource(110, ResourceType.STRING, "changed by SCRATCh")
            await send(srv, "lc-obs-w", WriteRequest(P("/3442/0/110"), new, format=CF.SENML_CBOR))
            assert await asyncio.wait_for(stream.__anext__(), 15) == new
            # active cancellation: a GET with Observe=1 answers with the current value
            cancelled = await send(srv, "lc-obs-w", CancelObservationRequest(P("/3442/0/110"), CF.TEXT))
            assert cancelled.content == new
        finally:
            obs.cancel()


async def test_observe_an_instance_in_senml(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-obs-i") as (srv, _):
        assert srv.management is not None
        obs = await srv.management.observe("lc-obs-i", ObserveRequest(P("/3442/0"), CF.SENML_JSON), timeout=10,
                                           tenant_id="default")
        try:
            assert isinstance(obs.initial.content, Instance)
            stream = obs.notifications().__aiter__()
            await send(srv, "lc-obs-i", WriteRequest(P("/3442/0/120"), edge_node(120), format=CF.TLV))
            notified = await asyncio.wait_for(stream.__anext__(), 15)
            assert isinstance(notified, Instance) and notified.resources[120] == edge_node(120)
        finally:
            obs.cancel()


async def test_discover_and_write_attributes(tmp_path, leshan_client):
    async with managed(tmp_path, leshan_client, "lc-disc") as (srv, _):
        links = (await send(srv, "lc-disc", DiscoverRequest(P("/3/0")))).content
        by_target = {link.target: link for link in links}
        assert {"/3/0", "/3/0/0", "/3/0/13", "/3/0/14"} <= by_target.keys()
        assert by_target["/3/0/11"].get("dim") == "1"
        objects = {link.target: link for link in (await send(srv, "lc-disc", DiscoverRequest(P("/3442")))).content}
        assert {"/3442", "/3442/0", "/3442/0/110", "/3442/0/1180"} <= objects.keys()
        assert objects["/3442/0/1110"].get("dim") == "1"
        resp = await send(srv, "lc-disc", WriteAttributesRequest(P("/3/0/9"), {"pmin": 5, "pmax": 60, "gt": 50.5}))
        assert resp.code == 0x44
        [link] = (await send(srv, "lc-disc", DiscoverRequest(P("/3/0/9")))).content
        assert (link.get("pmin"), link.get("pmax"), link.get("gt")) == ("5", "60", "50.5")
        await send(srv, "lc-disc", WriteAttributesRequest(P("/3/0/9"), {"pmin": None}))
        [link] = (await send(srv, "lc-disc", DiscoverRequest(P("/3/0/9")))).content
        assert link.get("pmin") is None and link.get("pmax") == "60"


@pytest.mark.parametrize("fmt", [CF.SENML_JSON, CF.SENML_CBOR])
async def test_read_composite(tmp_path, leshan_client, fmt):
    ep = f"lc-comp-{fmt.label}"
    async with managed(tmp_path, leshan_client, ep) as (srv, _):
        paths = (P("/3/0/0"), P("/1/0/1"), P("/3442/0/130"), P("/3442/0/1110"))
        content = (await send(srv, ep, ReadCompositeRequest(paths, fmt, fmt))).content
        assert content[P("/3/0/0")] == SingleResource(0, ResourceType.STRING, "Leshan Demo Device")
        assert content[P("/1/0/1")].value == 300  # the demo's default lifetime
        assert content[P("/3442/0/130")].value == 3.14159
        assert content[P("/3442/0/1110")] == MultipleResource(1110, ResourceType.STRING, {0: "initial value"})


async def test_bootstrap_at_leshan_then_register_with_us(tmp_path, leshan_bsserver: LeshanBsServerDemo,
                                                         leshan_client):
    """The Leshan bootstrap server provisions the Leshan client with our server's URI; the client registers."""
    async with our_server(tmp_path / "data") as srv:
        assert srv.registrations is not None
        config = {
            "toDelete": ["/0", "/1"],
            "servers": {"0": {"shortId": 123, "lifetime": 300, "defaultMinPeriod": 1, "binding": "U",
                              "notifIfDisabled": True}},
            "security": {
                "0": {"uri": leshan_bsserver.coap_uri, "bootstrapServer": True, "securityMode": "NO_SEC",
                      "publicKeyOrId": [], "serverPublicKey": [], "secretKey": []},
                "1": {"uri": srv.coap_uri, "bootstrapServer": False, "securityMode": "NO_SEC",
                      "publicKeyOrId": [], "serverPublicKey": [], "secretKey": [], "serverId": 123},
            },
        }
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{leshan_bsserver.api}/bootstrap/lc-bs", content=json.dumps(config),
                                headers={"Content-Type": "application/json"})
            assert r.status_code == 200, r.text
        client = leshan_client(leshan_bsserver.coap_uri, "lc-bs", "-b")
        try:
            registrations = srv.registrations
            await eventually(lambda: registrations.by_endpoint("lc-bs", tenant_id="default") is not None
                             or not client.alive(), timeout=30)
            reg = registrations.by_endpoint("lc-bs", tenant_id="default")
            assert reg is not None, client.tail()
            assert reg.lifetime == 300  # what the bootstrap server wrote into /1/0/1
            short_id = await read(srv, "lc-bs", "/1/0/0", CF.TEXT)
            assert short_id.value == 123
        finally:
            await asyncio.get_running_loop().run_in_executor(None, client.stop)
