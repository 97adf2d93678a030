"""The UDP balancer of docs/cluster.md, for real: nginx with the rendered configuration in front of two UDP nodes on
127.0.0.1, and many clients, each its own socket (its own source port), as devices behind one NAT address.

The nodes answer every datagram with their name and the datagram; a client retries like a CoAP client (a few tries,
each with a timeout), so no assert depends on timing.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from lwm2m_server.cluster.nginx import parse_endpoint, render_nginx_config
from tests.nginx_balancer import INSTALL_HINT, NginxBalancer, find_nginx

CLIENTS = 40
TRY_TIMEOUT_S = 0.5
TEST_TIMEOUT_S = 60.0


class Node(asyncio.DatagramProtocol):
    """A server node: answers ``<name> <datagram>`` and remembers, per client, the address it came from."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.session_of: dict[bytes, tuple[str, int]] = {}  # client id -> the address the node sees

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.session_of[data.split(b":")[0]] = addr
        self.transport.sendto(self.name.encode() + b" " + data, addr)

    def send(self, client: bytes, data: bytes) -> None:
        """A datagram to a client's session address, unasked (as an Observe notification or a Read)."""
        assert self.transport is not None
        self.transport.sendto(data, self.session_of[client])

    @property
    def endpoint(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"


class Client(asyncio.DatagramProtocol):
    """A device: its own socket; collects what it receives (empty datagrams counted apart)."""

    def __init__(self, ident: int) -> None:
        self.ident = f"c{ident}".encode()
        self.transport: asyncio.DatagramTransport | None = None
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.empty = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data:
            self.inbox.put_nowait(data)
        else:  # nginx 1.22 forwards an upstream's ICMP error as an empty datagram (fixed in 1.23.0)
            self.empty += 1

    async def ask(self, seq: int, *, tries: int = 3) -> tuple[str, int]:
        """Send ``<id>:<seq>`` until a node answers it (at most ``tries`` times): (the node's name, tries used)."""
        assert self.transport is not None
        payload = self.ident + b":" + str(seq).encode()
        for attempt in range(1, tries + 1):
            self.transport.sendto(payload)
            try:
                async with asyncio.timeout(TRY_TIMEOUT_S):
                    while True:
                        name, _, echoed = (await self.inbox.get()).partition(b" ")
                        if echoed == payload:
                            return name.decode(), attempt
            except TimeoutError:
                continue
        raise AssertionError(f"{self.ident!r} got no answer to {payload!r} in {tries} tries")


@dataclass
class Cluster:
    nodes: dict[str, Node]
    balancer: NginxBalancer
    clients: list[Client] = field(default_factory=list)

    async def ask_all(self, seq: int, clients: list[Client] | None = None, *, tries: int = 3) -> list[str]:
        answers = await asyncio.gather(*(c.ask(seq, tries=tries) for c in clients or self.clients))
        return [name for name, _ in answers]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    nodes: dict[str, Node] = {}
    balancer: NginxBalancer | None = None
    try:
        for name in ("A", "B"):
            transport, node = await loop.create_datagram_endpoint(lambda n=name: Node(n),  # type: ignore[misc]
                                                                  local_addr=("127.0.0.1", 0))
            transports.append(transport)
            nodes[name] = node
        balancer = NginxBalancer([node.endpoint for node in nodes.values()], workers=2, fail_timeout=10.0)
        balancer.start()
        result = Cluster(nodes, balancer)
        for i in range(CLIENTS):
            transport, client = await loop.create_datagram_endpoint(lambda i=i: Client(i),  # type: ignore[misc]
                                                                    remote_addr=balancer.address)
            transports.append(transport)
            result.clients.append(client)
        yield result
    finally:
        for transport in transports:
            transport.close()
        if balancer is not None:
            balancer.stop()


async def test_each_client_stays_on_one_node_and_clients_spread_over_both(cluster: Cluster) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S):
        rounds = [await cluster.ask_all(seq) for seq in range(4)]
    per_client = [{r[i] for r in rounds} for i in range(CLIENTS)]
    assert all(len(names) == 1 for names in per_client), per_client  # affinity by address AND port
    first = rounds[0]
    # 40 clients on one address: hashing the port too spreads them (all on one node: p < 1e-6)
    assert first.count("A") >= 1 and first.count("B") >= 1, first
    # a node sees nginx's address, one port per client session, never the client's own
    for client, name in zip(cluster.clients, first, strict=True):
        assert client.transport is not None
        seen = cluster.nodes[name].session_of[client.ident]
        assert seen != client.transport.get_extra_info("sockname")[:2]
    assert len({cluster.nodes[n].session_of[c.ident] for c, n in zip(cluster.clients, first, strict=True)}) == CLIENTS


async def test_a_node_sends_to_a_client_unasked_within_its_session(cluster: Cluster) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S):
        first = await cluster.ask_all(0)
        for name, node in cluster.nodes.items():
            client = cluster.clients[first.index(name)]
            for n in range(5):  # several: the number of datagrams from a node is not limited
                node.send(client.ident, f"notify {n} from {name}".encode())
            received: list[bytes] = []
            while len(received) < 5:  # (a late duplicate answer of a retried question may come first)
                if (data := await client.inbox.get()).startswith(b"notify"):
                    received.append(data)
            assert received == [f"notify {n} from {name}".encode() for n in range(5)]


async def test_when_a_node_dies_its_clients_move_to_the_live_node_and_the_others_stay(cluster: Cluster) -> None:
    async with asyncio.timeout(TEST_TIMEOUT_S):
        first = await cluster.ask_all(0)
        on_a = [c for c, name in zip(cluster.clients, first, strict=True) if name == "A"]
        on_b = [c for c, name in zip(cluster.clients, first, strict=True) if name == "B"]
        assert on_a and on_b
        dead = cluster.nodes["A"].transport
        assert dead is not None
        dead.close()  # A's port now answers ICMP port-unreachable
        await asyncio.sleep(0)  # let the loop close the socket

        moved = await asyncio.gather(*(c.ask(1, tries=8) for c in on_a))  # a CoAP client's retransmissions
        assert [name for name, _ in moved] == ["B"] * len(on_a)
        assert max(tries for _, tries in moved) > 1  # the first datagram after the death went to A, lost
        assert await cluster.ask_all(2, on_a) == ["B"] * len(on_a)  # the new session stays on B
        assert await cluster.ask_all(1, on_b) == ["B"] * len(on_b)  # B's clients never moved
        assert {c.ident for c in on_a} <= set(cluster.nodes["B"].session_of)


async def test_a_datagram_as_big_as_a_block_with_its_headers_passes_whole(cluster: Cluster) -> None:
    client = cluster.clients[0]
    assert client.transport is not None
    payload = client.ident + b":" + b"x" * 1400  # more than a 1,024-byte block with CoAP and DTLS headers
    async with asyncio.timeout(TEST_TIMEOUT_S):
        for _ in range(3):
            client.transport.sendto(payload)
            try:
                async with asyncio.timeout(TRY_TIMEOUT_S):
                    answer = await client.inbox.get()
                break
            except TimeoutError:
                continue
    assert answer.partition(b" ")[2] == payload


@pytest.mark.parametrize(("nodes", "problem"), [
    ([], "at least one node"),
    ("127.0.0.1:5683", "at least one node"),
    (["127.0.0.1"], "not 'host:port'"),
    (["127.0.0.1:0"], "port must be"),
    (["127.0.0.1:65536"], "port must be"),
    (["127.0.0.1:56x"], "port must be"),
    (["::1:5683"], "in brackets"),
    (["[zz::1]:5683"], "not an IPv6 address"),
    (["bad_host:5683"], "neither an IP address nor a host name"),
    (["*:5683"], "neither an IP address nor a host name"),
    (["a.example:5683; include /etc/passwd"], "port must be"),
    (["10.0.0.1:5683", "10.0.0.1:5683"], "listed twice"),
])
def test_bad_nodes_are_refused_with_a_reason(nodes: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        render_nginx_config(listen="0.0.0.0:5683", nodes=nodes)


@pytest.mark.parametrize(("argument", "value"), [
    ("session_timeout", 0.0), ("session_timeout", "1s"), ("fail_timeout", -1.0), ("fail_timeout", 1.5),
    ("buffer_size", 512), ("connections", 2),
    ("worker_processes", 0), ("user", "root; daemon on"), ("pid_file", 'a";b'), ("error_log", "a\nb"),
])
def test_bad_settings_are_refused(argument: str, value: object) -> None:
    with pytest.raises(ValueError):
        render_nginx_config(listen="0.0.0.0:5683", nodes=["10.0.0.1:5683"], **{argument: value})  # type: ignore[arg-type]


def test_endpoints_parse() -> None:
    assert parse_endpoint("[::1]:5684") == ("[::1]", 5684)
    assert parse_endpoint("node-2.lwm2m.example:5683") == ("node-2.lwm2m.example", 5683)
    assert parse_endpoint("*:5683", wildcard=True) == ("*", 5683)


def test_nginx_accepts_the_configuration_for_every_kind_of_endpoint(tmp_path: Path) -> None:
    found = find_nginx()
    if found is None:
        pytest.fail(f"nginx with its stream module not found: {INSTALL_HINT}", pytrace=False)
    binary, module = found
    config = render_nginx_config(listen="[::1]:5683", nodes=["[::1]:15683", "localhost:15684", "10.0.0.1:5683"],
                                 module=module, pid_file=str(tmp_path / "pid"), error_log=str(tmp_path / "log"),
                                 user="nobody nogroup", session_timeout=0.25, fail_timeout=3)
    assert "hash $remote_addr:$remote_port consistent;" in config
    assert "proxy_responses" not in config.replace("# proxy_responses", "")
    assert "proxy_timeout 250ms;" in config and "fail_timeout=3s;" in config
    (tmp_path / "nginx.conf").write_text(config)
    check = subprocess.run([str(binary), "-t", "-p", str(tmp_path), "-c", "nginx.conf"], capture_output=True,
                           text=True, timeout=20)
    assert check.returncode == 0, check.stderr
