"""The one place where errors become CoAP responses."""

from __future__ import annotations

import logging

from aiocoap import Message
from aiocoap.numbers.codes import Code

from lwm2m_server.core.errors import CoapCode, Lwm2mError
from lwm2m_server.core.rate_limit import RateLimitedError

log = logging.getLogger(__name__)

MAX_DIAGNOSTIC = 120  # bytes of diagnostic payload (RFC 7252 5.5.2); never carries secrets


def error_response(exc: Exception) -> Message:
    """Map any exception to a response: our errors by their ``coap_code``, anything else to 5.00 (and logged); a
    refusal to retry later (:class:`RateLimitedError`) says when in Max-Age."""
    if isinstance(exc, Lwm2mError):
        code = exc.coap_code
        text = str(exc)
    else:
        log.exception("unexpected error while handling a request")
        code, text = CoapCode.INTERNAL_SERVER_ERROR, "internal error"
    response = Message(code=Code(int(code)), payload=text.encode("utf-8", "replace")[:MAX_DIAGNOSTIC])
    if isinstance(exc, RateLimitedError):
        response.opt.max_age = exc.max_age
    return response


def coap_code(code: CoapCode) -> Code:
    return Code(int(code))
