"""Third-party LwM2M peers for the interop suite: the Eclipse Leshan 2.0.0-M17 demos, run as subprocesses.

Configuration (docs/interop.md): each variable names a launcher that accepts the demo's own command-line options.

    LESHAN_SERVER_DEMO    the Leshan server demo (LwM2M server + REST API + SSE events)
    LESHAN_CLIENT_DEMO    the Leshan client demo (LwM2M 1.1 client with objects 1, 3, 6, 3303 and 3442)
    LESHAN_BSSERVER_DEMO  the Leshan bootstrap server demo

A test that needs a variable that is unset, or does not name an executable file, is skipped and says which one
(``pytest -rs`` prints the reasons); CI sets none of them.

Every demo runs on 127.0.0.1 only, on free ports, in its own scratch working directory (the demos read and write
``Californium3.<role>.properties`` and ``data/`` there), in its own process group; the process group is killed at
teardown whatever happened, and a demo also dies with the test process (PR_SET_PDEATHSIG) if pytest is killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.harness import die_with_parent

SERVER_ENV = "LESHAN_SERVER_DEMO"
CLIENT_ENV = "LESHAN_CLIENT_DEMO"
BSSERVER_ENV = "LESHAN_BSSERVER_DEMO"
_ROLES = {SERVER_ENV: "server demo", CLIENT_ENV: "client demo", BSSERVER_ENV: "bootstrap server demo"}

MAX_BODY = 1 << 20  # COAP.MAX_RESOURCE_BODY_SIZE for every demo: Californium's default 8 KiB is too small for packages
START_TIMEOUT = 40.0  # a cold JVM start takes 2-4 s; leave room for a loaded CI machine
STOP_TIMEOUT = 5.0
START_ATTEMPTS = 3  # a free port picked by binding port 0 may be taken before the demo binds it: try again

def launcher(variable: str) -> Path:
    """The launcher a variable names, or skip the test with a reason that names the variable."""
    value = os.environ.get(variable, "").strip()
    what = f"the Leshan 2.0.0-M17 {_ROLES.get(variable, 'demo')} launcher"
    if not value:
        pytest.skip(f"{variable} is not set: point it at {what} (see docs/interop.md)")
    found = shutil.which(value)
    if found is None:
        pytest.skip(f"{variable}={value!r} is not an executable file: point it at {what} (see docs/interop.md)")
    return Path(found)


def free_port(kind: socket.SocketKind) -> int:
    """A port that is free on 127.0.0.1 right now (UDP: ``SOCK_DGRAM``, TCP: ``SOCK_STREAM``)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_californium_properties(cwd: Path, role: str, max_body: int = MAX_BODY) -> Path:
    """A partial ``Californium3.<role>.properties`` (missing keys keep Californium's defaults)."""
    path = cwd / f"Californium3.{role}.properties"
    path.write_text("# written by tests/interop/conftest.py\n"
                    f"COAP.MAX_RESOURCE_BODY_SIZE={max_body}\n")
    return path


class DemoError(RuntimeError):
    """A configured demo did not start (a failure, not a skip: the launcher exists but does not work)."""


class DemoProcess:
    """One demo subprocess: its own session and process group, its output in ``<cwd>/demo.log``."""

    def __init__(self, name: str, argv: Sequence[str | os.PathLike[str]], cwd: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.cwd = cwd
        self.log_path = cwd / "demo.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> DemoProcess:
        self.cwd.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, LESHAN_DEMO_CWD=str(self.cwd))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log_has(self, pattern: str) -> re.Match[str] | None:
        return re.search(pattern, self.log())

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``; idempotent."""
        if self.proc is not None:
            pgid = self.proc.pid  # start_new_session: the demo leads its own process group
            if self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)  # the leader or any child it left behind
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.proc.pid if self.proc else None} cwd={self.cwd}>"


def _bind_failed(process: DemoProcess) -> bool:
    return bool(process.log_has(r"(?i)address already in use|BindException"))


def _wait_for_rest(process: DemoProcess, api: str, timeout: float = START_TIMEOUT) -> list[dict[str, object]]:
    """Poll ``GET <api>/server/endpoint`` until the demo answers with its CoAP endpoints."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not process.alive():
                raise DemoError(f"{process.name} exited with {process.proc and process.proc.returncode} "
                                f"during start-up:\n{process.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = http.get(f"{api}/server/endpoint")
                if r.status_code == 200 and r.json():
                    endpoints: list[dict[str, object]] = r.json()
                    return endpoints
            time.sleep(0.2)
    raise DemoError(f"{process.name} did not answer {api}/server/endpoint within {timeout:g} s:\n{process.tail()}")


def _endpoint_uri(endpoints: list[dict[str, object]], scheme: str) -> str:
    for e in endpoints:
        uri = e.get("uri")
        if isinstance(uri, dict) and uri.get("scheme") == scheme:
            return str(uri["full"])
    raise DemoError(f"no {scheme} endpoint among {endpoints}")


@dataclass
class LeshanServerDemo:
    """A running Leshan server demo: CoAP and CoAPs URIs (as the demo reports them) and its REST base URL."""

    process: DemoProcess
    api: str  # http://127.0.0.1:<port>/api
    coap_uri: str
    coaps_uri: str
    endpoints: list[dict[str, object]] = field(default_factory=list)


@dataclass
class LeshanBsServerDemo:
    """A running Leshan bootstrap server demo: its CoAP and CoAPs (DTLS) URIs and its REST base URL."""

    process: DemoProcess
    api: str
    coap_uri: str
    coaps_uri: str = ""


def _start_with_rest(name: str, role: str, cwd: Path, argv_for: Callable[[int, int, int], list[str | Path]]
                     ) -> tuple[DemoProcess, str, list[dict[str, object]]]:
    """Start a demo that serves REST, on fresh free ports (UDP CoAP, UDP CoAPs, TCP web); retry a lost port race."""
    last: Exception | None = None
    for attempt in range(START_ATTEMPTS):
        coap, coaps, web = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        process = DemoProcess(name, argv_for(coap, coaps, web), cwd / f"run-{attempt}")
        process.cwd.mkdir(parents=True, exist_ok=True)
        write_californium_properties(process.cwd, role)
        process.start()
        api = f"http://127.0.0.1:{web}/api"
        try:
            return process, api, _wait_for_rest(process, api)
        except DemoError as e:
            process.stop()
            last = e
            if not _bind_failed(process):
                raise
    raise DemoError(f"{name}: no free ports after {START_ATTEMPTS} attempts") from last


def start_leshan_server(exe: Path, cwd: Path) -> LeshanServerDemo:
    """The Leshan server demo with CoAP/CoAPs/web on loopback, java-coap endpoints off (``-njc``)."""
    def argv(coap: int, coaps: int, web: int) -> list[str | Path]:
        return [exe, "-lh", "127.0.0.1", "-lp", str(coap), "-slh", "127.0.0.1", "-slp", str(coaps),
                "-wh", "127.0.0.1", "-wp", str(web), "-njc"]

    process, api, endpoints = _start_with_rest("server demo", "server", cwd, argv)
    try:
        return LeshanServerDemo(process, api, _endpoint_uri(endpoints, "coap"), _endpoint_uri(endpoints, "coaps"),
                                endpoints)
    except DemoError:
        process.stop()
        raise


def start_leshan_bsserver(exe: Path, cwd: Path) -> LeshanBsServerDemo:
    def argv(coap: int, coaps: int, web: int) -> list[str | Path]:
        return [exe, "-lh", "127.0.0.1", "-lp", str(coap), "-slh", "127.0.0.1", "-slp", str(coaps),
                "-wh", "127.0.0.1", "-wp", str(web)]

    process, api, endpoints = _start_with_rest("bootstrap server demo", "bsserver", cwd, argv)
    try:
        return LeshanBsServerDemo(process, api, _endpoint_uri(endpoints, "coap"), _endpoint_uri(endpoints, "coaps"))
    except DemoError:
        process.stop()
        raise


@pytest.fixture(scope="module")
def leshan_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeshanServerDemo]:
    """One Leshan server demo per test module (tests use distinct endpoint names)."""
    exe = launcher(SERVER_ENV)
    demo = start_leshan_server(exe, tmp_path_factory.mktemp("leshan-server"))
    try:
        yield demo
    finally:
        demo.process.stop()


@pytest.fixture
def leshan_bsserver(tmp_path: Path) -> Iterator[LeshanBsServerDemo]:
    exe = launcher(BSSERVER_ENV)
    demo = start_leshan_bsserver(exe, tmp_path / "leshan-bsserver")
    try:
        yield demo
    finally:
        demo.process.stop()


LeshanClientFactory = Callable[..., DemoProcess]


@pytest.fixture
def leshan_client(tmp_path: Path) -> Iterator[LeshanClientFactory]:
    """``start(server_uri, endpoint, *options)`` starts a Leshan client demo bound to 127.0.0.1 (ephemeral port)
    that registers (or, with ``-b``, bootstraps) at ``server_uri``. Every client started is killed at teardown;
    a test may stop one earlier with ``process.stop()`` (SIGTERM: the client de-registers first)."""
    exe = launcher(CLIENT_ENV)
    started: list[DemoProcess] = []

    def start(server_uri: str, endpoint: str, *options: str) -> DemoProcess:
        cwd = tmp_path / f"leshan-client-{len(started)}-{endpoint}"
        cwd.mkdir(parents=True)
        write_californium_properties(cwd, "client")
        process = DemoProcess("client demo", [exe, "-u", server_uri, "-n", endpoint, "-lh", "127.0.0.1", *options],
                              cwd)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()
