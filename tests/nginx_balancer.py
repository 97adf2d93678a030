"""A throwaway nginx UDP balancer for tests (as tests/postgres_server.py is a throwaway PostgreSQL).

``NginxBalancer(nodes)`` renders the production configuration (:func:`lwm2m_server.cluster.nginx.render_nginx_config`)
into a fresh folder under ``/tmp``, with its pid file and error log there too, and runs ``nginx -p <folder> -c
nginx.conf -g 'daemon off;'`` (a master and its workers) listening on ``127.0.0.1:<port>`` (a free UDP port when
none is given). Starting waits, bounded, until the port is bound; ``stop()`` sends SIGTERM, waits (bounded), then
kills the process group, and deletes the folder. No ``user`` directive: started as root, nginx runs its workers as
``nobody`` (group ``nogroup`` here), which is all they need (the master opens the log and binds the port).

nginx is never skipped silently: when it or its stream module is missing, or it does not start, the test fails
with a message naming what to install.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

from lwm2m_server.cluster.nginx import DEFAULT_MODULE_PATH, render_nginx_config

__all__ = ["INSTALL_HINT", "NginxBalancer", "find_nginx"]

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
INSTALL_HINT = "install nginx-light and libnginx-mod-stream (`./dev setup` installs them)"


def find_nginx() -> tuple[Path, str | None] | None:
    """nginx's binary and the stream module to load (None when built in), or None when either is missing."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(p, os.X_OK)), None)
    if found is None:
        return None
    if Path(DEFAULT_MODULE_PATH).is_file():
        return Path(found), DEFAULT_MODULE_PATH
    built = subprocess.run([found, "-V"], capture_output=True, text=True, timeout=10)
    if re.search(r"--with-stream(\s|$)", built.stderr + built.stdout):  # static, not --with-stream=dynamic
        return Path(found), None
    return None


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _udp_bound(port: int) -> bool:
    """Whether some socket is bound to 127.0.0.1:port (UDP), from /proc/net/udp."""
    wanted = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1] == wanted for line in lines if len(line.split()) > 1)


class NginxBalancer:
    """nginx balancing UDP from 127.0.0.1:``port`` over ``nodes`` (``host:port`` strings). A context manager."""

    def __init__(self, nodes: list[str], listen_port: int = 0, *, workers: int = 2, fail_timeout: float = 10.0,
                 session_timeout: float = 600.0) -> None:
        found = find_nginx()
        if found is None:
            pytest.fail(f"nginx with its stream module not found: {INSTALL_HINT}", pytrace=False)
        self.binary, module = found
        self.root = Path(tempfile.mkdtemp(prefix="scratch-nginx-"))
        self.log_file = self.root / "error.log"
        self.port = listen_port or free_udp_port()
        self.config = render_nginx_config(
            listen=f"127.0.0.1:{self.port}", nodes=nodes, module=module, pid_file=str(self.root / "nginx.pid"),
            error_log=str(self.log_file), worker_processes=workers,
            session_timeout=session_timeout, fail_timeout=fail_timeout, connections=1024)
        (self.root / "nginx.conf").write_text(self.config)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        """Start nginx and wait until it has bound its port; or stop it and fail the test, with its log."""
        check = subprocess.run([str(self.binary), "-t", "-p", str(self.root), "-c", "nginx.conf"],
                               capture_output=True, timeout=START_TIMEOUT_S)
        if check.returncode != 0:
            self.stop()
            pytest.fail(f"nginx rejects the rendered configuration: {check.stderr.decode(errors='replace')}\n"
                        f"({INSTALL_HINT})", pytrace=False)
        with (self.root / "nginx.out").open("wb") as out:
            self._process = subprocess.Popen(
                [str(self.binary), "-p", str(self.root), "-c", "nginx.conf", "-g", "daemon off;"],
                cwd=self.root, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _udp_bound(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                problem = (f"exited ({self._process.returncode})" if self._process.poll() is not None
                           else f"did not bind 127.0.0.1:{self.port} within {START_TIMEOUT_S:.0f} s")
                log = self.log()[-2000:]
                self.stop()
                pytest.fail(f"nginx {problem}: {log}\n({INSTALL_HINT})", pytrace=False)
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop nginx (SIGTERM, then SIGKILL to its process group) and delete its folder. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=STOP_TIMEOUT_S)
        if process is not None:  # workers left behind by a killed master
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> NginxBalancer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()
