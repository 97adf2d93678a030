"""The simulated LwM2M Gateway (client_sim.gateway) driven from the server side over real loopback UDP.

A small aiocoap site stands in for the server: /rd records the gateway's Register/Update payloads, /fw serves
packages from our real FileServer, and its context sends the downlink requests (as a server does from its
registration socket). Packages are real SUIT envelopes signed with a fresh key. Every wait is bounded; no
assertion depends on how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiocoap import Context, Message
from aiocoap.numbers.codes import Code
from aiocoap.resource import PathCapable, Resource
from typer.testing import CliRunner

from client_sim.cli import run_gateways
from client_sim.firmware import FirmwareOptions
from client_sim.gateway import (
    Gateway,
    LocalLink,
    LocalLinkConditions,
    LocalLinkError,
    PackageCache,
    package_digest,
)
from firmware_object.errors import State, UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.coap.udp import bound_port
from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import Lwm2mError
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.file_server import FileServer
from tests.harness import eventually

T = 20.0  # bound on every wait
VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
OEM = generate_private_key("es256")
FAST = LocalLinkConditions(latency=0.002, bandwidth=5_000_000)


def package(image: bytes, *, seq: int = 2, version: str = "2.0.0") -> bytes:
    manifest = ReleaseManifest(sequence_number=seq, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version=version)
    return build_envelope(manifest, [OEM], image=image)


def options() -> FirmwareOptions:
    return FirmwareOptions(trust_anchors=(OEM.public_key(),), vendor_id=VENDOR, class_id=CLASS, version="1.0.0",
                           sequence_number=1)


@dataclass(frozen=True)
class RdEvent:
    kind: str  # register | update | deregister
    endpoint: str
    payload: bytes


class Stage(Resource, PathCapable):
    """The stand-in server: /rd (Register, Update, De-register), /fw/<name> (the FileServer), downlink requests."""

    def __init__(self) -> None:
        super().__init__()
        self.files = FileServer()
        self.events: list[RdEvent] = []
        self.live: dict[str, str] = {}
        self.context: Context | None = None
        self.uri = ""

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return request.opt.uri_path[:1] != ("fw",)  # the FileServer slices its blocks itself

    async def render_get(self, request: Message) -> Message:
        path = request.opt.uri_path
        if path[:1] != ("fw",):
            return Message(code=Code.NOT_FOUND)
        try:
            return await self.files.handle(request, tuple(path[1:]))
        except Lwm2mError as e:
            return Message(code=Code(int(e.coap_code)))

    async def render_post(self, request: Message) -> Message:
        path, query = request.opt.uri_path, tuple(request.opt.uri_query)
        if path == ("rd",):
            endpoint = next(q[3:] for q in query if q.startswith("ep="))
            reg_id = str(len(self.events) + 1)
            self.live[reg_id] = endpoint
            self.events.append(RdEvent("register", endpoint, request.payload))
            return Message(code=Code.CREATED, location_path=("rd", reg_id))
        if len(path) == 2 and path[1] in self.live:
            self.events.append(RdEvent("update", self.live[path[1]], request.payload))
            return Message(code=Code.CHANGED)
        return Message(code=Code.NOT_FOUND)

    async def render_delete(self, request: Message) -> Message:
        path = request.opt.uri_path
        if len(path) == 2 and path[1] in self.live:
            self.events.append(RdEvent("deregister", self.live.pop(path[1]), b""))
            return Message(code=Code.DELETED)
        return Message(code=Code.NOT_FOUND)

    def links(self, endpoint: str) -> set[str]:
        """The object links of the endpoint's last Register or Update that carried links."""
        for event in reversed(self.events):
            if event.endpoint == endpoint and event.payload:
                return {link.target for link in link_format.decode(event.payload)}
        return set()

    async def request(self, code: Code, uri: str, payload: bytes = b"", **options: Any) -> Message:
        assert self.context is not None
        message = Message(code=code, uri=uri, payload=payload, **options)
        return await asyncio.wait_for(self.context.request(message).response, T)

    async def read(self, uri: str) -> str:
        response = await self.request(Code.GET, uri, accept=int(ContentFormat.TEXT))
        assert response.code == Code.CONTENT, (uri, response.code, response.payload)
        return response.payload.decode()

    def package_uri(self, data: bytes, name: str, *, digest: bool = True) -> str:
        self.files.publish(data, name)
        query = f"?sha256={hashlib.sha256(data).hexdigest()}" if digest else ""
        return f"{self.uri}/fw/{name}{query}"


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    site = Stage()
    site.context = await Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
    site.uri = f"coap://127.0.0.1:{bound_port(site.context)}"
    yield site
    await site.context.shutdown()


@contextlib.asynccontextmanager
async def running(stage: Stage, children: int = 3, **kw: Any) -> AsyncIterator[Gateway]:
    kw.setdefault("local_link", FAST)
    gw = Gateway("gw", stage.uri, children=children, child_firmware=kw.pop("child_firmware", options()),
                 drift_interval=0, reboot_delay=0.05, **kw)
    try:
        assert await gw.start(timeout=T)
        yield gw
    finally:
        await asyncio.wait_for(gw.stop(), T)


async def write_uri(stage: Stage, gw: Gateway, prefix: str, uri: str) -> None:
    response = await stage.request(Code.PUT, f"{gw.uri}/{prefix}/5/0/1", uri.encode(),
                                   content_format=int(ContentFormat.TEXT))
    assert response.code == Code.CHANGED, response


def fw_state(gw: Gateway, endpoint: str) -> tuple[State, UpdateResult]:
    fw = gw.child(endpoint).firmware
    assert fw is not None
    return fw.machine.state, fw.machine.result


async def settled(gw: Gateway, endpoints: list[str]) -> None:
    """Wait until no child's pull is under way and each left Downloading."""
    await eventually(lambda: all(fw_state(gw, e)[0] != State.DOWNLOADING for e in endpoints), timeout=T)


# --------------------------------------------------------------------------------------------- registration, routing


async def test_registers_with_one_25_instance_per_child_and_routes_by_prefix(stage: Stage) -> None:
    async with running(stage, 3) as gw:
        [register] = [e for e in stage.events if e.kind == "register"]
        assert register.endpoint == "gw"
        links = stage.links("gw")
        assert {"/25/0", "/25/1", "/25/2", "/3/0", "/1/0"} <= links
        for iid, child in enumerate(gw.children):
            assert await stage.read(f"{gw.uri}/25/{iid}/0") == child.endpoint == f"gw-c{iid}"
            assert await stage.read(f"{gw.uri}/25/{iid}/1") == child.prefix == f"d{iid}"
            objects = {link.target for link in link_format.decode((await stage.read(f"{gw.uri}/25/{iid}/3")).encode())}
            assert {"/3/0", "/5/0"} <= objects and not any(u.startswith(("/0", "/1/", "/25")) for u in objects)
        assert await stage.read(f"{gw.uri}/d0/3/0/2") == "SN-gw-c0"  # the child's own Device object
        assert await stage.read(f"{gw.uri}/3/0/2") == "SN-gw"  # no prefix: the gateway's own
        whole = await stage.request(Code.GET, f"{gw.uri}/d1/3/0", accept=int(ContentFormat.SENML_JSON))
        assert whole.code == Code.CONTENT and b"SN-gw-c1" in whole.payload
        assert (await stage.request(Code.GET, f"{gw.uri}/d9/3/0")).code == Code.NOT_FOUND
        assert (await stage.request(Code.GET, f"{gw.uri}/d0/7/0")).code == Code.NOT_FOUND  # no such object
        discover = await stage.request(Code.GET, f"{gw.uri}/d2/5", accept=int(ContentFormat.LINK))
        assert discover.code == Code.CONTENT and b"</5/0/3>" in discover.payload
        stats = gw.stats()
        assert stats.children == 3 and stats.local_bytes > 0 and stats.uplink_datagrams_in > 0


async def test_observe_a_childs_resource_through_the_gateway(stage: Stage) -> None:
    async with running(stage, 2) as gw:
        assert stage.context is not None
        request = stage.context.request(Message(code=Code.GET, uri=f"{gw.uri}/d1/3/0/9", observe=0,
                                                accept=int(ContentFormat.TEXT)))
        first = await asyncio.wait_for(request.response, T)
        assert first.code == Code.CONTENT and first.payload == b"100" and first.opt.observe is not None
        assert gw.child("gw-c1").observation_count == 1 and gw.child("gw-c0").observation_count == 0
        gw.child("gw-c1").objects.set_value(LwM2mPath.of(3, 0, 9), 42)  # the battery of the child drops

        async def next_notification() -> Message:
            async for notification in request.observation:
                return notification
            raise AssertionError("the observation ended")

        notification = await asyncio.wait_for(next_notification(), T)
        assert notification.payload == b"42"
        request.observation.cancel()


async def test_children_added_and_removed_at_run_time_change_the_registration(stage: Stage) -> None:
    async with running(stage, 1) as gw:
        child = gw.add_child("late-1")
        assert child.prefix == "d1" and child.instance_id == 1
        await eventually(lambda: "/25/1" in stage.links("gw"), timeout=T)
        assert await stage.read(f"{gw.uri}/d1/3/0/2") == "SN-late-1"
        await gw.remove_child("gw-c0")
        await eventually(lambda: "/25/0" not in stage.links("gw") and "/25/1" in stage.links("gw"), timeout=T)
        assert (await stage.request(Code.GET, f"{gw.uri}/d0/3/0")).code == Code.NOT_FOUND
        assert [c.endpoint for c in gw.children] == ["late-1"] and gw.stats().children == 1
        gw.add_child("unreachable", local_link=LocalLinkConditions(latency=0.0, loss=1.0, max_retries=1))
        response = await stage.request(Code.GET, f"{gw.uri}/d2/3/0")
        assert response.code == Code.GATEWAY_TIMEOUT and gw.stats().local_failures == 1


# ------------------------------------------------------------------------------------- pulls through the gateway


async def test_five_children_one_download_tampering_refused_and_a_reboot_under_a_new_id(stage: Stage) -> None:
    """5 children asked to pull one package (Package URI with its sha256): the uplink carries it once (1 miss,
    4 hits); the tampered child refuses its copy itself (Update Result 5, state Idle), the others are Downloaded;
    Execute /d0/5/0/2 installs: the child's /25 instance comes back under a new id, with the new version."""
    data = package(os.urandom(64 * 1024))
    uri = stage.package_uri(data, "release-2")
    endpoints = [f"gw-c{i}" for i in range(5)]
    async with running(stage, 5, tamper={"gw-c3"}, local_link=LocalLinkConditions()) as gw:  # 50 ms, 100 kB/s
        before = gw.stats()
        await asyncio.gather(*(write_uri(stage, gw, f"d{i}", uri) for i in range(5)))
        await settled(gw, endpoints)
        for i, endpoint in enumerate(endpoints):
            state, result = await stage.read(f"{gw.uri}/d{i}/5/0/3"), await stage.read(f"{gw.uri}/d{i}/5/0/5")
            if endpoint == "gw-c3":
                assert (state, result) == ("0", "5"), endpoint
                fw = gw.child(endpoint).firmware
                assert fw is not None and fw.version == "1.0.0" and fw.slots[1 - fw.active].version == ""
            else:
                assert (state, result) == ("2", "0"), endpoint
        stats = gw.stats()
        uplink_in = stats.uplink_bytes_in - before.uplink_bytes_in
        uplink_out = stats.uplink_bytes_out - before.uplink_bytes_out
        served = stage.files.served("release-2")[1]
        print(f"\npackage {len(data)} B; uplink in {uplink_in} B, out {uplink_out} B; file server sent {served} B; "
              f"local links {stats.local_bytes} B in {stats.local_frames} frames; {stats}")
        assert (stats.cache_misses, stats.cache_hits, stats.downloads) == (1, 4, 1)
        assert stats.downloaded_bytes == len(data) == stage.files.served("release-2")[1]
        assert len(data) <= uplink_in < 2 * len(data)
        assert stats.tampered == 1 and stats.cached_packages == 1 and stats.local_bytes >= 5 * len(data)

        old_iid = gw.child("gw-c0").instance_id
        assert old_iid is not None
        response = await stage.request(Code.POST, f"{gw.uri}/d0/5/0/2")
        assert response.code == Code.CHANGED
        await eventually(lambda: gw.child("gw-c0").instance_id not in (None, old_iid), timeout=T)
        new_iid = gw.child("gw-c0").instance_id
        assert new_iid is not None and new_iid > 4
        await eventually(lambda: f"/25/{new_iid}" in stage.links("gw") and f"/25/{old_iid}" not in stage.links("gw"),
                         timeout=T)
        assert await stage.read(f"{gw.uri}/25/{new_iid}/0") == "gw-c0"
        assert await stage.read(f"{gw.uri}/d0/3/0/3") == "2.0.0"
        assert (await stage.read(f"{gw.uri}/d0/5/0/3"), await stage.read(f"{gw.uri}/d0/5/0/5")) == ("0", "1")
        assert await stage.read(f"{gw.uri}/d1/3/0/3") == "1.0.0"  # the others did not install

        # the same package again, for a child that has not got it: from the cache, nothing on the uplink
        downloaded = gw.stats().downloaded_bytes
        await write_uri(stage, gw, "d4", "")  # the server resets the child's download first
        await write_uri(stage, gw, "d4", uri)
        await settled(gw, ["gw-c4"])
        assert fw_state(gw, "gw-c4") == (State.DOWNLOADED, UpdateResult.INITIAL)
        assert gw.stats().downloaded_bytes == downloaded and gw.stats().cache_hits == 5


async def test_without_a_digest_every_pull_downloads_and_a_wrong_digest_is_refused(stage: Stage) -> None:
    data = package(os.urandom(8 * 1024))
    plain = stage.package_uri(data, "plain", digest=False)
    lying = f"{stage.uri}/fw/plain?sha256={'0' * 64}"
    async with running(stage, 3) as gw:
        await asyncio.gather(write_uri(stage, gw, "d0", plain), write_uri(stage, gw, "d1", plain))
        await settled(gw, ["gw-c0", "gw-c1"])
        assert fw_state(gw, "gw-c0")[0] == fw_state(gw, "gw-c1")[0] == State.DOWNLOADED
        stats = gw.stats()
        assert (stats.downloads, stats.cache_misses, stats.cache_hits, stats.cached_packages) == (2, 2, 0, 0)
        await write_uri(stage, gw, "d2", lying)
        await settled(gw, ["gw-c2"])
        assert fw_state(gw, "gw-c2") == (State.IDLE, UpdateResult.INTEGRITY_CHECK_FAILURE)
        stats = gw.stats()
        assert (stats.digest_mismatches, stats.cached_packages, stats.failed_downloads) == (1, 0, 1)
        missing = f"{stage.uri}/fw/nothing?sha256={hashlib.sha256(b'x').hexdigest()}"
        await write_uri(stage, gw, "d2", "")
        await write_uri(stage, gw, "d2", missing)
        await settled(gw, ["gw-c2"])
        assert fw_state(gw, "gw-c2") == (State.IDLE, UpdateResult.INVALID_URI)


async def test_a_push_through_the_gateway_is_forwarded_block_by_block(stage: Stage) -> None:
    data = package(os.urandom(6 * 1024))
    async with running(stage, 2, tamper={"gw-c1"}) as gw:
        for prefix, expected in (("d0", (State.DOWNLOADED, UpdateResult.INITIAL)),
                                 ("d1", (State.IDLE, UpdateResult.INTEGRITY_CHECK_FAILURE))):
            response = await stage.request(Code.PUT, f"{gw.uri}/{prefix}/5/0/0", data,
                                           content_format=int(ContentFormat.OPAQUE))
            endpoint = f"gw-{prefix.replace('d', 'c')}"
            assert fw_state(gw, endpoint) == expected, (endpoint, response.code)
            fw = gw.child(endpoint).firmware
            assert fw is not None and fw.push_blocks > 1  # forwarded block by block, never assembled
        fw = gw.child("gw-c0").firmware
        assert fw is not None and fw.last_package == data
        assert gw.stats().tampered == 1 and gw.stats().downloads == 0


# --------------------------------------------------------------------------------------------- pieces


async def test_local_link_counts_frames_and_retransmissions_reproducibly() -> None:
    lossy = LocalLinkConditions(latency=0.0, loss=0.3, bandwidth=1e9, frame_size=100, max_retries=50)
    counts = []
    for _ in range(2):
        link = LocalLink(lossy, "child-x")
        for size in (1000, 250, 1):
            await link.transfer(size)
        counts.append(link.counters)
    assert counts[0] == counts[1]  # seeded with the endpoint: the same losses every run
    c = counts[0]
    assert (c.bytes, c.transfers) == (1251, 3) and c.retransmissions > 0 and c.frames == 10 + 3 + 1 + c.retransmissions
    dead = LocalLink(LocalLinkConditions(latency=0.0, loss=1.0, bandwidth=1e9, max_retries=2), "child-y")
    with pytest.raises(LocalLinkError):
        await dead.transfer(10)
    assert (dead.counters.failures, dead.counters.retransmissions, dead.counters.bytes) == (1, 3, 0)
    with pytest.raises(ValueError):
        LocalLinkConditions(bandwidth=0)


def test_package_cache_is_bounded_lru_and_the_digest_comes_from_the_query() -> None:
    cache = PackageCache(100)
    cache.put("a", bytes(40))
    cache.put("b", bytes(40))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", bytes(40))
    assert (cache.get("b"), len(cache), cache.size) == (None, 2, 80)
    cache.put("huge", bytes(101))
    assert cache.get("huge") is None
    digest = hashlib.sha256(b"p").hexdigest()
    assert package_digest(f"coaps://h:5684/fw/x?sha256={digest}") == digest
    assert package_digest(f"coap://h/fw/x?a=1&sha256={digest}") == digest
    assert package_digest(f"coap://h/fw/x?sha256={digest.upper()}") is None
    assert package_digest("coap://h/fw/x") is None


# --------------------------------------------------------------------------------------------- CLI


def test_scratch_sim_gateway_options() -> None:
    from lwm2m_server.cli.app import app

    env = {"COLUMNS": "300", "TERM": "dumb"}
    shown = CliRunner().invoke(app, ["sim", "--help"], env=env)
    assert shown.exit_code == 0
    for option in ("--gateway", "--children", "--local-latency", "--local-loss", "--local-bandwidth",
                   "--tamper-child"):
        assert option in shown.output
    for args, needle in ((["--children", "3"], "--gateway"),
                         (["--gateway"], "--children"),
                         (["--gateway", "--children", "2", "--credentials", "f.csv"], "--credentials")):
        result = CliRunner().invoke(app, ["sim", "--server", "coap://127.0.0.1:5683", "--insecure-accept-any",
                                          *args], env=env)
        assert result.exit_code == 2 and needle in result.stderr, result.stderr


async def test_run_gateways_registers_its_gateway_and_prints_its_counters(
        stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    stop = asyncio.Event()

    async def stop_when(predicate: Callable[[], bool]) -> None:
        await eventually(predicate, timeout=T)
        stop.set()

    stopper = asyncio.get_running_loop().create_task(stop_when(lambda: "/25/2" in stage.links("lab-gw")))
    total = await asyncio.wait_for(run_gateways(stage.uri, 1, 3, prefix="lab-", firmware=options(),
                                                local_link=FAST, stop=stop), T)
    await stopper
    out = capsys.readouterr().out
    assert "starting 1 gateway(s) lab-gw with 3 end device(s)" in out
    assert "lab-gw-c2: registered" in out and "stopped: 3 children up" in out
    assert total.uplink_datagrams_out > 0 and total.uplink_bytes_out > 0
    assert [e.kind for e in stage.events if e.endpoint == "lab-gw"][-1] == "deregister"
