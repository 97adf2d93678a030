"""Helpers for the Leshan interop tests: the server demo's REST API and SSE events, the JSON node shape Leshan's
REST API uses (converted to and from our nodes), and the LwM2M v1.1 Test Object 3442 that Leshan's client demo
implements (every resource type, single and multiple), which makes it a codec oracle in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from client_sim.device import SimulatedDevice
from lwm2m_server.core.model import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
    Value,
)
from lwm2m_server.server import Lwm2mServer, ServerSettings
from tests.interop.conftest import LeshanServerDemo

T = ResourceType

# --------------------------------------------------------------------------------------------- object 3442

_TEST_OBJECT_RESOURCES: tuple[tuple[int, str, str, bool, ResourceType], ...] = (
    (0, "Reset values", "E", False, T.NONE),
    (1, "Randomize values", "E", False, T.NONE),
    (2, "Clear values", "E", False, T.NONE),
    (3, "Exec With Arguments", "E", False, T.NONE),
    (4, "Arguments List", "R", True, T.STRING),
    (5, "Send Data", "E", False, T.NONE),
    (6, "Resources to Send", "RW", True, T.STRING),
    (110, "String Value", "RW", False, T.STRING),
    (120, "Integer Value", "RW", False, T.INTEGER),
    (125, "Unsigned Integer Value", "RW", False, T.UNSIGNED_INTEGER),
    (130, "Float Value", "RW", False, T.FLOAT),
    (140, "Boolean Value", "RW", False, T.BOOLEAN),
    (150, "Opaque Value", "RW", False, T.OPAQUE),
    (160, "Time Value", "RW", False, T.TIME),
    (170, "ObjLink Value", "RW", False, T.OBJLNK),
    (180, "CoreLnk Value", "RW", False, T.CORELNK),
    (1110, "Multiple String Value", "RW", True, T.STRING),
    (1120, "Multiple Integer Value", "RW", True, T.INTEGER),
    (1125, "Multiple Unsigned Integer Value", "RW", True, T.UNSIGNED_INTEGER),
    (1130, "Multiple Float Value", "RW", True, T.FLOAT),
    (1140, "Multiple Boolean Value", "RW", True, T.BOOLEAN),
    (1150, "Multiple Opaque Value", "RW", True, T.OPAQUE),
    (1160, "Multiple Time Value", "RW", True, T.TIME),
    (1170, "Multiple ObjLink Value", "RW", True, T.OBJLNK),
    (1180, "Multiple CoreLnk Value", "RW", True, T.CORELNK),
)

TEST_OBJECT = ObjectDefinition(
    id=3442, name="LwM2M v1.1 Test Object", version="1.0", lwm2m_version="1.1", multiple=False, mandatory=False,
    urn="urn:oma:lwm2m:oma:3442",
    resources={rid: ResourceDefinition(rid, name, ops, multiple, False, rtype)
               for rid, name, ops, multiple, rtype in _TEST_OBJECT_RESOURCES},
)
"""Object 3442 as Leshan 2.0.0-M17 defines it (leshan-demo-shared models/3442.xml)."""

MODEL = ObjectModel.default().with_definitions([TEST_OBJECT])
SINGLE_VALUE_IDS = (110, 120, 125, 130, 140, 150, 160, 170, 180)
MULTIPLE_VALUE_IDS = (1110, 1120, 1125, 1130, 1140, 1150, 1160, 1170, 1180)

# Values that probe each codec's edges (sign, width, UTF-8, 64-bit unsigned, doubles, null link, empty opaque)
EDGE_VALUES: Mapping[int, Value] = {
    110: "héllo wörld ✓",
    120: -1234567890123,
    125: 2**63 + 5,
    130: -1.5e300,
    140: False,
    150: bytes(range(20)),
    160: 1700000000,
    170: ObjectLink(65535, 65535),
    180: "</3442/0/110>,</3>;ver=1.2",
}
EDGE_MULTIPLE: Mapping[int, Mapping[int, Value]] = {
    1110: {0: "a", 5: ""},
    1120: {0: -1, 1: 2**40},
    1125: {3: 0, 4: 2**32},
    1130: {1: 0.25, 2: 3.14159},
    1140: {0: True, 1: False},
    1150: {3: b"\x00", 7: b"\xff" * 3},
    1160: {0: 0, 1: 946684800},
    1170: {0: ObjectLink(3, 0), 9: ObjectLink(1, 0)},
    1180: {0: "</1>"},
}


def edge_node(rid: int) -> SingleResource | MultipleResource:
    rtype = _type_of(rid)
    if rid in EDGE_VALUES:
        return SingleResource(rid, rtype, EDGE_VALUES[rid])
    return MultipleResource(rid, rtype, dict(EDGE_MULTIPLE[rid]))


def edge_instance() -> Instance:
    return Instance.of(0, [edge_node(r) for r in (*SINGLE_VALUE_IDS, *MULTIPLE_VALUE_IDS)])


def edge_object() -> Obj:
    """Object 3442 for a simulated device, filled with :data:`EDGE_VALUES` (executables and lists left out)."""
    return Obj.of(3442, [edge_instance()])


def _type_of(rid: int) -> ResourceType:
    rdef = TEST_OBJECT.resource(rid)
    assert rdef is not None
    return rdef.type


def values_only(node: Node) -> dict[int, Node]:
    """The resources of an instance that every multi-value format can carry: SenML and OMA JSON have no way to
    say "a multiple resource with no instances", so empty multiple resources are left out."""
    assert isinstance(node, Instance), node
    return {rid: r for rid, r in node.resources.items()
            if not (isinstance(r, MultipleResource) and not r.instances)}


@contextlib.asynccontextmanager
async def our_server(data_dir: Path, **settings: Any) -> AsyncIterator[Lwm2mServer]:
    """Our server in-process on 127.0.0.1 (ephemeral CoAP port, no HTTP API), knowing object 3442."""
    settings.setdefault("coap_port", 0)
    settings.setdefault("api_port", None)
    vault = settings.pop("vault", None)
    srv = Lwm2mServer(ServerSettings(data_dir=data_dir, **settings), model=MODEL, vault=vault)
    try:
        await srv.start()
        yield srv
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def managed_by_leshan(leshan: LeshanServerDemo, endpoint: str, **options: Any
                            ) -> AsyncIterator[tuple[SimulatedDevice, LeshanRest]]:
    """A simulated device (objects 1, 3, 4 and 3442 filled with edge values; no drift) registered with the Leshan
    server demo, and the REST API to manage it; the device de-registers and stops at the end."""
    options.setdefault("reboot_delay", 0.05)
    options.setdefault("drift_interval", 0)
    dev = SimulatedDevice(endpoint, leshan.coap_uri, model=MODEL, extra_objects=[edge_object()], **options)
    async with LeshanRest(leshan.api) as rest:
        try:
            assert await dev.start(timeout=10), f"{endpoint} could not register with Leshan ({dev.state.value})"
            await rest.wait_registered(endpoint)
            yield dev, rest
        finally:
            await dev.stop()


# --------------------------------------------------------------------------------------------- Leshan JSON nodes

_LESHAN_TYPES = {
    "STRING": T.STRING, "INTEGER": T.INTEGER, "UNSIGNED_INTEGER": T.UNSIGNED_INTEGER, "FLOAT": T.FLOAT,
    "BOOLEAN": T.BOOLEAN, "OPAQUE": T.OPAQUE, "TIME": T.TIME, "OBJLNK": T.OBJLNK, "CORELINK": T.CORELNK,
}
_TYPE_NAMES = {v: k.lower() for k, v in _LESHAN_TYPES.items()}


def value_from_leshan(rtype: ResourceType, v: Any) -> Value:
    """A value as Leshan's REST API shows it (numbers as strings, time in ms, opaque in hex, links as objects)."""
    if rtype in (T.INTEGER, T.UNSIGNED_INTEGER):
        return int(v)
    if rtype is T.FLOAT:
        return float(v)
    if rtype is T.TIME:
        ms = int(v)
        assert ms % 1000 == 0, f"time {ms} ms has a sub-second part"
        return ms // 1000
    if rtype is T.OPAQUE:
        return bytes.fromhex(v)
    if rtype is T.OBJLNK:
        return ObjectLink(int(v["objectId"]), int(v["objectInstanceId"]))
    if rtype is T.BOOLEAN:
        assert isinstance(v, bool), v
        return v
    return str(v)


def node_from_leshan(content: Mapping[str, Any]) -> Node:
    kind = content["kind"]
    if kind == "singleResource":
        rtype = _LESHAN_TYPES[content["type"]]
        return SingleResource(int(content["id"]), rtype, value_from_leshan(rtype, content["value"]))
    if kind == "resourceInstance":
        rtype = _LESHAN_TYPES[content["type"]]
        return ResourceInstance(int(content["id"]), rtype, value_from_leshan(rtype, content["value"]))
    if kind == "multiResource":
        rtype = _LESHAN_TYPES[content["type"]]
        return MultipleResource(int(content["id"]), rtype,
                                {int(k): value_from_leshan(rtype, v) for k, v in content["values"].items()})
    if kind == "instance":
        resources = [node_from_leshan(r) for r in content["resources"]]
        return Instance.of(int(content["id"]), resources)  # type: ignore[arg-type]
    if kind == "obj":
        return Obj.of(int(content["id"]), [node_from_leshan(i) for i in content["instances"]])  # type: ignore[misc]
    raise AssertionError(f"unknown Leshan node kind {kind!r}")


def value_to_leshan(rtype: ResourceType, v: Value) -> Any:
    if rtype is T.TIME:
        assert isinstance(v, int)
        return v * 1000
    if rtype is T.OPAQUE:
        assert isinstance(v, bytes)
        return v.hex()
    if rtype is T.OBJLNK:
        assert isinstance(v, ObjectLink)
        return {"objectId": v.object_id, "objectInstanceId": v.instance_id}
    if rtype in (T.INTEGER, T.UNSIGNED_INTEGER):
        return str(v)  # exact, whatever the width (Jackson reads a numeric string into Long/ULong)
    return v


def node_to_leshan(node: Node) -> dict[str, Any]:
    if isinstance(node, SingleResource):
        return {"id": node.id, "kind": "singleResource", "type": _TYPE_NAMES[node.type],
                "value": value_to_leshan(node.type, node.value)}
    if isinstance(node, MultipleResource):
        return {"id": node.id, "kind": "multiResource", "type": _TYPE_NAMES[node.type],
                "values": {str(k): value_to_leshan(node.type, v) for k, v in node.instances.items()}}
    if isinstance(node, Instance):
        return {"id": node.id, "kind": "instance", "resources": [node_to_leshan(r) for r in node.resources.values()]}
    raise AssertionError(f"cannot express {node!r} for Leshan")


# --------------------------------------------------------------------------------------------- REST and SSE

@dataclass(frozen=True)
class Answer:
    """A Leshan REST answer to a device operation: the LwM2M status (``CONTENT(205)``) and the JSON body."""

    http_status: int
    body: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.body.get("status", ""))

    @property
    def code(self) -> int:
        """The CoAP code as Leshan names it, e.g. 205 for ``CONTENT(205)``."""
        text = self.status
        return int(text[text.index("(") + 1:text.index(")")]) if "(" in text else 0

    @property
    def success(self) -> bool:
        return bool(self.body.get("success"))

    @property
    def node(self) -> Node:
        assert self.success, self.body
        return node_from_leshan(self.body["content"])


class LeshanRest:
    """The Leshan server demo's REST API, for one test (``async with LeshanRest(api) as rest``)."""

    def __init__(self, api: str, *, default_timeout: int = 5) -> None:
        self.api = api
        self.default_timeout = default_timeout
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))

    async def __aenter__(self) -> LeshanRest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _answer(self, response: httpx.Response) -> Answer:
        if response.status_code != 200:
            raise AssertionError(f"{response.request.method} {response.request.url}: HTTP {response.status_code} "
                                 f"{response.text[:300]}")
        return Answer(response.status_code, response.json() if response.content else {})

    def _params(self, fmt: str | None, timeout: int | None, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {"timeout": timeout or self.default_timeout}
        if fmt is not None:
            params["format"] = fmt
        params.update({k: v for k, v in extra.items() if v is not None})
        return params

    async def registration(self, ep: str) -> dict[str, Any] | None:
        r = await self.http.get(f"{self.api}/clients/{ep}")
        if r.status_code != 200 or not r.content:
            return None
        body: dict[str, Any] = r.json()
        return body

    async def clients(self) -> list[dict[str, Any]]:
        """Every registration the server demo holds (``GET /api/clients``)."""
        r = await self.http.get(f"{self.api}/clients")
        if r.status_code != 200:
            raise AssertionError(f"GET {self.api}/clients: HTTP {r.status_code} {r.text[:300]}")
        body: list[dict[str, Any]] = r.json()
        return body

    async def wait_registered(self, ep: str, *, other_than: str | None = None, timeout: float = 15.0
                              ) -> dict[str, Any]:
        """The registration of ``ep`` once it exists (and, with ``other_than``, has another registration id)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            reg = await self.registration(ep)
            if reg is not None and reg.get("registrationId") != other_than:
                return reg
            if loop.time() > deadline:
                raise AssertionError(f"{ep} not (re-)registered at Leshan within {timeout:g} s; last: {reg}")
            await asyncio.sleep(0.05)

    async def read(self, ep: str, path: str, fmt: str | None = None, timeout: int | None = None) -> Answer:
        return await self._answer(await self.http.get(f"{self.api}/clients/{ep}{path}",
                                                      params=self._params(fmt, timeout)))

    async def write(self, ep: str, path: str, node: Node | Mapping[str, Any], fmt: str | None = None, *,
                    replace: bool = True, timeout: int | None = None) -> Answer:
        body = node if isinstance(node, Mapping) else node_to_leshan(node)
        params = self._params(fmt, timeout, replace=None if replace else "false")
        return await self._answer(await self.http.put(f"{self.api}/clients/{ep}{path}", params=params,
                                                      content=json.dumps(body),
                                                      headers={"Content-Type": "application/json"}))

    async def execute(self, ep: str, path: str, arguments: str | None = None, timeout: int | None = None) -> Answer:
        kwargs: dict[str, Any] = {}
        if arguments:
            kwargs = {"content": arguments, "headers": {"Content-Type": "text/plain"}}
        return await self._answer(await self.http.post(f"{self.api}/clients/{ep}{path}",
                                                       params=self._params(None, timeout), **kwargs))

    async def observe(self, ep: str, path: str, fmt: str | None = None, timeout: int | None = None) -> Answer:
        return await self._answer(await self.http.post(f"{self.api}/clients/{ep}{path}/observe",
                                                       params=self._params(fmt, timeout)))

    async def cancel_observe(self, ep: str, path: str) -> Answer:
        """Active cancellation (a GET with Observe=1)."""
        return await self._answer(await self.http.delete(f"{self.api}/clients/{ep}{path}/observe",
                                                         params={"active": ""}))

    async def discover(self, ep: str, path: str, timeout: int | None = None) -> Answer:
        return await self._answer(await self.http.get(f"{self.api}/clients/{ep}{path}/discover",
                                                      params=self._params(None, timeout)))

    async def write_attributes(self, ep: str, path: str, **attributes: Any) -> Answer:
        # no timeout= here: this route turns every query parameter into an attribute
        return await self._answer(await self.http.put(f"{self.api}/clients/{ep}{path}/attributes",
                                                      params=attributes))

    async def read_composite(self, ep: str, paths: list[str], fmt: str, timeout: int | None = None) -> Answer:
        params = {"paths": ",".join(paths), "pathformat": fmt, "nodeformat": fmt,
                  "timeout": timeout or self.default_timeout}
        return await self._answer(await self.http.get(f"{self.api}/clients/{ep}/composite", params=params))

    async def write_composite(self, ep: str, nodes: Mapping[str, Node], fmt: str,
                              timeout: int | None = None) -> Answer:
        body = {path: node_to_leshan(node) for path, node in nodes.items()}
        params = {"nodeformat": fmt, "timeout": timeout or self.default_timeout}
        return await self._answer(await self.http.put(f"{self.api}/clients/{ep}/composite", params=params,
                                                      content=json.dumps(body),
                                                      headers={"Content-Type": "application/json"}))


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]


class LeshanEvents:
    """The demo's Server-Sent Events for one endpoint, collected in the background from the moment the stream is
    open (``async with LeshanEvents(api, ep) as events``; then ``await events.next("NOTIFICATION")``)."""

    def __init__(self, api: str, endpoint: str, *, keep_coap_log: bool = False) -> None:
        self.url = f"{api}/event"
        self.endpoint = endpoint
        self.keep_coap_log = keep_coap_log
        self.seen: list[Event] = []
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def __aenter__(self) -> LeshanEvents:
        self._task = asyncio.create_task(self._run(), name=f"leshan-sse-{self.endpoint}")
        waiter = asyncio.create_task(self._opened.wait())
        done, _ = await asyncio.wait({waiter, self._task}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task in done:
            self._task.result()
            raise AssertionError("the SSE stream ended at once")
        if not self._opened.is_set():
            raise AssertionError(f"no SSE stream from {self.url} within 10 s")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0)) as http, http.stream(
                "GET", self.url, params={"ep": self.endpoint}, headers={"Accept": "text/event-stream"}) as r:
            if r.status_code != 200:
                raise AssertionError(f"SSE {self.url}: HTTP {r.status_code}")
            self._opened.set()
            name, data = "", []
            async for line in r.aiter_lines():
                if line.startswith("event:"):
                    name = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and name:
                    if name != "COAPLOG" or self.keep_coap_log:
                        event = Event(name, json.loads("\n".join(data)) if data else {})
                        self.seen.append(event)
                        await self._queue.put(event)
                    name, data = "", []

    async def next(self, name: str, predicate: Callable[[Event], bool] = lambda e: True,
                   timeout: float = 15.0) -> Event:
        """The next event called ``name`` that satisfies ``predicate`` (others are skipped)."""
        async def wait() -> Event:
            while True:
                event = await self._queue.get()
                if event.name == name and predicate(event):
                    return event

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            names = [e.name for e in self.seen][-20:]
            raise AssertionError(f"no {name} event for {self.endpoint} within {timeout:g} s; "
                                 f"last events: {names}") from None


# --------------------------------------------------------------------------------------------- DTLS-PSK

# The server demo and the bootstrap server demo share the security servlet (``/api/security/clients``): keys are hex
# there, identities plain text. Bootstrap configs carry both as byte arrays. Nothing here logs, prints or puts a key
# in an exception message: a REST answer is quoted with the key cut out.


def _redacted(text: str, *keys: bytes) -> str:
    for key in keys:
        for form in (key.hex(), key.hex().upper()):
            text = text.replace(form, "<key>")
    return text


async def put_psk(api: str, endpoint: str, identity: str, key: bytes) -> None:
    """Tell a Leshan server or bootstrap server demo the PSK identity and key ``endpoint`` connects with (DTLS)."""
    body = {"endpoint": endpoint, "tls": {"mode": "psk", "details": {"identity": identity, "key": bytes(key).hex()}}}
    async with httpx.AsyncClient(timeout=10.0) as http:
        r = await http.put(f"{api}/security/clients", content=json.dumps(body),
                           headers={"Content-Type": "application/json"})
    if r.status_code != 200:
        raise AssertionError(f"PUT {api}/security/clients ({endpoint}): HTTP {r.status_code} "
                             f"{_redacted(r.text[:300], bytes(key))}")


async def psk_identities(api: str) -> dict[str, str]:
    """The PSK identity a Leshan demo holds for each endpoint (the keys it also returns are dropped at once)."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        r = await http.get(f"{api}/security/clients")
    if r.status_code != 200:
        raise AssertionError(f"GET {api}/security/clients: HTTP {r.status_code}")
    return {str(c["endpoint"]): str(c["tls"]["details"]["identity"]) for c in r.json()
            if isinstance(c.get("tls"), dict) and c["tls"].get("mode") == "psk"}


def psk_bootstrap_config(*, bootstrap_uri: str, bootstrap_identity: str, bootstrap_key: bytes, server_uri: str,
                         server_identity: str, server_key: bytes, short_id: int = 123,
                         lifetime: int = 300) -> dict[str, Any]:
    """A Leshan ``BootstrapConfig`` (JSON) that deletes /0 and /1, then writes the bootstrap account (/0/0, kept
    with the device's factory PSK), one LwM2M server account with a PSK (/0/1) and its /1/0 (``short_id``)."""
    def account(uri: str, bootstrap: bool, identity: str, key: bytes) -> dict[str, Any]:
        return {"uri": uri, "bootstrapServer": bootstrap, "securityMode": "PSK",
                "publicKeyOrId": list(identity.encode()), "serverPublicKey": [], "secretKey": list(bytes(key))}

    return {
        "toDelete": ["/0", "/1"],
        "servers": {"0": {"shortId": short_id, "lifetime": lifetime, "defaultMinPeriod": 1, "binding": "U",
                          "notifIfDisabled": True}},
        "security": {"0": account(bootstrap_uri, True, bootstrap_identity, bootstrap_key),
                     "1": {**account(server_uri, False, server_identity, server_key), "serverId": short_id}},
    }


async def post_bootstrap_config(api: str, endpoint: str, config: Mapping[str, Any]) -> None:
    """Store ``config`` as ``endpoint``'s bootstrap config in a Leshan bootstrap server demo (POST; PUT is 405)."""
    keys = [bytes(a.get("secretKey", [])) for a in config.get("security", {}).values()]
    async with httpx.AsyncClient(timeout=10.0) as http:
        r = await http.post(f"{api}/bootstrap/{endpoint}", content=json.dumps(config),
                            headers={"Content-Type": "application/json"})
    if r.status_code != 200:
        raise AssertionError(f"POST {api}/bootstrap/{endpoint}: HTTP {r.status_code} "
                             f"{_redacted(r.text[:300], *[k for k in keys if k])}")


def bootstrap_session_log(events: LeshanEvents) -> list[str]:
    """What a Leshan bootstrap server demo's ``BSSESSION`` events say, one line each: the event name and the first
    line of its message (``send write: Send WRITE request on /0/1 using TLV``). A write's message goes on with the
    written node (Leshan leaves opaque values, keys among them, out of it); that part is not kept here."""
    lines = []
    for event in events.seen:
        if event.name == "BSSESSION":
            message = str(event.data.get("message", "")).splitlines()
            lines.append(f"{event.data.get('name', '?')}: {message[0] if message else ''}")
    return lines
