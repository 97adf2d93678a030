"""The `scratch` command line as a user runs it: a real server process, real simulated devices in another
process, and the client commands against them."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRATCH = [sys.executable, "-m", "lwm2m_server.cli.app"]


def run(*args: str, data_dir: Path, timeout: float = 30, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCRATCH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SCRATCH_DATA_DIR": str(data_dir), "COLUMNS": "200", **(env or {})})


def wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 30) -> re.Match[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError(f"{pattern!r} not printed; got {''.join(seen)!r}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[tuple[Path, str]]:
    data_dir = tmp_path_factory.mktemp("scratch-data")
    env = {**os.environ, "SCRATCH_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([*SCRATCH, "server", "--insecure", "--coap", "127.0.0.1:0", "--coaps", "127.0.0.1:0",
                               "--api", "127.0.0.1:0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sim = None
    try:
        uri = wait_for_line(server, r"LwM2M server on coaps://\S+ \(DTLS-PSK\) and (coap://\S+) \(plain").group(1)
        sim = subprocess.Popen([*SCRATCH, "sim", "--server", uri, "--count", "3", "--prefix", "cli-",
                                "--insecure-accept-any"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(3):
            wait_for_line(sim, r"cli-\d: registered")
        yield data_dir, uri
    finally:
        if sim is not None:
            stop(sim)
        stop(server)


def test_token_file_is_private(fleet):
    data_dir, _ = fleet
    token = data_dir / "api-token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert (data_dir / "api-url").read_text().startswith("http://127.0.0.1:")


def test_device_list(fleet):
    data_dir, _ = fleet
    r = run("device", "list", "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    devices = json.loads(r.stdout)
    assert sorted(d["endpoint"] for d in devices) == ["cli-0", "cli-1", "cli-2"]
    table = run("device", "list", data_dir=data_dir)
    assert table.returncode == 0 and "cli-1" in table.stdout and "3 registered" in table.stdout


@pytest.mark.parametrize("fmt", ["text", "tlv", "senml-json", "senml-cbor", "lwm2m-cbor"])
def test_device_read_in_every_format(fleet, fmt):
    data_dir, _ = fleet
    r = run("device", "read", "cli-0", "/3/0/0", "--format", fmt, "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["content"]["value"] == "SCRATCh"
    whole = "/3/0/0" if fmt == "text" else "/3/0"  # text/plain carries single values only
    table = run("device", "read", "cli-0", whole, "--format", fmt, data_dir=data_dir)
    assert table.returncode == 0, table.stderr
    assert "Manufacturer" in table.stdout and "SCRATCh" in table.stdout
    if fmt != "text":
        assert "Serial Number" in table.stdout


def test_device_write_then_read(fleet):
    data_dir, _ = fleet
    r = run("device", "write", "cli-1", "/3/0/14", "+02:00", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    r = run("device", "read", "cli-1", "/3/0/14", "--json", data_dir=data_dir)
    assert json.loads(r.stdout)["content"]["value"] == "+02:00"
    r = run("device", "write", "cli-1", "/1/0", '{"1": 900, "2": 1}', "--update", "--format", "tlv",
            data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    r = run("device", "read", "cli-1", "/1/0/1", "--json", data_dir=data_dir)
    assert json.loads(r.stdout)["content"]["value"] == 900


def test_device_execute_discover_attributes_observe(fleet):
    data_dir, _ = fleet
    r = run("device", "execute", "cli-2", "/1/0/8", data_dir=data_dir)
    assert r.returncode == 0 and "2.04" in r.stdout, r.stderr
    r = run("device", "attributes", "cli-2", "/3/0/13", "pmin=0", "pmax=1", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    r = run("device", "discover", "cli-2", "/3/0", data_dir=data_dir)
    assert r.returncode == 0 and "</3/0/13>;pmin=0;pmax=1" in r.stdout, r.stdout + r.stderr
    r = run("device", "observe", "cli-2", "/3/0/13", "--count", "2", "--json", data_dir=data_dir)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["observing"] is True and [x.get("notification") for x in lines[1:]] == [1, 2]


@pytest.mark.parametrize("args,needle,code", [
    (["device", "read", "nobody", "/3/0/0"], "no device registered as 'nobody'", 1),
    (["device", "read", "cli-0", "/3/0/99"], "4.04", 1),
    (["device", "write", "cli-0", "/3/0/0", "x"], "4.05", 1),
    (["device", "read", "cli-0", "/3/x"], "invalid LwM2M path", 2),
    (["device", "read", "cli-0", "/3/0", "--format", "yaml"], "unknown content format", 1),
    (["device", "write", "cli-0", "/3/0/13", "soon"], "not a valid Time value", 1),
    (["device", "execute", "cli-0", "/3/0/4", "not args"], "invalid Execute arguments", 1),
    (["device", "read", "cli-0", "/3/0", "--format", "text"], "4.06", 1),
])
def test_errors_are_one_clear_line_and_non_zero(fleet, args, needle, code):
    data_dir, _ = fleet
    r = run(*args, data_dir=data_dir)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_no_server_running(tmp_path):
    r = run("device", "list", data_dir=tmp_path)
    assert r.returncode == 1 and "no running server found" in r.stderr
    (tmp_path / "api-url").write_text("http://127.0.0.1:9\n")
    (tmp_path / "api-token").write_text("x\n")
    r = run("device", "list", data_dir=tmp_path)
    assert r.returncode == 1 and "cannot reach the server" in r.stderr


def test_wrong_token_is_refused(fleet, tmp_path):
    data_dir, _ = fleet
    url = (data_dir / "api-url").read_text().strip()
    r = run("device", "list", data_dir=tmp_path, env={"SCRATCH_API": url, "SCRATCH_API_TOKEN": "wrong"})
    assert r.returncode == 1 and "missing, wrong, expired or revoked API token" in r.stderr


def test_a_gateway_and_its_end_devices(fleet):
    """`scratch sim --gateway`: the end devices behind it are devices of their own, shown with their gateway, and
    `scratch device read` reaches them through it."""
    data_dir, uri = fleet
    env = {**os.environ, "SCRATCH_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    gateway = subprocess.Popen([*SCRATCH, "sim", "--server", uri, "--gateway", "--children", "3", "--prefix", "yard-",
                                "--insecure-accept-any"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_line(gateway, r"yard-gw: registered")
        deadline = time.monotonic() + 30
        while True:
            listed = json.loads(run("device", "list", "--gateway", "yard-gw", "--json", data_dir=data_dir).stdout)
            if len(listed) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(d["endpoint"] for d in listed) == ["yard-gw-c0", "yard-gw-c1", "yard-gw-c2"]
        assert {d["gateway"] for d in listed} == {"yard-gw"} and all(d["reachable"] for d in listed)

        shown = json.loads(run("device", "show", "yard-gw", "--json", data_dir=data_dir).stdout)
        assert shown["children"] == ["yard-gw-c0", "yard-gw-c1", "yard-gw-c2"] and shown["gateway"] is None
        table = run("device", "show", "yard-gw-c1", data_dir=data_dir)
        assert table.returncode == 0 and "yard-gw (prefix /d1)" in table.stdout, table.stdout

        r = run("device", "read", "yard-gw-c1", "/3/0", "--json", data_dir=data_dir)
        assert r.returncode == 0, r.stderr
        serial = json.loads(r.stdout)["content"]
        assert "SN-yard-gw-c1" in json.dumps(serial)  # the end device's own Device object, through the gateway
        r = run("device", "read", "yard-gw-c1", "/3/0", data_dir=data_dir)
        assert r.returncode == 0 and "SN-yard-gw-c1" in r.stdout
        listing = run("device", "list", data_dir=data_dir)
        assert "via yard-gw /d1" in listing.stdout and "yard-gw (3 behind)" in listing.stdout, listing.stdout
    finally:
        stop(gateway)


def test_a_device_with_components_shown_by_the_cli_and_the_api(fleet):
    """`scratch sim --components`: `scratch device components` and GET /api/devices/{ep}/components show what the
    device reports in object 32700; a device without components answers a clear 404."""
    data_dir, uri = fleet
    env = {**os.environ, "SCRATCH_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen([*SCRATCH, "sim", "--server", uri, "--count", "1", "--prefix", "sys-",
                            "--components", "app=1.0.0:4096,radio=1.2.0:2048,config=1.0.0:100:data",
                            "--insecure-accept-any"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        wait_for_line(sim, r"sys-0: registered")
        r = run("device", "components", "sys-0", "--json", data_dir=data_dir)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        assert answer["endpoint"] == "sys-0"
        assert [(c["name"], c["kind"], c["version"], c["size"], c["state"]) for c in answer["components"]] == [
            ("app", "image", "1.0.0", 4096, "installed"), ("radio", "image", "1.2.0", 2048, "installed"),
            ("config", "data", "1.0.0", 100, "installed")]
        assert all(len(c["digest"]) == 64 for c in answer["components"])
        table = run("device", "components", "sys-0", data_dir=data_dir)
        assert table.returncode == 0 and "3 component(s)" in table.stdout and "radio" in table.stdout, table.stdout
        none = run("device", "components", "cli-0", data_dir=data_dir)
        assert none.returncode != 0 and "reports no components" in none.stderr, (none.stdout, none.stderr)
    finally:
        stop(sim)
