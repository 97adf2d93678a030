"""The server's CoAP resource tree: the Registration interface at /rd, plus extra resources mounted by path.

Invariants: a request body (assembled from Block1 blocks) is never held beyond ``max_body`` bytes: larger ones
get 4.13 with a Size1 hint; at most ``max_block1_assemblies`` bodies are being assembled at once, at most
``max_block1_per_remote`` per remote (address and port), each for at most ``MAX_TRANSMIT_WAIT`` (93 s) after its
last block: a new transfer beyond either cap gets 5.03 with Max-Age (so the memory held is at most
``max_body * max_block1_assemblies``); every error reaching a client goes through :func:`error_response`.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

from aiocoap import Message, interfaces
from aiocoap import error as coap_error
from aiocoap.blockwise import ContinueException, IncompleteException, _extract_block_key
from aiocoap.numbers import TransportTuning
from aiocoap.numbers.codes import Code
from aiocoap.pipe import Pipe
from aiocoap.resource import Resource

from lwm2m_server.coap.dtls import psk_identity
from lwm2m_server.coap.registration_requests import CON, RegistrationRequest
from lwm2m_server.coap.remotes import remote_address, remote_host
from lwm2m_server.coap.responses import error_response
from lwm2m_server.core.codec.formats import ContentFormat
from lwm2m_server.core.errors import (
    Lwm2mError,
    MethodNotAllowedError,
    NotFoundError,
    SecurityError,
    UnsupportedContentFormatError,
)
from lwm2m_server.core.rate_limit import RateLimitedError, RateLimiter, ReportThrottle
from lwm2m_server.core.registration import PayloadTooLargeError, parse_register, parse_update
from lwm2m_server.registry.service import RegistrationService
from lwm2m_server.storage.stores import DEFAULT_TENANT

log = logging.getLogger(__name__)

Handler = Callable[[Message, tuple[str, ...]], Awaitable[Message]]


DEFAULT_MAX_BLOCK1_ASSEMBLIES = 1000  # at 16 KiB each: 16 MiB at most
DEFAULT_MAX_BLOCK1_PER_REMOTE = 4  # a device sends one request at a time (NSTART = 1); a few to spare
REPORT_EVERY = 10.0  # seconds between two reports of rate-limit refusals of one key


class Block1BusyError(RateLimitedError):
    """Too many Block1 transfers under way, in all or from this remote (5.03 with Max-Age): retry later."""


class BoundedBlock1Spool:
    """Block1 reassembly (RFC 7959 2.5; what aiocoap's ``Block1Spool`` does) with ceilings: on the assembled body
    (``max_body``: 4.13), on the transfers under way (``max_assemblies``, of which unauthenticated remotes get a
    quarter) and on those of one remote (``max_per_remote``): 5.03 with Max-Age for a new one beyond any. An
    assembly is forgotten when complete, or ``timeout`` seconds after its last block (oldest first); a later block
    of a forgotten one gets 4.08."""

    def __init__(self, max_body: int, *, max_assemblies: int = DEFAULT_MAX_BLOCK1_ASSEMBLIES,
                 max_per_remote: int = DEFAULT_MAX_BLOCK1_PER_REMOTE, timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_assemblies < 1 or max_per_remote < 1:
            raise ValueError("the Block1 caps must be at least 1")
        self.max_body = max_body
        self.max_assemblies = max_assemblies
        self.max_per_remote = max_per_remote
        # plain CoAP senders (whose source addresses may be forged) share a quarter of the places: they cannot
        # crowd out the uploads of DTLS-authenticated devices
        self.max_unauthenticated = max(1, max_assemblies // 4)
        self._unauthenticated = 0
        self.timeout = TransportTuning().MAX_TRANSMIT_WAIT if timeout is None else timeout
        self._clock = clock
        self._assemblies: OrderedDict[Hashable, tuple[Message, float]] = OrderedDict()  # least recently fed first
        self._per_remote: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._assemblies)

    def feed_and_take(self, req: Message) -> Message:
        """The whole request once its last block is in (a request without Block1 as it is); else raises aiocoap's
        ``ContinueException`` (2.31) or ``IncompleteException`` (4.08), :class:`PayloadTooLargeError` (4.13) or
        :class:`Block1BusyError` (5.03)."""
        size1 = req.opt.size1
        block1 = req.opt.block1
        end = (block1.start if block1 is not None else 0) + len(req.payload)
        if (size1 is not None and size1 > self.max_body) or end > self.max_body:
            raise PayloadTooLargeError(f"request body over {self.max_body} bytes")
        if block1 is None:
            return req
        now = self._clock()
        self._expire(now)
        key = _extract_block_key(req)
        assemblies = self._assemblies
        if block1.block_number == 0:
            if key in assemblies:  # started over: the old one is moot
                self._drop(key)
            if not block1.more:
                return req
            self._admit(key)
            assemblies[key] = (req, now)
            raise ContinueException(block1)
        entry = assemblies.get(key)
        if entry is None:
            raise IncompleteException
        assembled = entry[0]
        try:
            assembled._append_request_block(req)
        except (ValueError, coap_error.Error):
            self._drop(key)  # a gap, an overlap or a block of the wrong size: the client starts over
            raise IncompleteException from None
        if block1.more:
            assemblies[key] = (assembled, now)
            assemblies.move_to_end(key)
            raise ContinueException(block1)
        self._drop(key)
        return assembled

    def _admit(self, key: Hashable) -> None:
        """Count a new assembly in, or raise :class:`Block1BusyError` when a cap is reached."""
        remote = key[0] if isinstance(key, tuple) else key
        if len(self._assemblies) >= self.max_assemblies:
            raise Block1BusyError("too many request bodies being assembled; retry later", self._retry_after())
        if self._per_remote.get(remote, 0) >= self.max_per_remote:
            raise Block1BusyError("too many request bodies being assembled from this remote; retry later",
                                  self._retry_after())
        if not _authenticated(remote):
            if self._unauthenticated >= self.max_unauthenticated:
                raise Block1BusyError("too many unauthenticated request bodies being assembled; retry later",
                                      self._retry_after())
            self._unauthenticated += 1
        self._per_remote[remote] = self._per_remote.get(remote, 0) + 1

    def _drop(self, key: Hashable) -> None:
        del self._assemblies[key]
        remote = key[0] if isinstance(key, tuple) else key
        if not _authenticated(remote):
            self._unauthenticated -= 1
        left = self._per_remote[remote] - 1
        if left:
            self._per_remote[remote] = left
        else:
            del self._per_remote[remote]

    def _expire(self, now: float) -> None:
        assemblies = self._assemblies
        while assemblies:
            key, (_, fed) = next(iter(assemblies.items()))
            if now - fed < self.timeout:
                return
            self._drop(key)

    def _retry_after(self) -> float:
        """Until the least recently fed assembly times out (at least 1 s)."""
        if not self._assemblies:
            return 1.0
        _, fed = next(iter(self._assemblies.values()))
        return max(1.0, fed + self.timeout - self._clock())


def _authenticated(remote: object) -> bool:
    """Whether ``remote`` proved who it is (a DTLS session: it has authenticated claims)."""
    return bool(getattr(remote, "authenticated_claims", None))


class ServerSite(Resource):
    """Root resource of the LwM2M server: dispatches on the first Uri-Path segment."""

    def __init__(self, registrations: RegistrationService, *, max_body: int = 16384,
                 extra: Mapping[str, Handler] | None = None,
                 endpoint_for_identity: Callable[[str], str | None] | None = None,
                 endpoint_is_bound: Callable[[str], bool] | None = None,
                 tenant_for_identity: Callable[[str], str] | None = None,
                 on_security_event: Callable[[str, dict[str, object]], None] | None = None,
                 rate_limiter: RateLimiter | None = None,
                 endpoint_limiter: RateLimiter | None = None,
                 max_block1_assemblies: int = DEFAULT_MAX_BLOCK1_ASSEMBLIES,
                 max_block1_per_remote: int = DEFAULT_MAX_BLOCK1_PER_REMOTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``endpoint_for_identity`` binds DTLS-PSK identities to endpoints: over DTLS, a device may register,
        update and de-register only as the endpoint its identity is bound to (anything else: 4.03 and a
        ``security.*`` event through ``on_security_event``). ``endpoint_is_bound`` says which endpoints hold a DTLS
        credential: those may not register over plain CoAP (4.03, ``security.unauthenticated_claim``).
        ``tenant_for_identity`` gives the tenant a DTLS identity's credential belongs to: a device registers in its
        credential's tenant (plain CoAP, and identities without one, in the default tenant).

        ``rate_limiter`` (None: unlimited) limits /rd requests per source host (``addr:<host>``) and, over DTLS,
        per PSK identity (``id:<identity>``), timed by ``clock``; excess gets 5.03 with Max-Age and a
        ``security.rate_limited`` event. ``endpoint_limiter`` (None: unlimited) does the same per endpoint
        (``ep:<tenant>/<endpoint>``: the one a Register names, or an Update's or De-register's registration), only
        once the request may act for that endpoint (so nobody else can spend a DTLS device's tokens).
        ``max_block1_*``: see :class:`BoundedBlock1Spool`."""
        super().__init__()
        self._rate_limiter = rate_limiter
        self._endpoint_limiter = endpoint_limiter
        self._clock = clock
        self._endpoint_for_identity = endpoint_for_identity
        self._endpoint_is_bound = endpoint_is_bound
        self._tenant_for_identity = tenant_for_identity
        self._on_security_event = on_security_event
        self._block1 = BoundedBlock1Spool(max_body, max_assemblies=max_block1_assemblies,
                                          max_per_remote=max_block1_per_remote, clock=clock)
        self.registrations = registrations
        self.extra: dict[str, Handler] = dict(extra or {})
        self.downloads: Any = None
        """The file server (:class:`~lwm2m_server.fota.file_server.FileServer`) whose block-wise GETs the plain-UDP
        receive path answers from the datagram (``lwm2m_server.coap.udp._answered_download``); None: none."""
        self._links: dict[str, str] = {"rd": '</rd>;rt="core.rd";ct=40'}
        self._unassembled: set[str] = set()
        self._resumed: weakref.WeakSet[object] = weakref.WeakSet()  # sessions already matched to a registration
        self._reports = ReportThrottle(REPORT_EVERY)  # rate-limit refusals: reported once per 10 s per key

    def mount(self, first_segment: str, handler: Handler, *, link: str | None = None,
              assemble_blocks: bool = True) -> None:
        """Serve every request whose path starts with ``first_segment`` by ``handler(request, rest_of_path)``.

        ``link`` is its entry in /.well-known/core (none: not listed). With ``assemble_blocks=False`` the handler
        sees each Block1/Block2 request as it comes and answers block options itself.
        """
        self.extra[first_segment] = handler
        if link is not None:
            self._links[first_segment] = link
        if not assemble_blocks:
            self._unassembled.add(first_segment)

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        path = request.opt.uri_path
        return not (path and path[0] in self._unassembled)

    async def render_to_pipe(self, pipe: Pipe) -> None:
        try:
            await interfaces.Resource._render_to_pipe(self, pipe)
        except Lwm2mError as e:  # raised by the Block1 spool, before render()
            pipe.add_response(_with_size1(error_response(e), self._block1.max_body, e), is_last=True)

    def answers_at_once(self, request: Message) -> bool:
        """The Registration interface is answered at once, without aiocoap's request machinery
        (:func:`lwm2m_server.coap.udp.dispatch`): its work is synchronous and its bodies are small."""
        path = request.opt.uri_path
        return bool(path) and path[0] == "rd"

    def answer(self, request: Message) -> Message:
        try:
            return _message(self._registration(_registration_request(request)))
        except Exception as e:
            return error_response(e)

    def answer_registration(self, request: RegistrationRequest) -> tuple[int, tuple[str, ...]]:
        """The Registration interface's answer to ``request`` read straight from a datagram
        (:mod:`lwm2m_server.coap.registration_requests`): ``(code, location path)``. Raises what
        :meth:`answer` maps to an error response (the caller maps it through :func:`error_response`)."""
        return self._registration(request)

    async def render(self, request: Message) -> Message:
        path = request.opt.uri_path
        try:
            if path and path[0] == "rd":
                return _message(self._registration(_registration_request(request)))
            self._resume_session(request.remote)
            if path == (".well-known", "core"):
                return self._resource_directory(request)
            if path:
                handler = self.extra.get(path[0])
                if handler is not None:
                    return await handler(request, path[1:])
            raise NotFoundError(f"no resource at /{'/'.join(path)}")
        except Exception as e:
            return error_response(e)

    def _resume_session(self, remote: object) -> None:
        """The first request of a DTLS session that is not a registration's (e.g. a block GET of a device that was
        pulling when this server restarted): its registration takes the session over now (see
        :meth:`RegistrationService.resume`). Checked once per session."""
        raw_identity = psk_identity(remote)
        if raw_identity is None or self._endpoint_for_identity is None:
            return
        try:
            if remote in self._resumed:
                return
            self._resumed.add(remote)
        except TypeError:  # a remote that cannot be weakly referenced is looked up every time
            pass
        identity = raw_identity.decode("utf-8", "replace")
        endpoint = self._endpoint_for_identity(identity)
        tenant = self._tenant_for_identity(identity) if self._tenant_for_identity is not None else DEFAULT_TENANT
        reg = self.registrations.by_endpoint(endpoint, tenant_id=tenant) if endpoint is not None else None
        if reg is not None and reg.identity == identity:
            self.registrations.resume(reg.id, address=remote_address(remote), remote=remote)

    def _refuse(self, kind: str, request: RegistrationRequest, **data: object) -> None:
        """Log a security event (no secrets: identities and endpoint names only) and answer 4.03."""
        data["address"] = remote_address(request.remote)
        log.warning("%s: %s", kind, data)
        if self._on_security_event is not None:
            self._on_security_event(kind, data)
        raise IdentityMismatchError("this identity may not act for that endpoint")

    def _check_rate(self, request: RegistrationRequest, identity: str | None) -> None:
        """Raise :class:`RateLimitedError` (after a ``security.rate_limited`` event) when the source host or the
        PSK identity is over its rate. The host is checked first; a refused request takes no identity token."""
        limiter = self._rate_limiter
        if limiter is None:
            return
        keys = [("address", "addr:" + remote_host(request.remote))]
        if identity is not None:
            keys.append(("identity", "id:" + identity))
        self._take(limiter, keys, request, identity)

    def _check_endpoint_rate(self, request: RegistrationRequest, identity: str | None, tenant_id: str,
                             endpoint: str) -> None:
        if self._endpoint_limiter is not None:
            self._take(self._endpoint_limiter, [("endpoint", f"ep:{tenant_id}/{endpoint}")], request, identity,
                       endpoint=endpoint)

    def _take(self, limiter: RateLimiter, keys: list[tuple[str, str]], request: RegistrationRequest,
              identity: str | None,
              endpoint: str | None = None) -> None:
        now = self._clock()
        for kind, key in keys:
            wait = limiter.allow(key, now)
            if wait is not None:
                data: dict[str, object] = {"address": remote_address(request.remote), "limited_by": kind,
                                           "retry_after": round(wait, 3)}
                if identity is not None:
                    data["identity"] = identity
                if endpoint is not None:
                    data["endpoint"] = endpoint
                held = self._reports.due(key, now)
                if held is not None:
                    if held:
                        data["held_back"] = held
                    log.warning("security.rate_limited: %s", data)
                    if self._on_security_event is not None:
                        self._on_security_event("security.rate_limited", data)
                raise RateLimitedError("too many registration requests; retry later", wait)

    def _resource_directory(self, request: Message) -> Message:
        """RFC 6690 discovery: the registration interface and every mounted resource that asked to be listed."""
        if request.code != Code.GET:
            raise MethodNotAllowedError("/.well-known/core takes GET")
        payload = ",".join(self._links.values()).encode()
        return Message(code=Code.CONTENT, payload=payload, content_format=int(ContentFormat.LINK))

    def _registration(self, request: RegistrationRequest) -> tuple[int, tuple[str, ...]]:
        """Register (POST /rd), Update (POST /rd/{id}) and De-register (DELETE /rd/{id}): ``(code, location)``."""
        rest = request.path[1:]
        raw_identity = psk_identity(request.remote)
        identity = raw_identity.decode("utf-8", "replace") if raw_identity is not None else None
        self._check_rate(request, identity)
        cf = request.content_format
        if cf is not None and cf != ContentFormat.LINK and request.payload:
            raise UnsupportedContentFormatError(f"registration payload must be link format (40), not {cf}")
        query = request.query
        if not rest:
            if request.code != Code.POST:
                raise MethodNotAllowedError("the registration resource takes POST")
            params = parse_register(query, request.payload)
            if identity is not None:
                bound = self._endpoint_for_identity(identity) if self._endpoint_for_identity else None
                if bound != params.endpoint:
                    self._refuse("security.identity_mismatch", request, identity=identity,
                                 claimed=params.endpoint)
            elif self._endpoint_is_bound is not None and self._endpoint_is_bound(params.endpoint):
                # plain CoAP (--insecure) may not register an endpoint that has a DTLS credential
                self._refuse("security.unauthenticated_claim", request, claimed=params.endpoint)
            tenant = DEFAULT_TENANT
            if identity is not None and self._tenant_for_identity is not None:
                tenant = self._tenant_for_identity(identity)
            self._check_endpoint_rate(request, identity, tenant, params.endpoint)
            reg = self.registrations.register(
                params, address=remote_address(request.remote), remote=request.remote,
                secure=identity is not None, identity=identity, tenant_id=tenant)
            return int(Code.CREATED), ("rd", reg.id)
        if len(rest) != 1:
            raise NotFoundError("no such registration")
        reg_id = rest[0]
        current = self.registrations.get(reg_id)
        if current is not None and (current.secure or identity is not None) and current.identity != identity:
            self._refuse("security.session_mismatch", request, identity=identity, endpoint=current.endpoint)
        if current is not None:
            self._check_endpoint_rate(request, identity, current.tenant_id, current.endpoint)
        if request.code == Code.POST:
            self.registrations.update(reg_id, parse_update(query, request.payload),
                                      address=remote_address(request.remote), remote=request.remote)
            return int(Code.CHANGED), ()
        if request.code == Code.DELETE:
            self.registrations.deregister(reg_id)
            return int(Code.DELETED), ()
        raise MethodNotAllowedError("a registration takes POST (Update) or DELETE (De-register)")


def _registration_request(message: Message) -> RegistrationRequest:
    """A request of the general path (aiocoap's Message, a Block1 body assembled) as the Registration interface
    reads it."""
    opt, cf = message.opt, message.opt.content_format
    return RegistrationRequest(int(message.mtype) if message.mtype is not None else CON, message.mid or 0,
                               message.token, int(message.code), tuple(opt.uri_path), tuple(opt.uri_query),
                               None if cf is None else int(cf), message.payload, message.remote)


def _message(answer: tuple[int, tuple[str, ...]]) -> Message:
    code, location = answer
    return Message(code=Code(code), location_path=location) if location else Message(code=Code(code))


class IdentityMismatchError(SecurityError):
    """A request whose DTLS identity is not the one its endpoint or registration is bound to (4.03)."""


def _with_size1(msg: Message, max_body: int, exc: Exception) -> Message:
    if isinstance(exc, PayloadTooLargeError):
        msg.opt.size1 = max_body
    return msg
