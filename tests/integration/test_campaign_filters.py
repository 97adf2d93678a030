"""Campaign target filters on tag, class (model number /3/0/1), version and endpoint, on 127.0.0.1: a real server
with its SQLite database and vault, simulated devices over plain CoAP (the filters, not DTLS, are under test here;
campaigns over DTLS run in tests/cli/test_campaign_crash.py), and the tag commands through the REST API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bootstrap.vault import Vault
from client_sim.device import SimulatedDevice
from client_sim.firmware import Faults
from lwm2m_server.cli.app import app as scratch_app
from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.fota.campaigns import CampaignService
from lwm2m_server.server import Lwm2mServer
from tests.harness import running_server

MODEL_NUMBER = LwM2mPath.of(3, 0, 1)
FIRMWARE_VERSION = LwM2mPath.of(3, 0, 3)
SIM_CLASS = "SCRATCh-SIM-1"  # client_sim's model number

# endpoint -> (model number, version, tags in the default tenant)
FLEET = {
    "f-0": (SIM_CLASS, "1.0.0", ["beta", "site:lyon"]),
    "f-1": ("meter", "1.0.0", ["beta"]),
    "f-2": ("meter", "2.0.0", ["site:lyon"]),
    "f-3": (SIM_CLASS, "2.0.0", []),
}


@contextlib.asynccontextmanager
async def fleet_server(tmp_path: Path, *, with_link: str | None = None
                       ) -> AsyncIterator[tuple[Lwm2mServer, dict[str, SimulatedDevice]]]:
    """The server and the FLEET registered and tagged; ``with_link`` names a device whose datagrams go through a
    client_sim link (so that the test can take the link down: a device registered but silent)."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    vault = Vault.open(data / "vault.key")
    async with running_server(data, coap_port=0, vault=vault, api_port=0, request_timeout=2.0,
                              campaign_tick=0.2) as srv:
        devices: dict[str, SimulatedDevice] = {}
        try:
            for ep, (model, version, _) in FLEET.items():
                faults = Faults(delay=0.001) if ep == with_link else None  # a delay gives the device a link
                dev = devices[ep] = SimulatedDevice(ep, srv.coap_uri, drift_interval=0, lifetime=300, faults=faults)
                dev.objects.set_value(MODEL_NUMBER, model)
                dev.objects.set_value(FIRMWARE_VERSION, version)
            started = await asyncio.gather(*(d.start(timeout=10) for d in devices.values()))
            assert all(started), started
            assert srv.tags is not None
            for ep, (_, _, tags) in FLEET.items():
                if tags:
                    srv.tags.add(ep, tags, tenant_id="default")
            yield srv, devices
        finally:
            await asyncio.gather(*(d.stop(timeout=2) for d in devices.values()), return_exceptions=True)


def service(srv: Lwm2mServer) -> CampaignService:
    assert srv.campaigns is not None and srv.campaigns.tags is srv.tags
    return srv.campaigns


@pytest.mark.timeout(30)
async def test_filters_on_tag_class_version_and_endpoint(tmp_path: Path) -> None:
    async with fleet_server(tmp_path) as (srv, _devices):
        campaigns = service(srv)
        assert srv.tags is not None
        # tagged inventory that never registered: never a filter's target
        srv.tags.add("ghost", ["beta"], tenant_id="default")
        srv.tags.add("f-3", ["beta"], tenant_id="other-oem")  # another tenant's tag is not seen

        async def pick(expression: str) -> list[str]:
            return await asyncio.wait_for(campaigns.select_targets(expression, tenant_id="default"), 10)

        assert await pick("tag=beta") == ["f-0", "f-1"]
        assert await pick("tag!=beta") == ["f-2", "f-3"]
        assert await pick("tag=site:lyon and tag=beta") == ["f-0"]
        assert await pick("tag=nobody-has-it") == []
        assert await pick("class=meter") == ["f-1", "f-2"]
        assert await pick("class!=meter") == ["f-0", "f-3"]
        assert await pick(f"class={SIM_CLASS}") == ["f-0", "f-3"]
        assert await pick("class=meter and version!=2.0.0") == ["f-1"]
        assert await pick("tag=site:lyon and class=meter") == ["f-2"]
        assert await pick("tag!=beta, class!=meter, version=2.0.0") == ["f-3"]  # commas join too
        assert await pick("endpoint=f-[01] and class=meter") == ["f-1"]
        assert await pick("endpoint!=f-0 and tag=beta") == ["f-1"]
        assert await pick("version=1.0.0") == ["f-0", "f-1"]
        assert await pick("endpoint=f-*") == ["f-0", "f-1", "f-2", "f-3"]
        assert await campaigns.select_targets("tag=beta", tenant_id="other-oem") == []  # it has no registration

        # a filtered campaign records its filter and targets exactly what the filter picked
        release = campaigns.releases.create([("app.bin", b"\x01" * 512)], vendor="acme.example", class_name="meter",
                                            version="2.0.0", now=1_700_000_000.0, tenant_id="default")
        status = await campaigns.create([release.id], tenant_id="default", target_filter="class=meter and tag=beta")
        assert status["targets"] == 1 and status["targets_from"] == "filter: class=meter and tag=beta"
        jobs = campaigns.status(status["id"], tenant_id="default", jobs=True)["jobs"]
        assert [j["endpoint"] for j in jobs] == ["f-1"]


@pytest.mark.timeout(30)
async def test_a_device_whose_class_cannot_be_read_matches_no_class_term(tmp_path: Path) -> None:
    async with fleet_server(tmp_path, with_link="f-1") as (srv, devices):
        campaigns = service(srv)
        link = devices["f-1"].link
        assert link is not None
        link.up = False  # still registered, no longer answering (its requests time out after 2 s)

        async def pick(expression: str) -> list[str]:
            return await asyncio.wait_for(campaigns.select_targets(expression, tenant_id="default"), 15)

        assert await pick("class=meter") == ["f-2"]
        assert await pick("class!=meter") == ["f-0", "f-3"]
        assert await pick("tag=beta") == ["f-0", "f-1"]  # tags need no answer


@pytest.mark.parametrize(("expression", "needle"), [
    ("model=meter", "endpoint=GLOB, tag=T, class=C or version=X"),
    ("tag", "endpoint=GLOB, tag=T, class=C or version=X"),
    ("class=", "endpoint=GLOB, tag=T, class=C or version=X"),
    ("tag=has space", "a tag is 1 to 64 characters"),
    ("", "the filter is empty"),
])
async def test_bad_filters_are_refused_with_every_key_named(tmp_path: Path, expression: str, needle: str) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    async with running_server(data, coap_port=0, vault=Vault.open(data / "vault.key")) as srv:
        with pytest.raises(InvalidRequestError, match=needle):
            await service(srv).select_targets(expression, tenant_id="default")


def scratch(data_dir: Path, api: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(scratch_app, [*args, "--api", api, "--data-dir", str(data_dir)],
                                env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.timeout(30)
async def test_tag_commands_and_routes_through_the_rest_api(tmp_path: Path) -> None:
    async with fleet_server(tmp_path) as (srv, _devices):
        data, api = srv.settings.data_dir, srv.api_url

        async def cli(*args: str) -> tuple[int, str, str]:
            return await asyncio.to_thread(scratch, data, api, "device", *args)

        code, out, err = await cli("tag", "f-3", "canary", "site:paris")
        assert code == 0, err
        assert "f-3: canary, site:paris" in out
        code, out, err = await cli("tag", "spare-9", "stock", "--json")  # not registered: taggable all the same
        assert code == 0, err
        assert json.loads(out) == {"endpoint": "spare-9", "tags": ["stock"]}
        code, out, err = await cli("untag", "f-3", "site:paris", "never-there")
        assert (code, out.strip()) == (0, "f-3: canary"), err
        code, out, err = await cli("tags", "f-3", "--json")
        assert json.loads(out) == {"endpoint": "f-3", "tags": ["canary"]}
        code, out, err = await cli("tags", "--json")
        assert code == 0, err
        assert json.loads(out) == {"f-0": ["beta", "site:lyon"], "f-1": ["beta"], "f-2": ["site:lyon"],
                                   "f-3": ["canary"], "spare-9": ["stock"]}
        code, out, err = await cli("tags")
        assert code == 0 and "5 tagged devices" in out and "spare-9" in out and "site:lyon" in out, err
        code, out, err = await cli("tag", "f-3", "bad tag")
        assert code == 1 and "a tag is 1 to 64 characters" in err
        assert srv.tags is not None and srv.tags.of("f-3", tenant_id="default") == ["canary"]  # nothing written

        # the campaign filter sees what the CLI wrote
        assert await service(srv).select_targets("tag=canary", tenant_id="default") == ["f-3"]

        async with httpx.AsyncClient(base_url=api, timeout=10) as http:
            auth = {"Authorization": f"Bearer {srv.api_token}"}
            r = await http.post("/api/devices/f-3/tags", json={"add": ["x"], "remove": ["canary"]}, headers=auth)
            assert (r.status_code, r.json()) == (200, {"endpoint": "f-3", "tags": ["x"]})
            r = await http.post("/api/devices/f-3/tags", json={"add": ["ok", "no/slash"]}, headers=auth)
            assert r.status_code == 400 and r.json()["kind"] == "InvalidTagError"
            r = await http.get("/api/devices/f-3/tags", headers=auth)
            assert r.json() == {"endpoint": "f-3", "tags": ["x"]}
            assert (await http.get("/api/tags")).status_code == 401
            assert (await http.get("/api/devices/f-3/tags")).status_code == 401
