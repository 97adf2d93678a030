"""The REST API's guard, against a real ``scratch server`` process over real loopback sockets: the token and the
body caps are checked before any byte of a body is read, refusals close the connection, failed token checks are
throttled per address, and no route (the documentation included) answers without the token.

Each test that fails authentication on purpose speaks from its own 127.0.0.x address, so the per-address throttle
of one test never leaks into another."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bootstrap.vault import Vault
from lwm2m_server.api.app import AUTH_FAILURE_BURST, MAX_BODY, MAX_PACKAGE
from tests.cli.test_cli import stop
from tests.harness import running_server

SCRATCH = [sys.executable, "-m", "lwm2m_server.cli.app"]
MiB = 1 << 20
HUGE = 500 * MiB  # the declared size of the bodies that must never be read
RSS_GROWTH_LIMIT = 20 * MiB


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """The server process's resident set, in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert m is not None, status
        return int(m.group(1)) * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("api-hardening")
    log = (data / "server.log").open("wb")
    env = {**os.environ, "SCRATCH_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*SCRATCH, "server", "--insecure", "--coap", "127.0.0.1:0", "--coaps", "127.0.0.1:0",
                             "--api", "127.0.0.1:0"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (data / "api-url").exists():
            assert proc.poll() is None, (data / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not write its api-url"
            time.sleep(0.05)
        port = int((data / "api-url").read_text().strip().rsplit(":", 1)[1])
        srv = Server(proc, port, (data / "api-token").read_text().strip())
        with httpx.Client(base_url=srv.url, timeout=10,  # warm up: the first requests' imports and caches
                          transport=httpx.HTTPTransport(local_address="127.0.0.250")) as http:
            for _ in range(3):
                assert http.get("/api/devices", headers={"Authorization": f"Bearer {srv.token}"}).status_code == 200
                for headers in ({"Authorization": f"Bearer {srv.token}"}, {}):
                    http.post("/api/devices/x/write", json={"path": "/3/0/1", "value": "x"}, headers=headers)
        yield srv
    finally:
        stop(proc)
        log.close()
    text = (data / "server.log").read_text()
    assert "Traceback" not in text and "Exception in ASGI" not in text, text  # refusals are quiet


def head(method: str, path: str, length: int | None, token: str | None = None, *, chunked: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Exchange:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: int  # body bytes the server's socket took before it stopped taking them
    closed: bool  # the server closed the connection after its answer


def exchange(port: int, source: str, request_head: bytes, body: Iterable[bytes] = ()) -> Exchange:
    """Send ``request_head``, then ``body`` until the server stops taking it; read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0)) as s:
        s.sendall(request_head)
        sent = 0
        for chunk in body:
            try:
                s.sendall(chunk)
            except OSError:  # reset, broken pipe: the server closed without reading the rest
                break
            sent += len(chunk)
        data = b""
        closed = False
        while True:
            try:
                got = s.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break  # still open: the answer is complete but the server kept the connection
            if not got:
                closed = True
                break
            data += got
            if _complete(data):  # a whole answer on a connection the server keeps: do not wait for its idle timeout
                break
    head_bytes, _, rest = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        return Exchange(0, {}, data, sent, closed)  # no answer
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return Exchange(int(lines[0].split()[1]), headers, rest, sent, closed)


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP answer with a Content-Length on a connection the server keeps."""
    head_bytes, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in head_bytes.decode("latin-1").split("\r\n")[1:])}
    if headers.get("connection", "").lower() == "close":
        return False  # read on to the close, which the refusal tests check
    return "content-length" in headers and len(rest) >= int(headers["content-length"])


def test_unauthenticated_huge_body_is_refused_before_it_is_read(server: Server) -> None:
    """The issue's case: a 500 MiB JSON body without a token, streamed for as long as the server takes it."""
    before = server.rss()
    ex = exchange(server.port, "127.0.0.2", head("POST", "/api/devices/x/write", HUGE),
                  itertools.repeat(b" " * MiB, 500))
    after = server.rss()
    print(f"RSS before {before / MiB:.1f} MiB, after {after / MiB:.1f} MiB; the socket took {ex.sent / MiB:.1f} MiB")
    assert after - before < RSS_GROWTH_LIMIT
    assert ex.status == 401 and ex.headers["www-authenticate"] == "Bearer"
    assert json.loads(ex.body) == {"error": "missing, wrong, expired or revoked API token", "kind": "Unauthorized",
                                   "coap_code": None}
    assert ex.closed and ex.headers["connection"] == "close"
    assert ex.sent < 64 * MiB  # the server closed instead of reading (and discarding) the rest


@pytest.mark.parametrize(("path", "cap"), [("/api/devices/x/write", MAX_BODY),
                                           ("/api/devices/x/firmware", MAX_PACKAGE)])
def test_authenticated_oversized_content_length_gets_413_before_it_is_read(server: Server, path: str,
                                                                           cap: int) -> None:
    before = server.rss()
    for declared in (cap + 1, HUGE):
        ex = exchange(server.port, "127.0.0.1", head("POST", path, declared, server.token),
                      itertools.repeat(b" " * MiB, 100))
        assert ex.status == 413 and json.loads(ex.body)["kind"] == "ContentTooLarge", ex
        assert ex.closed and ex.sent < 64 * MiB
    assert server.rss() - before < RSS_GROWTH_LIMIT


def chunks(size: int, count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield f"{size:x}\r\n".encode() + b" " * size + b"\r\n"
    yield b"0\r\n\r\n"


def test_chunked_body_over_the_cap_gets_413(server: Server) -> None:
    before = server.rss()
    ex = exchange(server.port, "127.0.0.1", head("POST", "/api/devices/x/write", None, server.token, chunked=True),
                  chunks(64 << 10, 8 * 1024))  # 512 MiB if it were all read
    assert ex.status == 413 and json.loads(ex.body)["kind"] == "ContentTooLarge", ex
    assert ex.closed and ex.sent < 64 * MiB
    assert server.rss() - before < RSS_GROWTH_LIMIT


def test_chunked_body_under_the_cap_reaches_the_app(server: Server) -> None:
    body = json.dumps({"path": "/3/0/1", "value": "x"}).encode()
    ex = exchange(server.port, "127.0.0.1", head("POST", "/api/devices/nobody/write", None, server.token,
                                                 chunked=True),
                  [f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"])
    assert ex.status == 404 and json.loads(ex.body)["kind"] == "UnknownEndpointError"


def test_docs_and_schema_need_the_token(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10,
                      transport=httpx.HTTPTransport(local_address="127.0.0.5")) as http:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = http.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert http.get(path, headers={"Authorization": f"Bearer {server.token}"}).status_code == 200, path
        schema = http.get("/openapi.json", headers={"Authorization": f"Bearer {server.token}"}).json()
        assert "/api/devices/{endpoint}/firmware" in schema["paths"]


def test_health_without_the_token_says_only_ok(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10,
                      transport=httpx.HTTPTransport(local_address="127.0.0.6")) as http:
        r = http.get("/api/health")
        assert (r.status_code, r.json()) == (200, {"status": "ok"})
        r = http.get("/api/health", headers={"Authorization": f"Bearer {server.token}"})
        assert (r.status_code, r.json()) == (200, {"status": "ok", "devices": 0})
        assert http.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_wrong_tokens_are_throttled_per_address_and_the_right_one_still_passes(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=10,
                      transport=httpx.HTTPTransport(local_address="127.0.0.7")) as http, \
            httpx.Client(base_url=server.url, timeout=10,
                         transport=httpx.HTTPTransport(local_address="127.0.0.8")) as other:
        bad = {"Authorization": "Bearer not-the-token"}
        statuses = [http.get("/api/devices", headers=bad) for _ in range(AUTH_FAILURE_BURST + 10)]
        assert [r.status_code for r in statuses[:AUTH_FAILURE_BURST]] == [401] * AUTH_FAILURE_BURST
        throttled = [r for r in statuses[AUTH_FAILURE_BURST:] if r.status_code == 429]
        assert throttled, [r.status_code for r in statuses]  # each 401 past the burst needs 2 s of refill
        assert int(throttled[0].headers["retry-after"]) >= 1
        assert http.get("/api/devices", headers={"Authorization": f"Bearer {server.token}"}).status_code == 200
        assert other.get("/api/devices", headers=bad).status_code == 401  # another address has its own budget


async def test_every_route_refuses_an_unauthenticated_request_before_its_body(tmp_path: Path) -> None:
    """Every route of the app as the server builds it (firmware, campaigns, tags, rekey, the web interface and the
    bench route included), each method, a declared 500 MiB body and no token: 401, connection closed. Only the bench
    route and the web interface's (which check their own session cookie) are public, and capped all the same, and
    /api/health answers a bare liveness."""
    async with running_server(tmp_path, coap_port=0, api_port=0, vault=Vault.open(tmp_path / "vault.key"),
                              bench_api=True) as srv:
        app = srv._api_server.config.app  # type: ignore[attr-defined]
        checked: set[str] = set()
        sources = (f"127.0.1.{i}" for i in itertools.count(1))  # one address per request: no throttling here
        for route in app.routes:
            path = re.sub(r"\{[^}]+\}", "x", route.path)
            for method in sorted(getattr(route, "methods", None) or ("GET",)):  # a Mount (static files): GET
                ex = await asyncio.to_thread(exchange, srv.api_port, next(sources), head(method, path, HUGE),
                                             [b" " * 65536])
                if route.path == "/api/clients/{endpoint}/{path:path}" or route.path == "/" or \
                        route.path.startswith("/ui"):  # public (the web checks its own session), capped all the same
                    assert ex.status == 413, (method, route.path)
                elif route.path == "/api/health" and method == "GET":
                    assert (ex.status, json.loads(ex.body)) == (200, {"status": "ok"})
                else:
                    assert ex.status == 401 and ex.headers["www-authenticate"] == "Bearer", (method, route.path)
                assert ex.closed, (method, route.path)
                checked.add(route.path)
        assert {"/docs", "/redoc", "/openapi.json", "/api/health", "/api/devices/{endpoint}/firmware",
                "/api/campaigns", "/api/devices/{endpoint}/rekey", "/api/tags",
                "/api/clients/{endpoint}/{path:path}", "/ui/sign-in", "/ui/campaigns"} <= checked
