"""DTLS-PSK clients built on the embedded stacks real devices run, for the interop tests and bench/dtls.py.

- :class:`MbedtlsLink`: a connected DTLS-PSK client socket on mbedTLS (python-mbedtls from PyPI), optionally
  through a :class:`FirstRecordRelay` that rewrites the record-layer version of the client's first ClientHello
  (mbedTLS-based devices send 0xFE00 there, RFC 6347 4.1).
- :class:`MiniLwm2mClient`: a minimal LwM2M client over such a link: CoAP messages encoded and decoded with
  aiocoap's :class:`~aiocoap.Message` (no aiocoap transport), Bootstrap-Request and the answers to the bootstrap
  server's requests (Discover, Delete, Write, Read /1, Finish) decoded with our core codecs, then Register and
  De-register. Written from the spec, not from ``client_sim``: it shares only the codecs.
- :class:`TinydtlsClient`: the upstream tinydtls example client (``tests/dtls-client``), which sends each stdin
  line as one record (``fgets`` + ``strlen``) and writes what it receives raw to stdout; see :func:`line_message`.
- :class:`ScratchProcess`: ``scratch server`` / ``scratch bootstrap-server`` as real processes on free ports.

Blocking I/O throughout (the tests are synchronous); every wait is bounded. No key is printed or put in an
exception text.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from mbedtls import tls

from lwm2m_server.core.codec import link as link_format
from lwm2m_server.core.codec import registry
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import Lwm2mError
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import Instance, Obj, SingleResource
from lwm2m_server.core.paths import LwM2mPath
from tests.cli.test_server_dtls_cli import ScratchProcess, run

TINYDTLS_ENV = "TINYDTLS_CLIENT"
MBEDTLS_FIRST_VERSION = 0xFE00  # what an mbedTLS 2.x client left at its default minimum version sends first
SECURITY, SERVER = 0, 1


def hostport(uri: str) -> tuple[str, int]:
    """``coaps://HOST:PORT`` -> (HOST, PORT)."""
    m = re.fullmatch(r"coaps?://\[?([^\]/]+?)\]?:(\d+)/?", uri)
    if m is None:
        raise ValueError(f"not a coaps://HOST:PORT URI: {uri!r}")
    return m.group(1), int(m.group(2))


# ---------------------------------------------------------------------------------------------- mbedTLS DTLS


class FirstRecordRelay:
    """A loopback UDP relay to ``target`` that rewrites the record-layer version of the first ClientHello it sees
    (content type 22, handshake type 1) to ``version``; everything else passes unchanged, both ways. Runs in a
    daemon thread until :meth:`close` (or ``lifetime`` seconds)."""

    def __init__(self, target: tuple[str, int], version: int = MBEDTLS_FIRST_VERSION, lifetime: float = 60.0) -> None:
        self.target = target
        self.version = version.to_bytes(2, "big")
        self.rewritten = 0
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind(("127.0.0.1", 0))
        self._back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._back.bind(("127.0.0.1", 0))
        self._client: tuple[str, int] | None = None
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, name="first-record-relay", daemon=True)
        self._thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._front.getsockname()[:2]
        return str(host), int(port)

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            ready, _, _ = select.select([self._front, self._back], [], [], 0.1)
            for s in ready:
                try:
                    data, addr = s.recvfrom(65535)
                except OSError:
                    continue
                if s is self._front:
                    self._client = addr
                    if not self.rewritten and data[:1] == b"\x16" and data[13:14] == b"\x01":
                        data = data[:1] + self.version + data[3:]
                        self.rewritten += 1
                    self._back.sendto(data, self.target)
                elif self._client is not None:
                    self._front.sendto(data, self._client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._front.close()
        self._back.close()


class MbedtlsLink:
    """A DTLS-PSK client session on mbedTLS to (host, port); ``first_record_version`` sends the first ClientHello
    through a :class:`FirstRecordRelay` with that record-layer version. :meth:`handshake` raises on failure."""

    def __init__(self, host: str, port: int, identity: str, key: bytes, *,
                 first_record_version: int | None = None, timeout: float = 10.0) -> None:
        self.relay = FirstRecordRelay((host, port), first_record_version) if first_record_version else None
        self.target = self.relay.address if self.relay else (host, port)
        conf = tls.DTLSConfiguration(pre_shared_key=(identity, bytes(key)), validate_certificates=False)
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock = tls.ClientContext(conf).wrap_socket(raw, server_hostname=None)
        self.sock.settimeout(timeout)
        self.sock.connect(self.target)

    def handshake(self) -> None:
        self.sock.do_handshake()

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout: float) -> bytes | None:
        """One record's plaintext, or None when nothing came within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return bytes(self.sock.recv(4096))
        except TimeoutError:
            return None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sock.unwrap()  # close_notify
        with contextlib.suppress(Exception):
            self.sock.close()
        if self.relay is not None:
            self.relay.close()


# ---------------------------------------------------------------------------------------------- minimal LwM2M


class ClientError(Exception):
    """The minimal client got no answer, or an answer it did not expect (no key in the text)."""


@dataclass
class ServerAccount:
    """What the bootstrap gave: the LwM2M server's URI and this device's PSK identity and key there."""

    uri: str
    identity: str
    key: bytes = field(repr=False)
    short_server_id: int | None
    lifetime: int | None


@dataclass
class MiniLwm2mClient:
    """One LwM2M client over one :class:`MbedtlsLink` at a time; it answers the server's requests while it waits
    for its own answers. ``seen`` lists every request it was sent, as (method, path, content format)."""

    endpoint: str
    link: MbedtlsLink
    request_timeout: float = 10.0
    model: ObjectModel = field(default_factory=ObjectModel.default)
    security: dict[int, Instance] = field(default_factory=dict)
    servers: dict[int, Instance] = field(default_factory=dict)
    seen: list[tuple[str, str, int | None]] = field(default_factory=list)
    finished: bool = False
    _mid: int = 0x2000
    _answered: dict[int, bytes] = field(default_factory=dict)

    # ---------------------------------------------------------------------------- CoAP over the link

    def _next(self) -> tuple[int, bytes]:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid, os.urandom(4)

    def request(self, code: Code, path: tuple[str, ...], query: tuple[str, ...] = (), payload: bytes = b"",
                content_format: int | None = None) -> Message:
        """Send a CON request and return its response (piggybacked or separate); the server's own requests that
        come meanwhile are answered. Retransmits (RFC 7252 4.2) while no ACK came."""
        mid, token = self._next()
        msg = _message(Type.CON, mid, token, code, payload)
        msg.opt.uri_path = path
        msg.opt.uri_query = query
        if content_format is not None:
            msg.opt.content_format = content_format
        raw = msg.encode()
        acked = False
        deadline = time.monotonic() + self.request_timeout
        for attempt in range(5):
            if not acked:
                self.link.send(raw)
            retry_at = time.monotonic() + 2.0 * 2**attempt
            while time.monotonic() < min(retry_at, deadline) or (acked and time.monotonic() < deadline):
                got = self._receive(min(retry_at, deadline) - time.monotonic() if not acked
                                    else deadline - time.monotonic())
                if got is None:
                    continue
                if got.mtype is Type.ACK and got.mid == mid and got.code == Code.EMPTY:
                    acked = True  # a separate response follows
                    continue
                if got.token == token and got.code.is_response():
                    if got.mtype is Type.CON:
                        self._send_empty_ack(got.mid)
                    return got
            if time.monotonic() >= deadline:
                break
        raise ClientError(f"no answer to {code} /{'/'.join(path)} within {self.request_timeout:g} s")

    def serve(self, until: Callable[[], bool], timeout: float) -> None:
        """Answer the server's requests until ``until()`` holds; ClientError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise ClientError(f"still waiting after {timeout:g} s; requests seen: {self.seen}")
            self._receive(left)

    def _receive(self, timeout: float) -> Message | None:
        """One incoming message; a request is answered here and None returned."""
        data = self.link.recv(max(timeout, 0.01))
        if data is None:
            return None
        try:
            msg = Message.decode(data)
        except Exception:
            return None
        if msg.code.is_request():
            if msg.mtype is Type.CON and msg.mid in self._answered:  # a retransmission: the same answer
                self.link.send(self._answered[msg.mid])
                return None
            answer = self.handle(msg)
            answer.mtype = Type.ACK if msg.mtype is Type.CON else Type.NON
            answer.mid = msg.mid if msg.mtype is Type.CON else self._next()[0]
            answer.token = msg.token
            raw = answer.encode()
            if msg.mtype is Type.CON:
                self._answered[msg.mid] = raw
            self.link.send(raw)
            return None
        return msg

    def _send_empty_ack(self, mid: int) -> None:
        self.link.send(_message(Type.ACK, mid, b"", Code.EMPTY).encode())

    # ---------------------------------------------------------------------------- the device's answers

    def handle(self, req: Message) -> Message:
        """Bootstrap interface (LwM2M 1.1 Core 6.1): Discover, Delete, Write of /0 and /1, Read of /1, Finish;
        anything else 4.05 (bootstrap) or 4.04 (after it)."""
        path_segments = tuple(req.opt.uri_path)
        cf = req.opt.content_format
        self.seen.append((str(req.code), "/" + "/".join(path_segments), None if cf is None else int(cf)))
        try:
            if path_segments == ("bs",) and req.code == Code.POST:
                return self._finish()
            path = LwM2mPath.from_segments(list(path_segments)) if path_segments else LwM2mPath.of()
            if req.code == Code.GET and req.opt.accept is not None and int(req.opt.accept) == ContentFormat.LINK:
                return Message(code=Code.CONTENT, payload=self._discover().encode(),
                               content_format=int(ContentFormat.LINK))
            if req.code == Code.DELETE:
                self._delete(path)
                return Message(code=Code.DELETED)
            if req.code == Code.PUT and path.ids and path.ids[0] in (SECURITY, SERVER):
                fmt = ContentFormat.of(int(cf) if cf is not None else int(ContentFormat.TLV))
                self._write(path, registry.decode(req.payload, fmt, path, self.model))
                return Message(code=Code.CHANGED)
            if req.code == Code.GET and path.ids == (SERVER,):
                accept = req.opt.accept
                fmt = ContentFormat.of(int(accept) if accept is not None else int(ContentFormat.TLV))
                node = Obj.of(SERVER, self.servers.values())
                return Message(code=Code.CONTENT, payload=registry.encode(node, path, fmt, self.model),
                               content_format=int(fmt))
        except Lwm2mError as e:
            return Message(code=Code(int(e.coap_code)))
        return Message(code=Code.NOT_FOUND if self.finished else Code.METHOD_NOT_ALLOWED)

    def _discover(self) -> str:
        links = ['</>;lwm2m=1.1']
        for iid, inst in sorted(self.security.items()):
            uri = _value(inst, 0)
            ssid = _value(inst, 10)
            attrs = "" if _value(inst, 1) is True or ssid is None else f";ssid={ssid}"
            links.append(f'</0/{iid}>{attrs};uri="{uri}"')
        links += [f"</1/{iid}>;ssid={_value(inst, 0)}" for iid, inst in sorted(self.servers.items())] or ["</1>"]
        links.append("</3/0>")
        return ",".join(links)

    def _delete(self, path: LwM2mPath) -> None:
        keep = {iid for iid, inst in self.security.items() if _value(inst, 1) is True}  # the bootstrap account
        if not path.ids or path.ids[0] == SECURITY:
            self.security = {i: v for i, v in self.security.items() if i in keep or (len(path.ids) == 2
                                                                                     and path.ids[1] != i)}
        if not path.ids or path.ids[0] == SERVER:
            self.servers = {i: v for i, v in self.servers.items() if len(path.ids) == 2 and path.ids[1] != i}

    def _write(self, path: LwM2mPath, node: object) -> None:
        table = self.security if path.ids[0] == SECURITY else self.servers
        if isinstance(node, Instance):
            table[node.id] = node
        elif isinstance(node, Obj):
            table.update(node.instances)
        else:
            raise ClientError(f"a Bootstrap-Write of {path} with a {type(node).__name__}: not handled here")

    def _finish(self) -> Message:
        if self.account() is None:
            return Message(code=Code.NOT_ACCEPTABLE)
        self.finished = True
        return Message(code=Code.CHANGED)

    def account(self) -> ServerAccount | None:
        """The LwM2M server account the bootstrap wrote (PSK mode), with its /1 instance's lifetime."""
        for inst in self.security.values():
            if _value(inst, 1) is True or _value(inst, 2) != 0:
                continue
            ssid = _value(inst, 10)
            server = next((s for s in self.servers.values() if _value(s, 0) == ssid), None)
            identity, key = _value(inst, 3), _value(inst, 5)
            if not isinstance(identity, bytes) or not isinstance(key, bytes):
                continue
            lifetime = _value(server, 1) if server is not None else None
            return ServerAccount(str(_value(inst, 0)), identity.decode(), key,
                                 ssid if isinstance(ssid, int) else None,
                                 lifetime if isinstance(lifetime, int) else None)
        return None

    # ---------------------------------------------------------------------------- the client's operations

    def bootstrap(self, pct: int | None = None, timeout: float = 30.0) -> ServerAccount:
        """Bootstrap-Request, then serve the bootstrap server until its Finish; the account it gave."""
        query = (f"ep={self.endpoint}", *((f"pct={pct}",) if pct is not None else ()))
        answer = self.request(Code.POST, ("bs",), query)
        if answer.code != Code.CHANGED:
            raise ClientError(f"Bootstrap-Request answered {answer.code}")
        self.serve(lambda: self.finished, timeout)
        account = self.account()
        assert account is not None
        return account

    def register(self, lifetime: int = 300, links: str = "</1/0>,</3/0>") -> str:
        """Register; the registration's location (``/rd/...``). Raises unless 2.01."""
        link_format.decode(links.encode())  # well-formed
        answer = self.request(Code.POST, ("rd",), (f"ep={self.endpoint}", f"lt={lifetime}", "lwm2m=1.1", "b=U"),
                              links.encode(), int(ContentFormat.LINK))
        if answer.code != Code.CREATED:
            raise ClientError(f"Register answered {answer.code}")
        return "/" + "/".join(answer.opt.location_path)

    def deregister(self, location: str) -> Code:
        return self.request(Code.DELETE, tuple(location.strip("/").split("/"))).code


def _message(mtype: Type, mid: int, token: bytes, code: Code, payload: bytes = b"") -> Message:
    """A message with its message layer set by hand (aiocoap deprecates passing ``mid`` to the constructor)."""
    msg = Message(code=code, payload=payload)
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    return msg


def _value(inst: Instance | None, rid: int) -> object:
    r = inst.resources.get(rid) if inst is not None else None
    return r.value if isinstance(r, SingleResource) else None


# ---------------------------------------------------------------------------------------------- tinydtls


FORBIDDEN_IN_A_LINE = (0x00, 0x0A)


def line_message(code: Code, mid: int, token: bytes, path: tuple[str, ...], query: tuple[str, ...] = (),
                 payload: bytes = b"", content_format: int | None = None) -> bytes:
    """A CON request that the tinydtls example client can send as one stdin line: no 0x00 or 0x0A byte before
    the end, and a payload (after the 0xFF marker) that ends with the line's ``\\n``. ValueError otherwise."""
    msg = _message(Type.CON, mid, token, code, payload + b"\n")
    msg.opt.uri_path = path
    msg.opt.uri_query = query
    if content_format is not None:
        msg.opt.content_format = content_format
    raw: bytes = msg.encode()
    body = raw[:-1]
    bad = [f"0x{b:02x}@{i}" for i, b in enumerate(body) if b in FORBIDDEN_IN_A_LINE]
    if bad:
        raise ValueError(f"this message cannot be one fgets() line: {', '.join(bad)}")
    return raw


def response_in(stream: bytes, mid: int, token: bytes) -> tuple[Code, tuple[str, ...]] | None:
    """The piggybacked answer (ACK, ``mid``, ``token``) to our request in the client's raw stdout, as (code,
    Location-Path); None when it is not there. Location-Path is read option by option (options 8, delta 0 after);
    our server's 2.01 carries nothing else."""
    for code in range(0x40, 0xA0):
        head = bytes([0x60 | len(token), code]) + mid.to_bytes(2, "big") + token
        at = stream.find(head)
        if at < 0:
            continue
        pos, number, location = at + len(head), 0, []
        while pos < len(stream):
            delta, length = stream[pos] >> 4, stream[pos] & 0x0F
            if delta + number != 8 or length >= 13:
                break
            number = 8
            location.append(stream[pos + 1:pos + 1 + length].decode("ascii", "replace"))
            pos += 1 + length
        return Code(code), tuple(location)
    return None


class TinydtlsClient:
    """The tinydtls example client (``TINYDTLS_CLIENT``) to (host, port) with a PSK identity and key (written to
    0600 files in ``workdir``). :meth:`ask` sends one :func:`line_message` and waits for its piggybacked answer,
    sending the same line again (a CoAP retransmission, same MID) every ``retry`` seconds: the client drops a line
    typed before its handshake completed."""

    def __init__(self, binary: str, host: str, port: int, identity: str, key: bytes, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        id_file, key_file = workdir / "identity", workdir / "key"
        for f, data in ((id_file, identity.encode()), (key_file, bytes(key))):
            f.touch(mode=0o600)
            f.write_bytes(data)
        self.out = b""
        self._lock = threading.Lock()
        self.proc = subprocess.Popen([binary, "-v", "2", "-i", str(id_file), "-k", str(key_file), host, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            with self._lock:
                self.out += chunk

    def output(self) -> bytes:
        with self._lock:
            return self.out

    def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None and line.endswith(b"\n")
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def ask(self, line: bytes, mid: int, token: bytes, timeout: float = 30.0,
            retry: float = 2.0) -> tuple[Code, tuple[str, ...]] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.send_line(line)
            until = min(deadline, time.monotonic() + retry)
            while time.monotonic() < until:
                found = response_in(self.output(), mid, token)
                if found is not None:
                    return found
                time.sleep(0.05)
        return None

    def wait_for(self, needle: bytes, timeout: float = 15.0) -> None:
        """Until ``needle`` shows in what the client received; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{needle.hex()} not received within {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send_line(b"client:exit\n")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------------------------- our processes


run_scratch = run  # ``scratch ARGS`` to its end, on ``data_dir``


@dataclass
class Servers:
    """Both our servers on one data directory (see :func:`scratch_servers`)."""

    server: ScratchProcess
    uri: str
    bootstrap: ScratchProcess | None = None
    bootstrap_uri: str = ""

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()}" for p in (self.server, self.bootstrap) if p is not None)


@contextlib.contextmanager
def scratch_servers(data_dir: Path, *, bootstrap: bool = True) -> Iterator[Servers]:
    """``scratch server`` (DTLS-PSK and the API on free ports) and, with ``bootstrap``, ``scratch bootstrap-server``
    sending devices to it, on one data directory; both are stopped on exit."""
    server = ScratchProcess(data_dir, "server", "--coaps", "127.0.0.1:0", "--api", "127.0.0.1:0")
    servers: Servers | None = None
    try:
        uri = server.wait_for(r"LwM2M server on (coaps://\S+) \(DTLS-PSK\), API").group(1)
        servers = Servers(server, uri)
        if bootstrap:
            servers.bootstrap = ScratchProcess(data_dir, "bootstrap-server", "--coaps", "127.0.0.1:0",
                                               "--server-uri", uri)
            servers.bootstrap_uri = servers.bootstrap.wait_for(r"bootstrap server on (coaps://[\d.]+:\d+)").group(1)
        yield servers
    finally:
        if servers is not None and servers.bootstrap is not None:
            servers.bootstrap.stop()
        server.stop()
