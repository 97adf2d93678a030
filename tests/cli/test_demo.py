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
