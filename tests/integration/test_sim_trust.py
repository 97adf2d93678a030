"""Simulated SUIT devices fail closed: no trust anchor, no device, unless accepting anything is asked for.

Python API (FirmwareOptions) and CLI (``scratch sim``): neither a trust anchor nor ``insecure_accept_any`` is a
one-line error before anything starts; ``insecure_accept_any`` is warned about and installs an unsigned package;
a device with a trust anchor refuses that same package (Update Result 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from client_sim.device import SimulatedDevice
from client_sim.firmware import FirmwareOptions
from firmware_object.errors import UpdateResult
from firmware_object.suit.envelope import build_envelope
from firmware_object.suit.keys import generate_private_key
from firmware_object.suit.manifest import ReleaseManifest
from lwm2m_server.cli.app import app
from lwm2m_server.fota.service import Method
from lwm2m_server.server import Lwm2mServer
from tests.harness import eventually, running_server

VENDOR = uuid.UUID("fa6b4a53-d5ad-5fdf-be9d-e663e4d41ffe")
CLASS = uuid.UUID("1492af14-2569-5e48-bf42-9b2d51f2ab45")
SCRATCH = Path(sys.executable).with_name("scratch")


def unsigned_package(image: bytes) -> bytes:
    manifest = ReleaseManifest(sequence_number=2, vendor_id=VENDOR, class_id=CLASS,
                               image_digest=hashlib.sha256(image).digest(), image_size=len(image), version="2.0.0")
    return build_envelope(manifest, [], image=image)


def test_firmware_options_need_a_trust_anchor_or_an_explicit_accept_any() -> None:
    with pytest.raises(ValueError, match="needs a trust anchor") as refused:
        FirmwareOptions()
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="exclude each other"):
        FirmwareOptions(trust_anchors=(generate_private_key("es256").public_key(),), insecure_accept_any=True)
    assert FirmwareOptions(insecure_accept_any=True).trust_anchors == ()


@contextlib.asynccontextmanager
async def device(srv: Lwm2mServer, endpoint: str, options: FirmwareOptions) -> AsyncIterator[SimulatedDevice]:
    dev = SimulatedDevice(endpoint, srv.coap_uri, reboot_delay=0.05, firmware=options)
    try:
        assert await dev.start(timeout=10)
        yield dev
    finally:
        await dev.stop()


async def test_accept_any_installs_unsigned_and_warns_while_an_anchor_refuses_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = os.urandom(3000)
    data = unsigned_package(image)
    trusted = FirmwareOptions(trust_anchors=(generate_private_key("es256").public_key(),), vendor_id=VENDOR,
                              class_id=CLASS, sequence_number=1)
    lab = FirmwareOptions(insecure_accept_any=True, vendor_id=VENDOR, class_id=CLASS, sequence_number=1)
    async with running_server(tmp_path) as srv:
        assert srv.firmware is not None
        async with device(srv, "anchored", trusted) as dev:
            job = await srv.firmware.update("anchored", data, method=Method.PUSH, timeout=30, tenant_id="default")
            assert not job.succeeded and job.last.result == UpdateResult.INTEGRITY_CHECK_FAILURE, job.last
            assert dev.firmware is not None and dev.firmware.version == "1.0.0"
        with caplog.at_level(logging.WARNING, logger="client_sim.firmware"):
            import client_sim.firmware as firmware_module

            firmware_module._warned_accept_any = False  # once per process: this test wants to see it
            async with device(srv, "lab", lab) as dev:
                job = await srv.firmware.update("lab", data, method=Method.PUSH, timeout=30, tenant_id="default")
                assert job.succeeded, job.last
                assert dev.firmware is not None and dev.firmware.slots[dev.firmware.active].image == image
        assert any("INSECURE" in r.getMessage() and "ANY package" in r.getMessage() for r in caplog.records)


def test_scratch_sim_refuses_to_start_without_a_trust_anchor() -> None:
    for args, needle in ((["--server", "coap://127.0.0.1:5683", "--count", "1"], "--insecure-accept-any"),
                         (["--server", "coap://127.0.0.1:5683", "--count", "1", "--trust", "k.pem",
                           "--insecure-accept-any"], "exclude each other")):
        result = CliRunner().invoke(app, ["sim", *args], env={"COLUMNS": "300", "TERM": "dumb"})
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
        assert "--trust" in lines[0]


async def test_scratch_sim_insecure_accept_any_runs_and_says_so(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv:
        assert srv.registrations is not None
        registrations = srv.registrations
        proc = await asyncio.create_subprocess_exec(
            str(SCRATCH), "sim", "--server", srv.coap_uri, "--count", "1", "--prefix", "lab-",
            "--insecure-accept-any", stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            await eventually(lambda: registrations.by_endpoint("lab-0", tenant_id="default") is not None, timeout=30)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, stderr.decode()
        assert "WARNING: --insecure-accept-any" in stderr.decode() and "unsigned" in stderr.decode()
