"""Sign-in state of a browser: the session cookie, the CSRF token, the throttle of failed sign-ins.

Invariants:

- the session cookie (``scratch_session``) is HttpOnly, SameSite=Strict, Path=/ and Secure, except over plain http
  to a loopback address (a browser drops a Secure cookie there, and nothing leaves the machine); it holds a random
  secret whose SHA-256 alone is stored (:meth:`TenancyService.sign_in`);
- every state-changing form carries the session's CSRF token (synchronizer pattern), the sign-in form a double-submit
  token (cookie ``scratch_csrf`` = hidden field); a POST without the right one gets 403 and changes nothing;
- failed sign-ins are throttled per client address and per login (10 at once, then one every 2 s: 429);
- a page that needs a session redirects to the sign-in page; a role that may not do something does not see its
  control, and its route refuses it anyway (403).
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from lwm2m_server.core.errors import CoapCode, Lwm2mError
from lwm2m_server.core.rate_limit import RateLimiter
from lwm2m_server.tenancy.model import Action, Principal, authorize
from lwm2m_server.tenancy.service import SESSION_HOURS, TenancyService
from lwm2m_server.tenancy.stores import SessionRecord

__all__ = ["CSRF_COOKIE", "SESSION_COOKIE", "CsrfError", "SignInThrottle", "WebCaller", "secure_cookies",
           "set_session_cookie"]

SESSION_COOKIE = "scratch_session"
CSRF_COOKIE = "scratch_csrf"


class CsrfError(Lwm2mError):
    """A state-changing form without the right CSRF token."""

    coap_code = CoapCode.FORBIDDEN


class NotSignedInError(Exception):
    """The request has no live session: the page redirects to the sign-in form."""


@dataclass(frozen=True, slots=True)
class WebCaller:
    principal: Principal
    session: SessionRecord
    login: str

    def may(self, action: Action) -> bool:
        return self.principal.may(action)

    def require(self, action: Action) -> None:
        authorize(self.principal, action)

    def check_csrf(self, given: str | None) -> None:
        if not given or not hmac.compare_digest(given.encode(), self.session.csrf.encode()):
            raise CsrfError("this form has no valid CSRF token: reload the page and try again")


def secure_cookies(request: Request) -> bool:
    """Secure cookies, unless plain http to a loopback address."""
    if request.url.scheme == "https":
        return True
    try:
        return not ipaddress.ip_address(request.url.hostname or "").is_loopback
    except ValueError:
        return (request.url.hostname or "") != "localhost"


def set_session_cookie(response: Response, request: Request, secret: str) -> None:
    response.set_cookie(SESSION_COOKIE, secret, max_age=int(SESSION_HOURS * 3600), path="/", httponly=True,
                        samesite="strict", secure=secure_cookies(request))


def set_csrf_cookie(response: Response, request: Request, token: str) -> None:
    """The sign-in form's double-submit token (the form carries the same value)."""
    response.set_cookie(CSRF_COOKIE, token, max_age=3600, path="/ui", httponly=True, samesite="strict",
                        secure=secure_cookies(request))


def caller_of(request: Request, tenancy: TenancyService) -> WebCaller:
    """The signed-in caller, or :class:`NotSignedInError`."""
    found = tenancy.session(request.cookies.get(SESSION_COOKIE, ""))
    if found is None or not found[1].csrf:  # no session, or a one-time link's secret used as a cookie
        raise NotSignedInError
    principal, session = found
    return WebCaller(principal, session, principal.subject.removeprefix("user:"))


class SignInThrottle:
    """Failed sign-ins, per client address and per login: a burst, then a steady rate; past them 429."""

    def __init__(self, rate: float = 0.5, burst: int = 10, clock: Any = time.monotonic) -> None:
        self._limiter = RateLimiter(rate, burst)
        self._clock = clock

    def wait(self, address: str, login: str) -> float | None:
        """Seconds to wait before another try (None: go on). Counts the failure it is asked about."""
        now = self._clock()
        waits = [self._limiter.allow(f"addr:{address}", now), self._limiter.allow(f"login:{login[:128]}", now)]
        return max((w for w in waits if w is not None), default=None)
