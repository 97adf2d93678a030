"""The LwM2M bootstrap server: DTLS-PSK with factory credentials in, a fresh LwM2M-server PSK per device out.

A device opens a DTLS session with its bootstrap PSK (issued by ``scratch factory provision``) and asks:

* ``POST /bs?ep=EP[&pct=CF]`` (LwM2M 1.1 client-initiated bootstrap): answered 2.04, then the server runs the
  :class:`~bootstrap.sequence.BootstrapSequence` over the same session (Discover, Delete, Write /0 and /1,
  Read /1, Finish);
* ``GET /bspack?ep=EP`` (LwM2M 1.2 Bootstrap-Pack-Request): answered 2.05 with the whole configuration.

Invariants:

- a request is served only when its PSK identity is an active *bootstrap* credential bound to the ``ep`` it
  names; anything else gets 4.03 and a ``security.*`` event (no key material in it);
- every bootstrap issues a fresh server PSK (``secrets``, 16 bytes, never reused: the store refuses a PSK it has
  issued before) and retires the device's previous one in the same transaction; a bootstrap that fails after that
  revokes the new one too, so no half-delivered key stays usable. The one exception is a Bootstrap-Finish left
  unanswered: the device may have applied its configuration and be using the key, so the key stays and the
  bootstrap is counted ``unconfirmed`` (``bootstrap.unconfirmed``); a device that did not get Finish bootstraps
  again, which retires it;
- at most one bootstrap runs per endpoint (a new request from the device replaces its running one) and at most
  ``max_sessions`` at all (5.03 beyond); each is bounded by ``session_timeout``;
- /bs and /bspack are rate limited (on by default) per source address and per identity (``rate``/``burst``,
  generous: a fleet behind one address bootstraps at once), and per identity alone (``identity_rate``/
  ``identity_burst``: a device bootstraps rarely, each bootstrap issues a key and writes the store): 5.03 with
  Max-Age beyond;
- PSKs go only into request payloads over DTLS; no log line, event, exception or ``repr`` carries one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiocoap import Context, Message
from aiocoap import error as coap_error
from aiocoap.numbers.codes import Code
from aiocoap.resource import Resource

from bootstrap.credentials import DEFAULT_TENANT, Credential, CredentialKind, CredentialStore, IssuedCredential
from bootstrap.sequence import (
    BootstrapOutcome,
    BootstrapRequest,
    BootstrapSequence,
    DeviceConfig,
    Step,
    bootstrap_pack,
    pack_format,
)
from lwm2m_server.coap.dtls import add_dtls_server, dtls_server_context, dtls_transport, psk_identity
from lwm2m_server.coap.remotes import remote_address, remote_host
from lwm2m_server.coap.requests import exchange
from lwm2m_server.coap.responses import error_response
from lwm2m_server.coap.udp import exclusive_context, release
from lwm2m_server.core.errors import (
    CoapCode,
    InvalidRequestError,
    Lwm2mError,
    MethodNotAllowedError,
    NotFoundError,
    RequestTimeoutError,
    SecurityError,
)
from lwm2m_server.core.model import ObjectModel
from lwm2m_server.core.rate_limit import Lockout, RateLimitedError, RateLimiter, ReportThrottle

__all__ = ["BootstrapServer", "BootstrapSettings", "BootstrapStats"]

log = logging.getLogger(__name__)

_METHODS = {"GET": Code.GET, "PUT": Code.PUT, "POST": Code.POST, "DELETE": Code.DELETE}
SecurityEventSink = Callable[[str, dict[str, object]], None]


class BootstrapRefusedError(SecurityError):
    """A bootstrap request whose PSK identity may not bootstrap the endpoint it names (4.03)."""


class TooManyBootstrapsError(Lwm2mError):
    """More bootstraps in progress than the server runs at once (5.03)."""

    coap_code = CoapCode.SERVICE_UNAVAILABLE


class _NoAnswerError(Exception):
    """One request to the device went unanswered for ``request_timeout``."""


@dataclass
class BootstrapSettings:
    server_uri: str  # the LwM2M server devices are sent to (coaps://HOST:PORT)
    coaps_host: str = "127.0.0.1"
    coaps_port: int = 5784  # 0: any free port
    lifetime: int = 300
    binding: str = "U"
    short_server_id: int = 1
    request_timeout: float = 10.0  # per request to the device (CoAP retransmissions included)
    session_timeout: float = 60.0  # a whole bootstrap
    max_sessions: int = 1000
    rate: float | None = 100.0  # /bs and /bspack requests per second per source host and per identity (None/0: off)
    burst: int = 2000  # ... with this burst: 1,000 devices behind one address (NAT, loopback) bootstrap at once
    identity_rate: float | None = 0.2  # /bs and /bspack requests per second per PSK identity alone (None/0: off)
    identity_burst: int = 20
    idle_timeout: float = 120.0  # DTLS sessions: devices leave once bootstrapped
    max_peers: int = 10000
    coap_host: str = "127.0.0.1"
    coap_port: int | None = None  # plain CoAP (INSECURE: keys in clear text, endpoint names unauthenticated)
    lockout_failures: int = 10  # failed handshakes of one identity (or unknown ones from one address) ... (0: off)
    lockout_window: float = 60.0
    lockout_seconds: float = 300.0  # ... get it ignored this long
    credential_poll_interval: float = 1.0  # how often revocations made elsewhere are looked for
    credential_poll_margin: float = 60.0  # each look reaches this far back (late commits, clock skew)


@dataclass
class BootstrapStats:
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    unconfirmed: int = 0  # Bootstrap-Finish sent, no answer: the issued key was kept
    packs: int = 0
    refused: int = 0


class BootstrapServer:
    """Serves /bs and /bspack over DTLS-PSK; see the module docstring for the invariants."""

    def __init__(self, settings: BootstrapSettings, credentials: CredentialStore, *,
                 model: ObjectModel | None = None, on_event: SecurityEventSink | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not settings.server_uri.startswith(("coaps://", "coap://")):
            raise ValueError("the LwM2M server URI must be coaps://HOST:PORT (or coap:// for an insecure setup)")
        self.settings = settings
        self.credentials = credentials
        self.model = model if model is not None else ObjectModel.default()
        self.stats = BootstrapStats()
        self.context: Context | None = None
        self.coaps_port = 0
        self.coap_port = 0
        self._on_event = on_event
        self._clock = clock
        self._limiter = RateLimiter(settings.rate, settings.burst) if settings.rate else None
        self._identity_limiter = (RateLimiter(settings.identity_rate, settings.identity_burst)
                                  if settings.identity_rate else None)
        self._reports = ReportThrottle()  # rate-limit refusals: reported once per 10 s per key
        self._sessions: dict[tuple[str, str], asyncio.Task[BootstrapOutcome]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self.outcomes: asyncio.Queue[tuple[str, BootstrapOutcome]] | None = None  # for tests and the CLI

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        site = _BootstrapResource(self)
        dtls: dict[str, Any] = {
            "psk_for": self._psk_for, "idle_timeout": s.idle_timeout, "max_peers": s.max_peers,
            "on_security_event": self._event,
            "lockout": (Lockout(s.lockout_failures, s.lockout_window, s.lockout_seconds)
                        if s.lockout_failures > 0 else None)}
        if s.coap_port is None:
            self.context, self.coaps_port = await dtls_server_context(site, s.coaps_host, s.coaps_port, **dtls)
        else:
            log.warning("the bootstrap server also serves plain CoAP on %s:%d: keys go out in clear text to "
                        "anyone who names an endpoint", s.coap_host, s.coap_port)
            self.context, self.coap_port = await exclusive_context(site, s.coap_host, s.coap_port)
            try:
                _, self.coaps_port = await add_dtls_server(self.context, s.coaps_host, s.coaps_port, **dtls)
            except OSError:
                await self.context.shutdown()
                release(s.coap_host, self.coap_port)
                self.context = None
                raise
        if hasattr(self.credentials, "revoked_since"):
            self._watcher = asyncio.get_running_loop().create_task(self._watch_revocations(self._clock()),
                                                                   name="bootstrap-revocations")
        log.info("bootstrap server on %s, sending devices to %s", self.coaps_uri, s.server_uri)

    async def _watch_revocations(self, started: float) -> None:
        """Act on bootstrap credentials revoked by another process (``scratch factory revoke``): their sessions
        end and their running bootstraps stop. Each look reaches ``credential_poll_margin`` s back; ``handled``
        makes each revocation acted on once."""
        s = self.settings
        cursor, handled = started - s.credential_poll_margin, set[str]()
        while True:
            await asyncio.sleep(s.credential_poll_interval)
            now = self._clock()
            try:
                revoked = await asyncio.to_thread(self.credentials.revoked_since, cursor)
            except Exception as e:
                log.warning("cannot read revoked credentials (%s: %s)", type(e).__name__, e)
                continue
            for credential in revoked:
                if credential.kind is not CredentialKind.BOOTSTRAP or credential.identity in handled:
                    continue
                handled.add(credential.identity)
                running = self._sessions.get((credential.tenant_id, credential.endpoint))
                if running is not None:
                    running.cancel()
                closed = self.evict_identity(credential.identity)
                self._event("security.credential_revoked", {
                    "endpoint": credential.endpoint, "tenant": credential.tenant_id,
                    "identity": credential.identity, "kind": "bootstrap", "sessions_closed": closed})
            cursor = now - s.credential_poll_margin

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for task in list(self._sessions.values()):
            task.cancel()
        for task in list(self._sessions.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._sessions.clear()
        if self.context is not None:
            await self.context.shutdown()
            self.context = None
            if self.coap_port:
                release(self.settings.coap_host, self.coap_port)

    @property
    def coaps_uri(self) -> str:
        host = self.settings.coaps_host
        return f"coaps://{f'[{host}]' if ':' in host else host}:{self.coaps_port}"

    @property
    def running(self) -> int:
        """Bootstraps in progress."""
        return len(self._sessions)

    async def wait_idle(self) -> None:
        """Return once no bootstrap is in progress."""
        while self._sessions:
            await asyncio.gather(*self._sessions.values(), return_exceptions=True)

    # ------------------------------------------------------------------ credentials

    def _psk_for(self, identity: bytes) -> bytes | None:
        """The handshake's key lookup: only active bootstrap credentials open this server."""
        credential = self.credentials.credential_for(identity)
        if credential is None or credential.revoked or credential.kind is not CredentialKind.BOOTSTRAP:
            return None
        return self.credentials.psk_for(identity)

    def _event(self, kind: str, data: dict[str, object]) -> None:
        (log.warning if kind.startswith("security.") else log.info)("%s: %s", kind, data)
        if self._on_event is not None:
            self._on_event(kind, data)

    # ------------------------------------------------------------------ requests from devices

    def _authorise(self, request: Message) -> tuple[Credential, str]:
        """The bootstrap credential of the request and the endpoint it names; refuses everything else."""
        raw = psk_identity(request.remote)
        identity = raw.decode("utf-8", "replace") if raw is not None else None
        self._check_rate(request, identity)
        endpoints = [q[3:] for q in request.opt.uri_query if q.startswith("ep=")]
        if len(endpoints) != 1 or not endpoints[0]:
            raise InvalidRequestError("a bootstrap request names its endpoint once: ?ep=NAME")
        endpoint = endpoints[0]
        if identity is not None:
            credential = self.credentials.credential_for(identity)
        elif self.settings.coap_port is not None:  # --insecure: the endpoint name is all there is, and plain CoAP
            # has no credential to name a tenant: the default tenant's (as the LwM2M server's plain-CoAP devices)
            credential = self.credentials.by_endpoint(endpoint, CredentialKind.BOOTSTRAP, tenant_id=DEFAULT_TENANT)
        else:
            credential = None
        if (credential is None or credential.revoked or credential.kind is not CredentialKind.BOOTSTRAP
                or credential.endpoint != endpoint):
            self.stats.refused += 1
            self._event("security.bootstrap_refused", {
                "address": remote_address(request.remote), "identity": identity, "claimed": endpoint,
                "why": "no DTLS identity" if identity is None else "identity not bound to this endpoint"})
            raise BootstrapRefusedError("this identity may not bootstrap that endpoint")
        return credential, endpoint

    def _check_rate(self, request: Message, identity: str | None) -> None:
        now = self._clock()
        checks: list[tuple[RateLimiter, str, str]] = []
        if self._limiter is not None:
            checks.append((self._limiter, "address", "addr:" + remote_host(request.remote)))
            if identity is not None:
                checks.append((self._limiter, "identity", "id:" + identity))
        if self._identity_limiter is not None and identity is not None:
            checks.append((self._identity_limiter, "identity", "id:" + identity))
        for limiter, kind, key in checks:
            wait = limiter.allow(key, now)
            if wait is not None:
                held = self._reports.due(key, now)
                if held is not None:  # reported once per 10 s per key, with the count held back
                    data: dict[str, object] = {"address": remote_address(request.remote), "limited_by": kind,
                                               "retry_after": round(wait, 3), "identity": identity}
                    if held:
                        data["held_back"] = held
                    self._event("security.rate_limited", data)
                raise RateLimitedError("too many bootstrap requests; retry later", wait)

    def _issue_server_key(self, bootstrap: Credential) -> IssuedCredential:
        """A fresh server credential for the device (its previous one, if any, retired in the same write)."""
        store, now, tenant = self.credentials, self._clock(), bootstrap.tenant_id  # the bootstrap credential's tenant
        if store.by_endpoint(bootstrap.endpoint, CredentialKind.SERVER, tenant_id=tenant) is not None:
            return store.replace(bootstrap.endpoint, CredentialKind.SERVER, now=now, tenant_id=tenant)
        return store.issue(bootstrap.endpoint, CredentialKind.SERVER, now=now, tenant_id=tenant)

    def _config(self, bootstrap: Credential, issued: IssuedCredential) -> DeviceConfig:
        bootstrap_psk = self.credentials.psk_for(bootstrap.identity)
        if bootstrap_psk is None:  # revoked between the handshake and now
            raise BootstrapRefusedError("the bootstrap credential was revoked")
        s = self.settings
        return DeviceConfig(
            bootstrap_uri=self.coaps_uri, bootstrap_identity=bootstrap.identity, bootstrap_psk=bytes(bootstrap_psk),
            server_uri=s.server_uri, server_identity=issued.credential.identity, server_psk=bytes(issued.psk),
            short_server_id=s.short_server_id, lifetime=s.lifetime, binding=s.binding)

    def request_bootstrap(self, request: Message) -> Message:
        """POST /bs: accept, then run the sequence over the device's session."""
        credential, endpoint = self._authorise(request)
        key = (credential.tenant_id, endpoint)
        running = self._sessions.get(key)
        if running is not None:  # the device started over: its old bootstrap is moot
            running.cancel()
        elif len(self._sessions) >= self.settings.max_sessions:
            raise TooManyBootstrapsError("too many bootstraps in progress; retry later")
        pct = [q[4:] for q in request.opt.uri_query if q.startswith("pct=")]
        preferred = int(pct[0]) if pct and pct[0].isdigit() else None
        task = asyncio.get_running_loop().create_task(
            self._bootstrap(credential, request.remote, preferred), name=f"bootstrap-{endpoint}")
        self._sessions[key] = task
        task.add_done_callback(lambda t: self._sessions.pop(key, None) if self._sessions.get(key) is t else None)
        self.stats.started += 1
        return Message(code=Code.CHANGED)

    def bootstrap_pack(self, request: Message) -> Message:
        """GET /bspack: the whole configuration in one answer (no Finish follows)."""
        credential, endpoint = self._authorise(request)
        accept = request.opt.accept
        fmt = pack_format(None if accept is None else int(accept))  # before a key is issued: a 4.06 changes nothing
        issued = self._issue_server_key(credential)
        try:
            payload = bootstrap_pack(self._config(credential, issued), fmt, self.model)
        except Exception:
            self.credentials.revoke(endpoint, now=self._clock(), tenant_id=credential.tenant_id,
                                    kind=CredentialKind.SERVER)
            raise
        self.stats.packs += 1
        self.stats.succeeded += 1
        self._event("bootstrap.finished", {"endpoint": endpoint, "tenant": credential.tenant_id,
                                           "server_identity": issued.credential.identity, "pack": True})
        return Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))

    # ------------------------------------------------------------------ one bootstrap

    async def _bootstrap(self, credential: Credential, remote: Any, preferred: int | None) -> BootstrapOutcome:
        endpoint, tenant = credential.endpoint, credential.tenant_id
        await asyncio.sleep(0)  # let the 2.04 to /bs go out first
        issued: IssuedCredential | None = None
        sequence: BootstrapSequence | None = None
        try:
            async with asyncio.timeout(self.settings.session_timeout):
                issued = self._issue_server_key(credential)
                sequence = BootstrapSequence(self._config(credential, issued), self.model, content_format=preferred)
                step: BootstrapRequest | BootstrapOutcome = sequence.first()
                while isinstance(step, BootstrapRequest):
                    code, payload, cf = await self._send(step, remote)
                    step = sequence.handle(code, payload, cf)
                outcome = step
        except TimeoutError:
            outcome = self._end(sequence, "the bootstrap took longer than "
                                          f"{self.settings.session_timeout:g} s")
        except asyncio.CancelledError:
            outcome = self._end(sequence, "replaced by a new bootstrap request or the server stopped")
            self._finished(endpoint, tenant, issued, outcome)
            raise
        except _NoAnswerError as e:
            outcome = self._end(sequence, f"the device did not answer: {e}")
        except (coap_error.Error, Lwm2mError) as e:
            outcome = self._end(sequence, f"the device did not answer: {type(e).__name__}")
        self._finished(endpoint, tenant, issued, outcome)
        return outcome

    @staticmethod
    def _end(sequence: BootstrapSequence | None, reason: str) -> BootstrapOutcome:
        return sequence.failed(reason) if sequence is not None else BootstrapOutcome(False, reason=reason)

    def _finished(self, endpoint: str, tenant: str, issued: IssuedCredential | None,
                  outcome: BootstrapOutcome) -> None:
        data: dict[str, object] = {"endpoint": endpoint, "tenant": tenant}
        if outcome.success:
            self.stats.succeeded += 1
            assert issued is not None
            data.update(server_identity=issued.credential.identity, lwm2m_version=outcome.lwm2m_version)
            if outcome.notes:
                data["refused_steps"] = list(outcome.notes)
            self._event("bootstrap.finished", data)
        elif outcome.step is Step.FINISH and outcome.code is None and issued is not None:
            # Finish went out and no answer came back (lost, or the device closed its bootstrap session at once):
            # the device may be using the key, so revoking it would lock a configured device out until it
            # bootstraps again; a device that did not get Finish bootstraps again anyway, which retires the key
            self.stats.unconfirmed += 1
            data.update(server_identity=issued.credential.identity, reason=outcome.reason)
            self._event("bootstrap.unconfirmed", data)
        else:
            self.stats.failed += 1
            if issued is not None:  # the device did not get Finish: it bootstraps again and never uses this key
                with contextlib.suppress(Lwm2mError):
                    self.credentials.revoke(endpoint, now=self._clock(), tenant_id=tenant,
                                            kind=CredentialKind.SERVER)
            data.update(step=outcome.step.value if outcome.step else None, code=outcome.code, reason=outcome.reason)
            self._event("bootstrap.failed", data)
        if self.outcomes is not None:
            self.outcomes.put_nowait((endpoint, outcome))

    async def _send(self, step: BootstrapRequest, remote: Any) -> tuple[int, bytes, int | None]:
        assert self.context is not None
        message = Message(code=_METHODS[step.method], uri_path=step.uri_path, payload=step.payload)
        if step.content_format is not None:
            message.opt.content_format = step.content_format
        if step.accept is not None:
            message.opt.accept = step.accept
        message.remote = remote
        timeout = self.settings.request_timeout
        try:
            response = await exchange(self.context, message, remote_address(remote), timeout)
        except RequestTimeoutError:  # not the session's own timeout: say which it was
            raise _NoAnswerError(f"no answer within {timeout:g} s") from None
        cf = response.opt.content_format
        return int(response.code), response.payload, None if cf is None else int(cf)

    # ------------------------------------------------------------------ transport access

    def evict_identity(self, identity: str) -> int:
        """Drop the DTLS sessions of ``identity`` (after its credential was revoked)."""
        if self.context is None:
            return 0
        return dtls_transport(self.context).evict_identity(identity.encode())


class _BootstrapResource(Resource):
    """/bs and /bspack; everything else is 4.04."""

    def __init__(self, server: BootstrapServer) -> None:
        super().__init__()
        self._server = server

    async def render(self, request: Message) -> Message:
        path = request.opt.uri_path
        try:
            if path == ("bs",):
                if request.code != Code.POST:
                    raise MethodNotAllowedError("/bs takes POST")
                return self._server.request_bootstrap(request)
            if path == ("bspack",):
                if request.code != Code.GET:
                    raise MethodNotAllowedError("/bspack takes GET")
                return self._server.bootstrap_pack(request)
            raise NotFoundError(f"no resource at /{'/'.join(path)}")
        except Exception as e:
            return error_response(e)

    def get_link_description(self) -> None:
        return None
