"""Our simulated devices register with Eclipse Leshan's server demo; Leshan manages them through its REST API:
Read in every format it offers, Write, Execute, Observe (notifications over SSE), Discover, Write-Attributes,
Read-/Write-Composite.

The devices carry object 3442 (Leshan's LwM2M v1.1 Test Object, every resource type) filled with edge values, so
Leshan's decoders check our encoders and Leshan's encoders check our decoders.

Needs LESHAN_SERVER_DEMO; skipped, with the reason, otherwise.
"""

from __future__ import annotations

from typing import Any

import pytest

from lwm2m_server.core.nodes import Instance, MultipleResource, Obj, ObjectLink, ResourceType, SingleResource
from lwm2m_server.core.paths import LwM2mPath
from tests.harness import eventually
from tests.interop.leshan import (
    MULTIPLE_VALUE_IDS,
    SINGLE_VALUE_IDS,
    LeshanEvents,
    edge_instance,
    edge_node,
    managed_by_leshan,
    node_from_leshan,
)

pytestmark = [pytest.mark.interop]

P = LwM2mPath.parse
MULTI = ["TLV", "SENML_JSON", "SENML_CBOR"]  # what Leshan reads and writes that our devices announce
CLOCK = 13  # /3/0/13 Current Time moves on its own


def without_clock(node: Any) -> dict[int, Any]:
    assert isinstance(node, Instance), node
    return {rid: r for rid, r in node.resources.items() if rid != CLOCK}


async def test_registration_as_leshan_sees_it(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-reg") as (_, rest):
        reg = await rest.registration("sim-reg")
        assert reg is not None
        assert (reg["lwM2mVersion"], reg["bindingMode"], reg["lifetime"], reg["queuemode"]) == ("1.1", "U", 300, False)
        links = {link["url"]: link["attributes"] for link in reg["objectLinks"]}
        assert links["/"]["rt"] == '"oma.lwm2m"'
        assert links["/3"].get("ver") == "1.2" and links["/4"].get("ver") == "1.3"
        assert {int(k) for k in reg["availableInstances"]} == {1, 3, 4, 3442}


async def test_leshan_reads_the_device_object_in_every_format(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-read3") as (dev, rest):
        expected = without_clock(dev.objects.read(P("/3/0")))
        for fmt in [None, *MULTI]:
            answer = await rest.read("sim-read3", "/3/0", fmt)
            assert answer.success, (fmt, answer.body)
            assert without_clock(answer.node) == expected, fmt
            clock = answer.node.resources[CLOCK]  # type: ignore[attr-defined]
            assert clock.type is ResourceType.TIME and abs(clock.value - dev.objects.get_value(P("/3/0/13"))) <= 5
        for fmt in ["JSON", "CBOR"]:  # formats the device does not announce: 4.06, not a crash
            answer = await rest.read("sim-read3", "/3/0", fmt)
            assert answer.code == 406, (fmt, answer.body)


async def test_leshan_reads_single_resources_as_text_and_opaque(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-single") as (dev, rest):
        for fmt in ["TEXT", *MULTI]:
            answer = await rest.read("sim-single", "/3/0/0", fmt)
            assert answer.node == SingleResource(0, ResourceType.STRING, "SCRATCh"), fmt
            answer = await rest.read("sim-single", "/3/0/6", fmt) if fmt != "TEXT" else None
            if answer is not None:
                assert answer.node == dev.objects.read(P("/3/0/6")), fmt
        assert (await rest.read("sim-single", "/3442/0/150", "OPAQUE")).node == edge_node(150)
        assert (await rest.read("sim-single", "/3/0/0", "OPAQUE")).code == 406  # a string is no opaque value
        assert (await rest.read("sim-single", "/3/0/99", "TEXT")).code == 404


async def test_leshan_reads_test_object_3442_in_every_format(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-3442") as (_, rest):
        expected = edge_instance()
        for fmt in MULTI:
            assert (await rest.read("sim-3442", "/3442/0", fmt)).node == expected, fmt
        for rid in SINGLE_VALUE_IDS:
            for fmt in ["TEXT", *MULTI]:
                assert (await rest.read("sim-3442", f"/3442/0/{rid}", fmt)).node == edge_node(rid), (rid, fmt)
        for rid in MULTIPLE_VALUE_IDS:
            for fmt in MULTI:
                assert (await rest.read("sim-3442", f"/3442/0/{rid}", fmt)).node == edge_node(rid), (rid, fmt)


# Values different from the device's initial ones, still at the edges. Unsigned stays below 2**64 - 128: Leshan
# 2.0.0-M17 encodes an Unsigned Integer in TLV through its signed long value with the shortest signed width, so
# 2**64 - 2 goes out as the single byte 0xFE (= 254) -- a Leshan bug (TlvEncoder.encodeInteger), not ours.
NEW_SINGLE = {
    110: "Ünïcode ✓ \"quoted\"", 120: -(2**62), 125: 2**63 + 7, 130: 1e-300, 140: True, 150: b"\x00" * 3,
    160: 0, 170: ObjectLink(3, 0), 180: "</3442/0>;obs",
}
NEW_MULTIPLE = {
    1110: {2: "x", 3: "y"}, 1120: {0: 2**63 - 1}, 1125: {1: 1}, 1130: {0: -0.5}, 1140: {5: True},
    1150: {0: b"\x01\x02"}, 1160: {0: 1234567890}, 1170: {0: ObjectLink(0, 1)}, 1180: {1: "</5>"},
}


def new_node(rid: int) -> SingleResource | MultipleResource:
    base = edge_node(rid)
    if isinstance(base, SingleResource):
        return SingleResource(rid, base.type, NEW_SINGLE[rid])
    return MultipleResource(rid, base.type, NEW_MULTIPLE[rid])


@pytest.mark.parametrize("fmt", ["TEXT", *MULTI])
async def test_leshan_writes_every_resource_type(leshan_server, fmt):
    ep = f"sim-w-{fmt.lower()}"
    async with managed_by_leshan(leshan_server, ep) as (dev, rest):
        ids = SINGLE_VALUE_IDS if fmt == "TEXT" else (*SINGLE_VALUE_IDS, *MULTIPLE_VALUE_IDS)
        for rid in ids:
            node = new_node(rid)
            answer = await rest.write(ep, f"/3442/0/{rid}", node, fmt)
            assert answer.code == 204, (rid, answer.body)
            assert dev.objects.read(P(f"/3442/0/{rid}")) == node, rid


@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("fmt", MULTI)
async def test_leshan_writes_a_whole_instance(leshan_server, fmt, replace):
    ep = f"sim-wi-{fmt.lower()}-{'replace' if replace else 'update'}"
    async with managed_by_leshan(leshan_server, ep) as (dev, rest):
        instance = Instance.of(0, [new_node(rid) for rid in (*SINGLE_VALUE_IDS, *MULTIPLE_VALUE_IDS)])
        answer = await rest.write(ep, "/3442/0", instance, fmt, replace=replace)
        assert answer.code == 204, answer.body
        got = dev.objects.read(P("/3442/0"))
        assert isinstance(got, Instance)
        for rid, node in instance.resources.items():
            if not replace and isinstance(node, MultipleResource):
                # a partial update adds and replaces resource instances, it keeps the others
                assert node.instances.items() <= got.resources[rid].instances.items(), rid  # type: ignore[union-attr]
            else:
                assert got.resources[rid] == node, rid


async def test_write_utc_offset_and_lifetime(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-write") as (dev, rest):
        for n, fmt in enumerate(["TEXT", *MULTI]):
            node = SingleResource(14, ResourceType.STRING, f"+0{n}:30")
            assert (await rest.write("sim-write", "/3/0/14", node, fmt)).code == 204, fmt
            assert dev.objects.read(P("/3/0/14")) == node
            assert (await rest.read("sim-write", "/3/0/14", "TEXT")).node == node
        async with LeshanEvents(rest.api, "sim-write") as events:
            # Leshan's model of /1/0/1 (object 1 v1.1) says Integer
            answer = await rest.write("sim-write", "/1/0/1", SingleResource(1, ResourceType.INTEGER, 120), "TLV")
            assert answer.code == 204, answer.body
            assert dev.lifetime == 120
            updated = await events.next("UPDATED")
            assert updated.data["update"]["lifetime"] == 120
        assert (await rest.registration("sim-write") or {}).get("lifetime") == 120


async def test_execute_reboot_re_registers(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-exec") as (dev, rest):
        before = (await rest.registration("sim-exec") or {})["registrationId"]
        async with LeshanEvents(rest.api, "sim-exec") as events:
            answer = await rest.execute("sim-exec", "/3/0/4")
            assert answer.code == 204, answer.body
            registered = await events.next("REGISTRATION")
        assert registered.data["registrationId"] != before
        await dev.wait_for(lambda d: d.counters.registers == 2, timeout=5)  # Leshan's event may beat the 2.01
        assert dev.counters.reboots == 1
        assert (await rest.execute("sim-exec", "/3/0/0")).code == 405  # a readable resource is not executable
        assert (await rest.execute("sim-exec", "/1/0/8")).code == 204  # Registration Update Trigger


async def test_observe_sends_notifications_over_sse(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-obs") as (dev, rest):
        assert (await rest.write_attributes("sim-obs", "/3/0/13", pmin=0, pmax=1)).code == 204
        async with LeshanEvents(rest.api, "sim-obs") as events:
            first = await rest.observe("sim-obs", "/3/0/13", "TEXT")
            assert first.code == 205 and first.node.type is ResourceType.TIME  # type: ignore[union-attr]
            assert dev.observation_count == 1
            for _ in range(2):  # pmax=1: a notification every second
                event = await events.next("NOTIFICATION", lambda e: e.data.get("res") == "/3/0/13", timeout=10)
                assert node_from_leshan(event.data["val"]).type is ResourceType.TIME  # type: ignore[union-attr]
            # a value Leshan writes is notified with its new value
            assert (await rest.observe("sim-obs", "/3/0/14", "SENML_CBOR")).code == 205
            node = SingleResource(14, ResourceType.STRING, "+09:00")
            assert (await rest.write("sim-obs", "/3/0/14", node, "TLV")).code == 204
            event = await events.next("NOTIFICATION", lambda e: e.data.get("res") == "/3/0/14", timeout=10)
            assert node_from_leshan(event.data["val"]) == node
            # an instance observation
            assert (await rest.observe("sim-obs", "/3442/0", "SENML_JSON")).code == 205
            await rest.write("sim-obs", "/3442/0/110", new_node(110), "TEXT")
            event = await events.next("NOTIFICATION", lambda e: e.data.get("res") == "/3442/0", timeout=10)
            assert node_from_leshan(event.data["val"]).resources[110] == new_node(110)  # type: ignore[union-attr]
        for path in ("/3/0/13", "/3/0/14", "/3442/0"):
            assert (await rest.cancel_observe("sim-obs", path)).code == 205, path
        await eventually(lambda: dev.observation_count == 0, timeout=10)


async def test_discover_and_write_attributes(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-disc") as (_, rest):
        answer = await rest.discover("sim-disc", "/3/0")
        links = {link["url"]: link["attributes"] for link in answer.body["objectLinks"]}
        assert {"/3/0", "/3/0/0", "/3/0/13", "/3/0/14"} <= links.keys()
        assert links["/3/0/6"].get("dim") == "2"
        objects = {link["url"]: link["attributes"] for link in (await rest.discover("sim-disc", "/3442")).body[
            "objectLinks"]}
        assert {"/3442", "/3442/0", "/3442/0/110", "/3442/0/1180"} <= objects.keys()
        answer = await rest.write_attributes("sim-disc", "/3/0/9", pmin=5, pmax=60, gt=50.5)
        assert answer.code == 204, answer.body
        [link] = (await rest.discover("sim-disc", "/3/0/9")).body["objectLinks"]
        assert (link["attributes"].get("pmin"), link["attributes"].get("pmax")) == ("5", "60")
        assert float(link["attributes"]["gt"]) == 50.5


@pytest.mark.parametrize("fmt", ["SENML_JSON", "SENML_CBOR"])
async def test_read_and_write_composite(leshan_server, fmt):
    ep = f"sim-comp-{fmt.lower()}"
    async with managed_by_leshan(leshan_server, ep) as (dev, rest):
        answer = await rest.read_composite(ep, ["/3/0/0", "/1/0/1", "/3442/0/130", "/3442/0/1110"], fmt)
        assert answer.success, answer.body
        content = {path: node_from_leshan(n) for path, n in answer.body["content"].items()}
        assert content["/3/0/0"] == SingleResource(0, ResourceType.STRING, "SCRATCh")
        assert content["/1/0/1"].value == 300  # type: ignore[union-attr]
        assert content["/3442/0/130"] == edge_node(130) and content["/3442/0/1110"] == edge_node(1110)
        nodes = {"/3/0/14": SingleResource(14, ResourceType.STRING, "-03:00"), "/3442/0/110": new_node(110)}
        answer = await rest.write_composite(ep, nodes, fmt)
        assert answer.code == 204, answer.body
        for path, node in nodes.items():
            assert dev.objects.read(P(path)) == node


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
async def test_objects_resource_instances_create_and_delete(leshan_server, version):
    ep = f"sim-levels-{version}"
    async with managed_by_leshan(leshan_server, ep, lwm2m_version=version) as (dev, rest):
        assert (await rest.registration(ep) or {}).get("lwM2mVersion") == version
        for fmt in MULTI:
            obj = (await rest.read(ep, "/3", fmt)).node
            assert isinstance(obj, Obj) and set(obj.instances) == {0}, fmt
            assert without_clock(obj.instances[0]) == without_clock(dev.objects.read(P("/3/0"))), fmt
            assert (await rest.read(ep, "/3/0/6/1", fmt)).node == dev.objects.read(P("/3/0/6/1")), fmt
            one = {"id": 0, "kind": "resourceInstance", "type": "string", "value": f"ri in {fmt}"}
            assert (await rest.write(ep, "/3442/0/1110/0", one, fmt)).code == 204, fmt
            assert dev.objects.get_value(P("/3442/0/1110")) == {0: f"ri in {fmt}", 5: ""}
            server = {"id": 1, "kind": "instance", "resources": [
                {"id": 0, "kind": "singleResource", "type": "integer", "value": "2"},
                {"id": 1, "kind": "singleResource", "type": "integer", "value": "60"},
                {"id": 6, "kind": "singleResource", "type": "boolean", "value": False},
                {"id": 7, "kind": "singleResource", "type": "string", "value": "U"}]}
            r = await rest.http.post(f"{rest.api}/clients/{ep}/1", params={"format": fmt, "timeout": 5},
                                     json=server)
            assert r.status_code == 200 and r.json()["status"] == "CREATED(201)", (fmt, r.text)
            assert dev.objects.instance_ids(1) == (0, 1)
            assert dev.objects.get_value(P("/1/1/1")) == 60
            r = await rest.http.delete(f"{rest.api}/clients/{ep}/1/1", params={"timeout": 5})
            assert r.json()["status"] == "DELETED(202)", r.text
            assert dev.objects.instance_ids(1) == (0,)


async def test_observe_composite(leshan_server):
    async with managed_by_leshan(leshan_server, "sim-obs-comp") as (_, rest), \
            LeshanEvents(rest.api, "sim-obs-comp") as events:
        r = await rest.http.post(f"{rest.api}/clients/sim-obs-comp/composite/observe", params={
            "paths": "/3/0/14,/3442/0/110", "pathformat": "SENML_CBOR", "nodeformat": "SENML_CBOR", "timeout": 5})
        assert r.status_code == 200 and r.json()["status"] == "CONTENT(205)", r.text
        assert node_from_leshan(r.json()["content"]["/3442/0/110"]) == edge_node(110)
        await rest.write("sim-obs-comp", "/3442/0/110", new_node(110), "TEXT")
        event = await events.next("NOTIFICATION", lambda e: e.data.get("kind") == "composite", timeout=10)
        assert node_from_leshan(event.data["val"]["/3442/0/110"]) == new_node(110)
        assert node_from_leshan(event.data["val"]["/3/0/14"]).value == "+00:00"  # type: ignore[union-attr]
