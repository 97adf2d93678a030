"""Usage errors of the real ``scratch`` process: one plain line ``error: <message>`` on stderr, exit code 2, nothing
on stdout, the same bytes in a 40-column and in a 300-column terminal (no Rich panel wrapped at the width)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRATCH = [sys.executable, "-m", "lwm2m_server.cli.app"]


def run(args: list[str], columns: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color", "SCRATCH_DATA_DIR": str(cwd / "data")}
    env.pop("NO_COLOR", None)
    return subprocess.run([*SCRATCH, *args], capture_output=True, text=True, timeout=30, env=env, cwd=cwd)


LONG = "a-rather-long-folder-name-that-a-narrow-terminal-would-have-to-wrap-somewhere-in-the-middle"

CASES = {
    "unknown option": (["server", "--no-such-option"], "No such option: --no-such-option"),
    "value out of range": (["server", "--rd-burst", "0"], "Invalid value for '--rd-burst'"),
    "refused by the command": (["server", "--coap", "127.0.0.1:5683"], "add --insecure"),
    "unknown command": (["no-such-command"], "No such command 'no-such-command'."),
    "missing argument": (["device", "read"], "Missing argument 'endpoint'."),
    "bad number": (["bootstrap-server", "--max-sessions", "many"], "Invalid value for '--max-sessions'"),
    "unreadable file (long path)": (["sim", "--credentials", f"{LONG}/{LONG}/missing.csv"],
                                    f"cannot read {LONG}/{LONG}/missing.csv"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_usage_error_is_one_plain_line_whatever_the_width(case: str, tmp_path: Path) -> None:
    args, needle = CASES[case]
    narrow, wide = run(args, 40, tmp_path), run(args, 300, tmp_path)
    for r in (narrow, wide):
        assert r.returncode == 2, r.stderr
        assert r.stdout == ""
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
        assert "\x1b" not in r.stderr and "│" not in r.stderr and "Traceback" not in r.stderr
    assert narrow.stderr == wide.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was started or created


def test_help_still_works() -> None:
    r = subprocess.run([*SCRATCH, "server", "--help"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "COLUMNS": "120"})
    assert r.returncode == 0 and "--max-registrations" in r.stdout and "--rd-rate" in r.stdout
