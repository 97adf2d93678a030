"""Several nodes: the API of any node answers for every device, forwarding what only the device's node can do.

A device's session lives on one node (the one its registration row names); a request for one device
(``/api/devices/{endpoint}/...``) that reaches another node is forwarded, as it came (method, path, query, body,
the caller's Authorization), to the API of the node holding the device, and its answer streamed back (an Observe
stream too). :class:`ClusterForwarder` is a pure ASGI middleware that runs after the token check (the caller is
authenticated here first, and again by the other node).

The bench route (``PUT /api/clients/...``, unauthenticated, loopback only, ``--bench-api``) is forwarded the same
way, in the default tenant. Invariants: a request is forwarded at most once (the forwarded request carries
``X-Scratch-Forwarded-By``; a node never forwards such a request again, it answers itself); only device paths are
forwarded; ``locate`` decides (None: answer here, e.g. the device is held here, is unknown, or its node is dead); a
node that cannot be reached gives 502 with a reason and no secret (never the token).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from urllib.parse import unquote

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lwm2m_server.api.auth import PRINCIPAL
from lwm2m_server.tenancy.model import DEFAULT_TENANT

__all__ = ["FORWARDED_BY", "ClusterForwarder"]

FORWARDED_BY = "x-scratch-forwarded-by"
_DEVICE_PATH = re.compile(r"^/api/devices/([^/]+)(?:/.*)?$")
_BENCH_PATH = re.compile(r"^/api/clients/([^/]+)/.*$")  # the unauthenticated bench route (--bench-api), default tenant
_PASSED_HEADERS = (b"authorization", b"content-type", b"accept", b"last-event-id")
_TIMEOUT = httpx.Timeout(60.0, read=None)  # an Observe stream stays open as long as the caller keeps it

Locate = Callable[[str, str], str | None]  # (endpoint, tenant) -> the API base URL of its node, or None: here


class ClusterForwarder:
    """Forwards device requests to the node holding the device (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, locate: Locate, node_id: str) -> None:
        self.app, self.locate, self.node_id = app, locate, node_id
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get(PRINCIPAL)
        match = _DEVICE_PATH.match(scope["path"]) if principal is not None else _BENCH_PATH.match(scope["path"])
        headers = dict((k.lower(), v) for k, v in scope["headers"])
        if match is None or FORWARDED_BY.encode() in headers:
            await self.app(scope, receive, send)
            return
        endpoint = unquote(match.group(1))
        tenant = principal.tenant_id if principal is not None else DEFAULT_TENANT
        target = await asyncio.to_thread(self.locate, endpoint, tenant)
        if target is None:
            await self.app(scope, receive, send)
            return
        await self._forward(target, scope, receive, send, headers)

    async def _forward(self, target: str, scope: Scope, receive: Receive, send: Send,
                       headers: dict[bytes, bytes]) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{target}{scope['path']}" + (f"?{query}" if query else "")
        passed = {k.decode(): v.decode("latin-1") for k, v in headers.items() if k in _PASSED_HEADERS}
        passed[FORWARDED_BY] = self.node_id
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=_TIMEOUT)
        try:
            request = self._client.build_request(scope["method"], url, headers=passed, content=bytes(body))
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            reason = f"the node holding this device cannot be reached ({type(e).__name__})"
            await _answer(send, 502, json.dumps({"error": reason, "kind": "BadGateway"}))
            return
        try:
            out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
                   if k.lower() in ("content-type", "retry-after", "cache-control")]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (httpx.HTTPError, OSError):
            pass  # the other node or the caller went away mid-stream: nothing more to say
        finally:
            await response.aclose()


async def _answer(send: Send, status: int, body: str) -> None:
    start: Message = {"type": "http.response.start", "status": status,
                      "headers": [(b"content-type", b"application/json")]}
    await send(start)
    await send({"type": "http.response.body", "body": body.encode()})
