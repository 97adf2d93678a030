"""The management REST API. Every route needs ``Authorization: Bearer <token>``, checked by :class:`ApiGuard`
before the app (and before any byte of the body) is reached; without a token ``GET /api/health`` answers only
``{"status": "ok"}``. A token acts for one tenant with a set of roles (:mod:`lwm2m_server.tenancy`): each route
declares its action (:func:`~lwm2m_server.api.auth.caller`) and looks everything up in the caller's tenant, so
another tenant's resource is a 404.

Errors come back as ``{"error": text, "kind": name, "coap_code": "4.05"|null}`` with an HTTP status chosen in
:func:`http_status` (the one mapping from our error tree to HTTP).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lwm2m_server.api.auth import PRINCIPAL, Authenticate, caller
from lwm2m_server.api.node_json import composite_to_json, links_to_json, node_to_json, value_from_json
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import (
    ClientSleepingError,
    CoapCode,
    CodecError,
    ErrorResponseError,
    InvalidPathError,
    InvalidRequestError,
    Lwm2mError,
    ModelError,
    NotFoundError,
    RequestFailedError,
    RequestTimeoutError,
    UnknownEndpointError,
    dotted_code,
)
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    ResourceInstance,
    ResourceType,
    SingleResource,
)
from lwm2m_server.core.operations import (
    CreateRequest,
    DeleteRequest,
    DiscoverRequest,
    ExecuteRequest,
    ObserveRequest,
    ReadCompositeRequest,
    ReadRequest,
    WriteAttributesRequest,
    WriteMode,
    WriteRequest,
)
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.core.rate_limit import RateLimiter
from lwm2m_server.core.registration import Registration
from lwm2m_server.core.responses import DownlinkResponse
from lwm2m_server.events import EventBus
from lwm2m_server.fota.components import read_components
from lwm2m_server.fota.service import FirmwareService, Method, UpdateInProgressError, UpdateJob
from lwm2m_server.key_rotation import rotate_device_key
from lwm2m_server.management import DeviceManagement
from lwm2m_server.registry.tags import DeviceTags
from lwm2m_server.tenancy.model import Action, ForbiddenError, Principal
from lwm2m_server.tenancy.tokens import parse as parse_token
from lwm2m_server.transport.push import DEFAULT_BLOCK_SIZE

MAX_PACKAGE = 64 << 20  # bytes of one firmware package sent through the API
MAX_BODY = 1 << 20  # bytes of any other request body, unless a route's cap says otherwise
AUTH_FAILURE_RATE = 0.5  # failed token checks per second and client address, sustained ...
AUTH_FAILURE_BURST = 10  # ... after a burst of this many; past them 429 instead of 401
HEALTH = "/api/health"
FIRMWARE_ROUTE = "/api/devices/{endpoint}/firmware"  # the package upload (and its status)
BENCH_ROUTE = "/api/clients/{endpoint}/{path:path}"  # Leshan-shaped, unauthenticated, --bench-api only


def http_status(exc: Exception) -> int:
    if isinstance(exc, UnknownEndpointError | NotFoundError):
        return 404
    if isinstance(exc, ForbiddenError) or getattr(exc, "coap_code", None) == CoapCode.FORBIDDEN:
        return 403
    if isinstance(exc, UpdateInProgressError) or getattr(exc, "coap_code", None) == CoapCode.CONFLICT:
        return 409
    if isinstance(exc, InvalidPathError | InvalidRequestError | ModelError):
        return 400
    if isinstance(exc, ClientSleepingError):
        return 409
    if isinstance(exc, RequestTimeoutError):
        return 504
    if isinstance(exc, ErrorResponseError | RequestFailedError | CodecError):
        return 502
    return 500


def registration_to_json(reg: Registration, *, gateway: Registration | None = None,
                         children: Sequence[Registration] = ()) -> dict[str, Any]:
    """A device as the API shows it; ``gateway``: the live registration of the gateway it sits behind;
    ``children``: the end devices behind it (a gateway)."""
    reachable = reg.remote is not None if reg.parent_id is None else gateway is not None and gateway.remote is not None
    return {
        "endpoint": reg.endpoint, "registration_id": reg.id, "address": reg.address, "lifetime": reg.lifetime,
        "lwm2m_version": reg.lwm2m_version, "binding": reg.binding, "queue_mode": reg.queue_mode,
        "registered_at": reg.registered_at, "updated_at": reg.updated_at, "secure": reg.secure,
        "identity": reg.identity,
        "tenant_id": reg.tenant_id, "root_path": reg.root_path,
        "objects": [str(p) for p in reg.summary.instances],
        "formats": sorted(int(f) for f in reg.supported_formats),
        "reachable": reachable,
        "gateway": None if reg.parent_id is None else (gateway.endpoint if gateway is not None else "(gone)"),
        "path_prefix": reg.path_prefix or None,
        "children": [c.endpoint for c in children],
    }


def response_to_json(resp: DownlinkResponse) -> dict[str, Any]:
    out: dict[str, Any] = {"code": dotted_code(resp.code)}
    if resp.content_format is not None:
        out["format"] = _format_label(resp.content_format)
    c = resp.content
    if isinstance(c, tuple):
        out["links"] = links_to_json(c)
    elif isinstance(c, dict):
        out["content"] = composite_to_json(c)
    elif c is not None:
        out["content"] = node_to_json(c)  # type: ignore[arg-type]
    if resp.location:
        out["location"] = "/" + "/".join(resp.location)
    return out


def _format_label(number: int) -> str:
    try:
        return ContentFormat(number).label
    except ValueError:
        return str(number)


def _format(name: str | None) -> ContentFormat | None:
    return ContentFormat.by_name(name) if name else None


class WriteBody(BaseModel):
    path: str
    value: Any = None  # a single resource or resource instance
    values: dict[str, Any] | None = None  # a multiple resource: instance id -> value
    resources: dict[str, Any] | None = None  # an object instance: resource id -> value (or {id: value} map)
    type: str | None = None  # needed only for resources the object model does not know
    format: str | None = None
    mode: str = "replace"


class ExecuteBody(BaseModel):
    path: str
    args: str = ""


class AttributesBody(BaseModel):
    path: str
    attributes: dict[str, float | int | None]


class CreateBody(BaseModel):
    path: str
    instance_id: int = Field(ge=0, le=65534)
    resources: dict[str, Any]
    format: str | None = None


class DeleteBody(BaseModel):
    path: str


class TagsBody(BaseModel):
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)


class CompositeBody(BaseModel):
    paths: list[str]
    format: str = "senml-cbor"


def build_node(model: ObjectModel, path: LwM2mPath, body: WriteBody | CreateBody) -> Node:
    """Turn a JSON write body into a typed node at ``path`` using the object model."""
    explicit = ResourceType.from_ddf(body.type) if isinstance(body, WriteBody) and body.type else None

    def rtype(oid: int, rid: int) -> ResourceType:
        rdef = model.resource(oid, rid)
        if rdef is not None:
            return rdef.type
        if explicit is not None:
            return explicit
        raise ModelError(f"resource /{oid}/x/{rid} is not in the object model; give its type")

    def resource(oid: int, rid: int, value: Any) -> SingleResource | MultipleResource:
        t = rtype(oid, rid)
        rdef = model.resource(oid, rid)
        if isinstance(value, dict) or (rdef is not None and rdef.multiple):
            if not isinstance(value, dict):
                raise InvalidRequestError(f"resource {rid} is multiple: give {{instance id: value}}")
            return MultipleResource(rid, t, {int(k): value_from_json(v, t) for k, v in value.items()})
        return SingleResource(rid, t, value_from_json(value, t))

    oid = path.object_id
    assert oid is not None
    if isinstance(body, CreateBody):
        return Instance.of(body.instance_id, [resource(oid, int(k), v) for k, v in body.resources.items()])
    if path.depth == 2:
        if not body.resources:
            raise InvalidRequestError("writing an object instance needs 'resources'")
        return Instance.of(path.instance_id or 0, [resource(oid, int(k), v) for k, v in body.resources.items()])
    if path.depth == 3:
        rid = path.resource_id or 0
        if body.values is not None:
            return resource(oid, rid, body.values)
        if body.value is None:
            raise InvalidRequestError("writing a resource needs 'value' (or 'values' for a multiple resource)")
        return resource(oid, rid, body.value)
    if path.depth == 4:
        t = rtype(oid, path.resource_id or 0)
        return ResourceInstance(path.resource_instance_id or 0, t, value_from_json(body.value, t))
    raise InvalidRequestError(f"cannot write at {path}")


def _json(status: int, payload: dict[str, Any], *extra: tuple[bytes, bytes], close: bool = True
          ) -> tuple[Message, Message]:
    """The start and body messages of a JSON answer (``Connection: close`` unless ``close`` is False)."""
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    if close:
        headers.append((b"connection", b"close"))
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body, "more_body": False})


def _error(status: int, error: str, kind: str, *extra: tuple[bytes, bytes]) -> tuple[Message, Message]:
    """A refusal shaped like the app's own errors; it closes the connection."""
    return _json(status, {"error": error, "kind": kind, "coap_code": None}, *extra)


class ApiGuard:
    """Pure ASGI middleware in front of the whole app: the token and the body cap are checked before the app runs,
    so before any byte of the body is read (FastAPI dependencies run only after the body has been parsed).

    Invariants, for every HTTP request:

    * the app sees it only with a bearer token ``authenticate`` accepts (its principal is then in the scope's
      ``state``), or when its route is one of ``public``; ``GET /api/health`` without an Authorization header is
      answered here with ``{"status": "ok"}``;
    * a declared Content-Length above the route's cap (``caps`` by route path, else ``default_cap``) gets 413
      before the app runs; a body that grows past the cap as it arrives (chunked) gets 413 when it does, and the
      app then sees a disconnect. The guard itself never reads a body;
    * every refusal carries ``Connection: close``, so the server closes the connection after the answer instead
      of reading (and discarding) the rest of the body;
    * failed token checks are counted per client address and per token id (a token bucket of ``failures`` each):
      past a burst they get 429 with Retry-After (GP-TM-25). A valid token is never throttled: on loopback every
      client shares one address, and another local process must not lock the operator out (the 256-bit secret is
      not guessable anyway; the throttle bounds the cost and the noise of failures);
    * a path under ``public_prefixes`` (and ``/``) is the web interface's: it checks its own session cookie, so
      the guard lets it through without a token (the body caps still apply);
    * ``audit`` hears of every authenticated request that changes state (any method but GET/HEAD) or is refused
      with 403, once its answer starts: the principal, method, route template, path and status.
    """

    def __init__(self, app: ASGIApp, *, authenticate: Authenticate, routes: Callable[[], list[BaseRoute]],
                 caps: Mapping[str, int], default_cap: int, public: frozenset[str], failures: RateLimiter,
                 audit: Callable[[Principal, str, str, str, int], None] | None = None,
                 public_prefixes: tuple[str, ...] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self.app, self._authenticate, self._routes = app, authenticate, routes
        self.public_prefixes = public_prefixes
        self.caps, self.default_cap, self.public = dict(caps), default_cap, public
        self.failures, self.audit, self.clock = failures, audit, clock

    def _route_path(self, scope: Scope) -> str | None:
        for route in self._routes():
            if route.matches(scope)[0] is Match.FULL:
                return getattr(route, "path", None)
        return None

    def _principal(self, header: bytes) -> tuple[Principal | None, str | None]:
        """The principal of an ``Authorization: Bearer`` header, and the token id it names (for throttling)."""
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return None, None
        try:
            text = given.strip().decode("ascii")
        except UnicodeDecodeError:
            return None, None
        parsed = parse_token(text)
        return self._authenticate(text), parsed[0] if parsed else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        lengths = headers.get(b"content-length", [])
        has_body = bool(headers.get(b"transfer-encoding")) or any(v.strip() not in (b"", b"0") for v in lengths)
        route = self._route_path(scope)

        async def refuse(answer: tuple[Message, Message]) -> None:
            for message in answer:
                await send(message)

        principal: Principal | None = None
        path = scope["path"]
        web = bool(self.public_prefixes) and (path == "/" or path.startswith(self.public_prefixes))
        if route not in self.public and not web:
            authorization = headers.get(b"authorization")
            if authorization is None and scope["path"] == HEALTH and scope["method"] == "GET":
                return await refuse(_json(200, {"status": "ok"}, close=has_body))
            token_id = None
            if authorization is not None and len(authorization) == 1:
                principal, token_id = self._principal(authorization[0])
            if principal is None:
                client = scope.get("client")
                now = self.clock()
                waits = [self.failures.allow(f"addr:{client[0] if client else '?'}", now)]
                if token_id is not None:
                    waits.append(self.failures.allow(f"token:{token_id}", now))
                wait = max((w for w in waits if w is not None), default=None)
                if wait is not None:
                    return await refuse(_error(429, "too many failed API token checks",
                                                "TooManyRequests", (b"retry-after", str(math.ceil(wait)).encode())))
                return await refuse(_error(401, "missing, wrong, expired or revoked API token", "Unauthorized",
                                            (b"www-authenticate", b"Bearer")))
            scope.setdefault("state", {})[PRINCIPAL] = principal
        cap = self.caps.get(route, self.default_cap) if route is not None else self.default_cap
        if any(not v.strip().isdigit() for v in lengths):
            return await refuse(_error(400, "invalid Content-Length", "InvalidRequestError"))
        if any(int(v) > cap for v in lengths):
            return await refuse(_error(413, f"the body is larger than {cap} bytes", "ContentTooLarge"))
        if principal is not None and self.audit is not None:
            send = self._audited(send, principal, scope, route or "")
        await self._capped(scope, receive, send, cap)

    def _audited(self, send: Send, principal: Principal, scope: Scope, route: str) -> Send:
        audit, method, path = self.audit, scope["method"], scope["path"]
        assert audit is not None

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if method not in ("GET", "HEAD") or status == 403:
                    audit(principal, method, route, path, status)
            await send(message)

        return sending

    async def _capped(self, scope: Scope, receive: Receive, send: Send, cap: int) -> None:
        """Run the app, counting the body as it arrives: past ``cap`` answer 413 (if the app has not answered
        yet) and give the app a disconnect; whatever the app then sends or raises is dropped."""
        received = 0
        started = refused = False

        async def counted() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    refused = True
                    if not started:
                        for answer in _error(413, f"the body is larger than {cap} bytes", "ContentTooLarge"):
                            await send(answer)
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not refused:
                raise


def create_app(management: DeviceManagement, model: ObjectModel, authenticate: Authenticate, *,
               firmware: FirmwareService | None = None, bench_api: bool = False,
               events: EventBus | None = None, campaigns: Any = None, tags: DeviceTags | None = None,
               tenancy: Any = None, usage: Any = None, web: bool = False, max_body: int = MAX_BODY,
               max_package: int = MAX_PACKAGE, failures: RateLimiter | None = None,
               locate: Callable[[str, str], str | None] | None = None, node_id: str = "",
               stored_devices: Callable[[str], list[Registration]] | None = None) -> FastAPI:
    """The API app behind an :class:`ApiGuard`: ``authenticate`` turns a bearer token into a principal (or None);
    a token is never logged or echoed. ``tenancy`` (a :class:`~lwm2m_server.tenancy.service.TenancyService`) adds
    the tenant, token, grant and audit routes and audits every state-changing call.

    Bodies are capped at ``max_body`` bytes, a firmware package at ``max_package`` (and a campaign's
    target list at :data:`~lwm2m_server.api.campaigns.MAX_CAMPAIGN_BODY`); ``failures`` throttles failed token
    checks per client address (default: :data:`AUTH_FAILURE_BURST` then :data:`AUTH_FAILURE_RATE` per second).

    ``bench_api`` adds, without authentication, the one Leshan-shaped route the neutral load tool drives
    (``PUT /api/clients/{endpoint}/{path}``); the server allows it on a loopback API address only.

    Several nodes (:mod:`lwm2m_server.api.forwarding`): ``locate(endpoint, tenant)`` names the API of the node
    holding a device another node holds (its device requests are forwarded there); ``stored_devices(tenant)``
    lists the devices of every node (the registration table) for ``GET /api/devices``.
    """
    from lwm2m_server.api.campaigns import CAMPAIGN_BODY_CAPS
    from lwm2m_server.api.releases import RELEASE_BODY_CAPS

    app = FastAPI(title="SCRATCh management API", version="0.1.0")
    if locate is not None:  # added first: inside the guard, it sees the authenticated caller
        from lwm2m_server.api.forwarding import ClusterForwarder

        app.add_middleware(ClusterForwarder, locate=locate, node_id=node_id)
    audit = None
    if tenancy is not None:
        def audit(p: Principal, method: str, route: str, path: str, status: int) -> None:
            outcome = "ok" if status < 400 else "refused" if status in (401, 403, 404, 429) else "failed"
            tenancy.record(p, f"{method} {route or path}", path, outcome, detail=f"HTTP {status}")

    app.add_middleware(
        ApiGuard, authenticate=authenticate, audit=audit, routes=lambda: app.router.routes, default_cap=max_body,
        caps={FIRMWARE_ROUTE: max_package, BENCH_ROUTE: 2 * max_package + (64 << 10), **CAMPAIGN_BODY_CAPS,
              **RELEASE_BODY_CAPS},
        public=frozenset({BENCH_ROUTE}) if bench_api else frozenset(),
        public_prefixes=("/ui/", "/ui") if web else (),
        failures=failures or RateLimiter(AUTH_FAILURE_RATE, AUTH_FAILURE_BURST))

    @app.exception_handler(Lwm2mError)
    async def lwm2m_error(_: Request, exc: Lwm2mError) -> JSONResponse:
        code = exc.code if isinstance(exc, ErrorResponseError) else None
        return JSONResponse(status_code=http_status(exc), content={
            "error": str(exc), "kind": type(exc).__name__,
            "coap_code": dotted_code(code) if code is not None else None})

    registrations = management.registrations

    @app.get(HEALTH)
    async def health(p: Principal = caller(Action.READ)) -> dict[str, Any]:
        """With a token: the number of the tenant's registered devices as well (without it the guard answers)."""
        return {"status": "ok", "devices": registrations.count(tenant_id=p.tenant_id)}

    def device_json(reg: Registration) -> dict[str, Any]:
        end_devices = management.end_devices
        gateway = registrations.get(reg.parent_id) if reg.parent_id is not None else None
        children = end_devices.children(reg) if end_devices is not None and reg.parent_id is None else []
        return registration_to_json(reg, gateway=gateway, children=children)

    @app.get("/api/devices")
    async def list_devices(gateway: str | None = None, p: Principal = caller(Action.READ)) -> list[dict[str, Any]]:
        """Every device of the caller's tenant; ``gateway=EP``: only the end devices behind that gateway."""
        mine = (registrations.all(tenant_id=p.tenant_id) if stored_devices is None
                else await asyncio.to_thread(stored_devices, p.tenant_id))
        if gateway is not None:
            parent = management.registration(gateway, tenant_id=p.tenant_id)
            mine = [r for r in mine if r.parent_id == parent.id]
        return [device_json(r) for r in sorted(mine, key=lambda r: r.endpoint)]

    @app.get("/api/devices/{endpoint}")
    async def show_device(endpoint: str, p: Principal = caller(Action.READ)) -> dict[str, Any]:
        return device_json(management.registration(endpoint, tenant_id=p.tenant_id))

    @app.get("/api/devices/{endpoint}/components")
    async def device_components(endpoint: str, timeout: float | None = None,
                                p: Principal = caller(Action.READ)) -> dict[str, Any]:
        """The components the device reports now (object 32700, install order); 404 when it reports none."""
        found = await read_components(management, endpoint, tenant_id=p.tenant_id, timeout=timeout)
        if found is None:
            raise NotFoundError(f"{endpoint} reports no components (its registration lists no object 32700)")
        return {"endpoint": endpoint, "components": found}

    @app.get("/api/devices/{endpoint}/read")
    async def read(endpoint: str, path: str, format: str | None = None, timeout: float | None = None,
                   p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        req = ReadRequest(LwM2mPath.parse(path), _format(format))
        return response_to_json(await management.send(endpoint, req, timeout=timeout, tenant_id=p.tenant_id))

    @app.get("/api/devices/{endpoint}/discover")
    async def discover(endpoint: str, path: str = "/", timeout: float | None = None,
                       p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        return response_to_json(await management.send(endpoint, DiscoverRequest(LwM2mPath.parse(path)),
                                                      timeout=timeout, tenant_id=p.tenant_id))

    @app.post("/api/devices/{endpoint}/write")
    async def write(endpoint: str, body: WriteBody, timeout: float | None = None,
                    p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        path = LwM2mPath.parse(body.path)
        if path.depth < 2:
            raise InvalidRequestError(f"Write needs an object instance, resource or resource instance path, not {path}")
        try:
            mode = WriteMode(body.mode)
        except ValueError:
            raise InvalidRequestError("mode is 'replace' or 'update'") from None
        req = WriteRequest(path, build_node(model, path, body), mode, _format(body.format))
        return response_to_json(await management.send(endpoint, req, timeout=timeout, tenant_id=p.tenant_id))

    @app.post("/api/devices/{endpoint}/execute")
    async def execute(endpoint: str, body: ExecuteBody, timeout: float | None = None,
                      p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        req = ExecuteRequest(LwM2mPath.parse(body.path), body.args)
        return response_to_json(await management.send(endpoint, req, timeout=timeout, tenant_id=p.tenant_id))

    @app.post("/api/devices/{endpoint}/attributes")
    async def write_attributes(endpoint: str, body: AttributesBody, timeout: float | None = None,
                               p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        req = WriteAttributesRequest(LwM2mPath.parse(body.path), body.attributes)
        return response_to_json(await management.send(endpoint, req, timeout=timeout, tenant_id=p.tenant_id))

    @app.post("/api/devices/{endpoint}/create")
    async def create(endpoint: str, body: CreateBody, timeout: float | None = None,
                     p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        path = LwM2mPath.parse(body.path)
        req = CreateRequest(path, build_node(model, path, body), _format(body.format))  # type: ignore[arg-type]
        return response_to_json(await management.send(endpoint, req, timeout=timeout, tenant_id=p.tenant_id))

    @app.post("/api/devices/{endpoint}/delete")
    async def delete(endpoint: str, body: DeleteBody, timeout: float | None = None,
                     p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        return response_to_json(await management.send(endpoint, DeleteRequest(LwM2mPath.parse(body.path)),
                                                      timeout=timeout, tenant_id=p.tenant_id))

    @app.post("/api/devices/{endpoint}/read-composite")
    async def read_composite(endpoint: str, body: CompositeBody, timeout: float | None = None,
                             p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
        fmt = ContentFormat.by_name(body.format)
        req = ReadCompositeRequest(tuple(LwM2mPath.parse(x) for x in body.paths), fmt, fmt)
        return response_to_json(await management.send(endpoint, req, timeout=timeout, tenant_id=p.tenant_id))

    @app.get("/api/devices/{endpoint}/observe")
    async def observe(endpoint: str, path: str, count: int = 1, format: str | None = None,
                      timeout: float = 60.0, p: Principal = caller(Action.MANAGE_DEVICES)) -> StreamingResponse:
        """Stream the first answer and then ``count`` notifications as JSON lines; the observation is cancelled
        when they are sent, when ``timeout`` seconds pass without one, or when the caller goes away."""
        if count < 0:
            raise InvalidRequestError("count must not be negative")
        obs = await management.observe(endpoint, ObserveRequest(LwM2mPath.parse(path), _format(format)),
                                       tenant_id=p.tenant_id)

        async def lines() -> AsyncIterator[bytes]:
            try:
                first = response_to_json(obs.initial)
                first["observing"] = obs.established
                yield (json.dumps(first) + "\n").encode()
                if not obs.established:
                    return
                seen = 0
                stream = obs.notifications().__aiter__()
                while seen < count:
                    try:
                        node = await asyncio.wait_for(stream.__anext__(), timeout)
                    except (StopAsyncIteration, TimeoutError):
                        yield (json.dumps({"end": "timeout" if seen < count else "done"}) + "\n").encode()
                        return
                    except Lwm2mError as e:
                        yield (json.dumps({"end": "error", "error": str(e)}) + "\n").encode()
                        return
                    seen += 1
                    yield (json.dumps({"notification": seen, "content": node_to_json(node)}) + "\n").encode()
            finally:
                obs.cancel()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    if events is not None:
        @app.post("/api/devices/{endpoint}/rekey")
        async def rekey(endpoint: str, timeout: float = 60.0,
                        p: Principal = caller(Action.MANAGE_DEVICES)) -> dict[str, Any]:
            """Bootstrap-Request Trigger, then wait for the device to register with its new server key."""
            if not 0 < timeout <= 600:
                raise InvalidRequestError("timeout is between 0 and 600 seconds")
            return asdict(await rotate_device_key(management, events, endpoint, timeout=timeout,
                                                  tenant_id=p.tenant_id))

    if firmware is not None:
        _firmware_routes(app, firmware)
    if tags is not None:
        _tag_routes(app, tags)
    if campaigns is not None:
        from lwm2m_server.api.campaigns import campaign_routes

        campaign_routes(app, campaigns)
    if tenancy is not None:
        from lwm2m_server.api.tenancy import tenancy_routes

        tenancy_routes(app, tenancy, usage)
        if campaigns is not None:
            from lwm2m_server.api.releases import release_routes

            release_routes(app, campaigns.keys, campaigns.releases, tenancy)
    if web and tenancy is not None:
        from lwm2m_server.web.app import web_routes

        web_routes(app, tenancy=tenancy, registrations=registrations, management=management, campaigns=campaigns,
                   tags=tags,
                   events=events, usage=usage, firmware=firmware)
    if bench_api:
        _bench_routes(app, management)
    return app


def _firmware_routes(app: FastAPI, firmware: FirmwareService) -> None:
    def job_of(endpoint: str, tenant_id: str) -> UpdateJob:
        job = firmware.job(endpoint, tenant_id=tenant_id)
        if job is None:
            raise NotFoundError(f"no firmware update of {endpoint} since the server started")
        return job

    @app.post(FIRMWARE_ROUTE, status_code=202)
    async def start_update(endpoint: str, request: Request, method: str | None = None, timeout: float = 300.0,
                           block_size: int = DEFAULT_BLOCK_SIZE, p: Principal = caller(Action.MANAGE_DEVICES)
                           ) -> dict[str, Any]:
        """Start an update with the request body as the package (application/octet-stream)."""
        try:
            chosen = Method(method) if method else None
        except ValueError:
            raise InvalidRequestError("method is 'push' or 'pull'") from None
        if not 1 <= timeout <= 86400:
            raise InvalidRequestError("timeout must lie between 1 and 86400 seconds")
        package = await request.body()  # at most max_package bytes: the guard refused more
        job = firmware.start(endpoint, package, method=chosen, timeout=timeout, block_size=block_size,
                             tenant_id=p.tenant_id)
        return job.as_dict()

    @app.get("/api/devices/{endpoint}/firmware")
    async def update_status(endpoint: str, p: Principal = caller(Action.READ)) -> dict[str, Any]:
        return job_of(endpoint, p.tenant_id).as_dict()

    @app.get("/api/devices/{endpoint}/firmware/progress")
    async def update_progress(endpoint: str, p: Principal = caller(Action.READ)) -> StreamingResponse:
        """Stream the update's steps as JSON lines until it ends (the last line has ``"done": true``)."""
        job = job_of(endpoint, p.tenant_id)

        async def lines() -> AsyncIterator[bytes]:
            sent = 0  # steps sent, counted like job.recorded
            while True:
                changed = job.changed()
                done = job.done.is_set()
                missing = job.recorded - sent
                steps = list(job.history[-missing:]) if missing > 0 else []
                sent = job.recorded
                for step in steps:
                    yield (json.dumps({**asdict(step), "done": False}) + "\n").encode()
                if done:
                    yield (json.dumps({**job.as_dict(), "done": True}) + "\n").encode()
                    return
                await changed.wait()

        return StreamingResponse(lines(), media_type="application/x-ndjson")


class LeshanWriteBody(BaseModel):
    id: int
    kind: str = "singleResource"
    type: str
    value: Any


MAX_TAGS_PER_CHANGE = 256


def _tag_routes(app: FastAPI, tags: DeviceTags) -> None:
    """Device tags of the caller's tenant; a device need not be registered to be tagged. 400 on an invalid tag."""

    @app.get("/api/tags")
    async def all_tags(p: Principal = caller(Action.READ)) -> dict[str, list[str]]:
        return tags.all(tenant_id=p.tenant_id)

    @app.get("/api/devices/{endpoint}/tags")
    async def device_tags(endpoint: str, p: Principal = caller(Action.READ)) -> dict[str, Any]:
        return {"endpoint": endpoint, "tags": tags.of(endpoint, tenant_id=p.tenant_id)}

    @app.post("/api/devices/{endpoint}/tags")
    async def change_tags(endpoint: str, body: TagsBody, p: Principal = caller(Action.MANAGE_DEVICES)
                          ) -> dict[str, Any]:
        """Add and remove in one change; answers the device's tags afterwards."""
        if len(body.add) + len(body.remove) > MAX_TAGS_PER_CHANGE:
            raise InvalidRequestError(f"at most {MAX_TAGS_PER_CHANGE} tags in one change")
        return {"endpoint": endpoint,
                "tags": tags.change(endpoint, add=body.add, remove=body.remove, tenant_id=p.tenant_id)}


def _bench_routes(app: FastAPI, management: DeviceManagement) -> None:
    @app.put(BENCH_ROUTE)
    async def leshan_write(endpoint: str, path: str, body: LeshanWriteBody, timeout: float = 300.0,
                           format: str | None = None) -> JSONResponse:
        """Leshan's write route, for opaque resources only: a block-wise push of the hex value."""
        if body.kind != "singleResource" or body.type.lower() != "opaque":
            raise InvalidRequestError("only single opaque resources are written here")
        try:
            data = bytes.fromhex(body.value)
        except (TypeError, ValueError):
            raise InvalidRequestError("value must be hex") from None
        reg = management.reachable(endpoint, tenant_id="default")  # unauthenticated: the default tenant only
        await management.sender.push(reg, data, path=LwM2mPath.parse("/" + path), total_timeout=timeout)
        return JSONResponse({"status": "CHANGED", "valid": True, "success": True, "failure": False})
