"""Multi-component and differential updates end to end: real sockets on 127.0.0.1, real SQLite, simulated devices.

- a three-component release (application, radio firmware, configuration file) to six devices; one device's new
  radio image fails its health check: it rolls back all three components and says which one failed (object 32700),
  the campaign reports it rolled back with every component's version and state; the five others run all three new
  versions, each component's digest the release's; the signed report carries the components and verifies;
- a 1 MiB application image with a few KiB changed: a delta release; devices running the base version get the
  delta (a fraction of the bytes on the wire: measured from what each device fetched), a device whose installed
  image is not the delta's base gets the full package, a device whose delta arrives damaged falls back to the full
  package and is updated; a device that loses power during its download resumes it (by the package's digest,
  its ETag) instead of starting over; every device ends on the new image.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from pathlib import Path
from typing import Any

import pytest

from client_sim.components import InstalledComponent
from client_sim.firmware import Faults, FirmwareOptions
from client_sim.fleet import Fleet
from firmware_object.campaign import Policy
from firmware_object.suit.keys import load_public_key
from lwm2m_server.fota import attestation
from lwm2m_server.fota.releases import SystemComponent
from tests.harness import eventually
from tests.integration.test_campaigns import campaign_server, run_to_end, trust_anchor

VENDOR, CLASS = "acme.example", "meter"


def content(name: str, version: str, size: int) -> bytes:
    """Deterministic bytes for a component version (what a build would produce)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}/{version}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def system(version: str) -> list[tuple[str, str, bytes]]:
    return [("app", "image", content("app", version, 64 * 1024)),
            ("radio", "image", content("radio", version, 32 * 1024)),
            ("config", "data", content("config", version, 512))]


def installed(version: str) -> tuple[InstalledComponent, ...]:
    return tuple(InstalledComponent(name, kind, version, data) for name, kind, data in system(version))  # type: ignore[arg-type]


def by_name(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert job["components"] is not None, job
    return {c["name"]: c for c in job["components"]}


@pytest.mark.timeout(180)
async def test_three_components_all_installed_or_all_rolled_back_when_the_radio_fails_to_boot(
        tmp_path: Path) -> None:
    async with campaign_server(tmp_path) as (srv, _store):
        assert srv.campaigns is not None
        releases = srv.campaigns.releases
        new = system("2.0.0")
        rel = releases.create_system([SystemComponent(name, data, kind=kind) for name, kind, data in new],  # type: ignore[arg-type]
                                     vendor=VENDOR, class_name=CLASS, version="2.0.0", tenant_id="default",
                                     now=time.time())
        assert rel.package_format == "system" and [i.name for i in rel.images] == ["app", "radio", "config"]
        anchor = trust_anchor(srv)
        endpoints = [f"m-{i}" for i in range(6)]
        broken = "m-3"

        def options_for(i: int) -> dict[str, Any]:
            return {"firmware": FirmwareOptions(trust_anchors=(anchor,), vendor_id=rel.vendor_id,
                                                class_id=rel.class_id, version="1.0.0", components=installed("1.0.0"),
                                                fail_boot_component="radio" if endpoints[i] == broken else None)}

        fleet = Fleet(srv.coap_uri, len(endpoints), prefix="m-", lifetime=600, concurrency=6, drift_interval=0,
                      options_for=options_for)
        try:
            await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
            await eventually(lambda: fleet.status.registered == len(endpoints), timeout=30)
            status = await srv.campaigns.create([rel.id], tenant_id="default", targets=endpoints,
                                                policy=Policy(canary=1, waves=1, max_parallel=6,
                                                              success_threshold=0.5, max_attempts=2))
            await srv.campaigns.start_campaign(status["id"], tenant_id="default")
            final = await run_to_end(srv, status["id"], timeout=150)
            jobs = {j["endpoint"]: j for j in final["jobs"]}
            digests = {name: hashlib.sha256(data).hexdigest() for name, _, data in new}
            old = {name: hashlib.sha256(data).hexdigest() for name, _, data in system("1.0.0")}

            rolled = jobs[broken]
            assert rolled["state"] == "rolled-back" and rolled["update_result"] == 8, rolled
            assert rolled["version_after"] == "1.0.0" and "radio" in rolled["reason"], rolled
            components = by_name(rolled)
            assert components["radio"]["state"] == "failed", components
            assert {components[n]["state"] for n in ("app", "config")} == {"rolled back"}, components
            assert {n: (c["version"], c["digest"]) for n, c in components.items()} == {
                n: ("1.0.0", old[n]) for n in old}

            for ep in endpoints:
                if ep == broken:
                    continue
                job = jobs[ep]
                assert job["state"] == "succeeded" and job["version_after"] == "2.0.0", job
                assert job["delivery"] == "full"
                assert {n: (c["version"], c["digest"], c["state"], c["kind"]) for n, c in by_name(job).items()} == {
                    name: ("2.0.0", digests[name], "installed", kind) for name, kind, _ in new}

            devices = {d.endpoint: d for d in fleet.devices}
            assert devices[broken].firmware.version == "1.0.0"  # type: ignore[union-attr]
            assert devices[broken].firmware.rollbacks == 1  # type: ignore[union-attr]

            report, cose = srv.campaigns.report(status["id"], tenant_id="default")
            key = load_public_key(srv.campaigns.attestation_public_pem(tenant_id="default").encode())
            assert attestation.verify_report(cose, key) == report
            targets = {t["endpoint"]: t for t in report["targets"]}
            assert by_name(targets[broken])["radio"]["state"] == "failed"
            assert by_name(targets["m-0"])["config"]["digest"] == digests["config"]
        finally:
            await fleet.stop(deregister=False)


def edited(image: bytes, seed: int, changes: int = 4, span: int = 1024) -> bytes:
    """``image`` with ``changes`` runs of ``span`` random bytes replaced (a few KiB differ)."""
    rng = random.Random(seed)
    out = bytearray(image)
    for _ in range(changes):
        at = rng.randrange(0, len(out) - span)
        out[at:at + span] = rng.randbytes(span)
    return bytes(out)


@pytest.mark.timeout(240)
async def test_a_delta_cuts_the_bytes_and_a_device_off_the_base_or_with_a_broken_delta_gets_the_full_image(
        tmp_path: Path) -> None:
    async with campaign_server(tmp_path) as (srv, _store):
        assert srv.campaigns is not None
        releases = srv.campaigns.releases
        base_image = random.Random(7).randbytes(1 << 20)  # 1 MiB
        new_image = edited(base_image, seed=8)  # 4 KiB differ
        odd_image = edited(base_image, seed=9)  # a device whose 1.0.0 is not the released 1.0.0
        v1 = releases.create_system([SystemComponent("app", base_image)], vendor=VENDOR, class_name=CLASS,
                                    version="1.0.0", tenant_id="default", now=time.time())
        v2 = releases.create_system([SystemComponent("app", new_image)], vendor=VENDOR, class_name=CLASS,
                                    version="2.0.0", tenant_id="default", now=time.time())
        delta = releases.add_delta(v2.id, base_release_id=v1.id, tenant_id="default", now=time.time())
        full_size = v2.images[0].package_size
        assert delta.package_size <= 0.2 * full_size, (delta.package_size, full_size)
        anchor = trust_anchor(srv)
        endpoints = [f"d-{i}" for i in range(4)]
        odd, damaged = "d-2", "d-3"

        def options_for(i: int) -> dict[str, Any]:
            ep = endpoints[i]
            app = InstalledComponent("app", "image", "1.0.0", odd_image if ep == odd else base_image)
            return {"firmware": FirmwareOptions(trust_anchors=(anchor,), vendor_id=v2.vendor_id,
                                                class_id=v2.class_id, version="1.0.0",
                                                sequence_number=v1.sequence_number, components=(app,),
                                                flash_size=4 << 20),
                    # the odd device loses power a third into its (full) download and resumes it by digest
                    "faults": Faults(corrupt_download=ep == damaged, offline_at=400_000 if ep == odd else None,
                                     offline_for=1.0)}

        fleet = Fleet(srv.coap_uri, len(endpoints), prefix="d-", lifetime=600, concurrency=4, drift_interval=0,
                      options_for=options_for)
        try:
            await asyncio.wait_for(fleet.start(timeout_per_device=30), 60)
            await eventually(lambda: fleet.status.registered == len(endpoints), timeout=30)
            status = await srv.campaigns.create([v2.id], tenant_id="default", targets=endpoints, method="pull",
                                                policy=Policy(canary=1, waves=1, max_parallel=4,
                                                              success_threshold=0.5, max_attempts=3,
                                                              backoff_base=1.0, backoff_max=2.0))
            await srv.campaigns.start_campaign(status["id"], tenant_id="default")
            final = await run_to_end(srv, status["id"], timeout=200)
            jobs = {j["endpoint"]: j for j in final["jobs"]}
            devices = {d.endpoint: d for d in fleet.devices}
            fetched = {ep: devices[ep].firmware.fetched_bytes for ep in endpoints}  # type: ignore[union-attr]
            print(f"full package {full_size} bytes, delta package {delta.package_size} bytes "
                  f"({100 * (1 - delta.package_size / full_size):.1f} % fewer); fetched per device: {fetched}")
            new_digest = hashlib.sha256(new_image).hexdigest()
            for ep in endpoints:
                job = jobs[ep]
                assert job["state"] == "succeeded" and job["version_after"] == "2.0.0", job
                assert by_name(job)["app"]["digest"] == new_digest
            for ep in ("d-0", "d-1"):  # on the base: the delta, and only the delta, went over the wire
                assert jobs[ep]["delivery"] == "delta" and jobs[ep]["attempts"] == 1, jobs[ep]
                assert fetched[ep] <= 0.2 * full_size, fetched
            assert jobs[odd]["delivery"] == "full", jobs[odd]  # chosen up front, on every try
            assert devices[odd].firmware.resumes == 1 and devices[odd].firmware.resumed_bytes >= 300_000  # type: ignore[union-attr]
            assert full_size <= fetched[odd] < 1.1 * full_size  # each byte fetched about once, not twice
            # the damaged delta was refused by the device (integrity), then the full package went
            assert jobs[damaged]["delivery"] == "full" and jobs[damaged]["attempts"] == 2, jobs[damaged]
            assert devices[damaged].firmware.corrupted == 1  # type: ignore[union-attr]
            report, cose = srv.campaigns.report(status["id"], tenant_id="default")
            key = load_public_key(srv.campaigns.attestation_public_pem(tenant_id="default").encode())
            assert attestation.verify_report(cose, key) == report
            assert {t["endpoint"]: t["delivery"] for t in report["targets"]} == {
                "d-0": "delta", "d-1": "delta", odd: "full", damaged: "full"}
        finally:
            await fleet.stop(deregister=False)
