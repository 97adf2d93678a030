"""The README's first command: ``scratch demo`` runs the two-company flow to the end (a smaller fleet here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(180)
def test_the_demo_runs_the_two_company_flow_to_its_usage_summary(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "400", "SCRATCH_VAULT_KEY": ""}
    r = subprocess.run([sys.executable, "-m", "lwm2m_server.cli.app", "demo", "--count", "6", "--data-dir",
                        str(tmp_path / "data")], capture_output=True, text=True, timeout=170, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = " ".join(r.stdout.split())
    for needle in ("Import refused (no grant); sensorworks grants netco class sim-sensor-1",
                   "issued by NetCo Networks GmbH", "5 succeeded, 1 rolled-back",
                   "agrees with the signed report: True", "usage-netco.json verifies: True", "demo finished"):
        assert needle in out, needle
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.timeout(180)
def test_the_served_demo_prints_a_one_time_sign_in_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    import re
    import signal

    import httpx

    env = {**os.environ, "COLUMNS": "400", "SCRATCH_VAULT_KEY": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lwm2m_server.cli.app", "demo", "--count", "3", "--serve",
                             "--data-dir", str(tmp_path / "data")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        assert proc.stdout is not None
        seen = ""
        for line in proc.stdout:  # bounded by the test's timeout; the link is the last thing printed
            seen += line
            if "/ui/once/" in seen and "Ctrl-C" in seen:
                break
        link = re.search(r"(http://127\.0\.0\.1:\d+/ui/once/[A-Za-z0-9_-]+)", " ".join(seen.split()))
        assert link is not None, seen[-2000:]
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            page = browser.get(link.group(1))
            assert page.status_code == 200 and "netco-operator" in page.text and "NetCo Fleet" in page.text
            assert 'id="count-registered"' in page.text
        with httpx.Client(follow_redirects=True, timeout=30) as other:
            again = other.get(link.group(1))  # spent
            assert again.url.params.get("error") == "link" and "used or expired" in again.text
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "demo finished" in rest, rest[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
