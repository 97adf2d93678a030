"""The one place where errors become CoAP responses."""

from __future__ import annotations

import logging

from aiocoap import Message
from aiocoap.numbers.codes import Code

from lwm2m_server.core.errors import CoapCode, Lwm2mError

log = logging.getLogger(__name__)

MAX_DIAGNOSTIC = 120  # bytes of diagnostic payload (RFC 7252 5.5.2); never carries secrets


def error_response(exc: Exception) -> Message:
    """Map any exception to a response: our errors by their ``coap_code``, anything else to 5.00 (and logged)."""
    if isinstance(exc, Lwm2mError):
        code = exc.coap_code
        text = str(exc)
    else:
        log.exception("unexpected error while handling a request")
        code, text = CoapCode.INTERNAL_SERVER_ERROR, "internal error"
    return Message(code=Code(int(code)), payload=text.encode("utf-8", "replace")[:MAX_DIAGNOSTIC])


def coap_code(code: CoapCode) -> Code:
    return Code(int(code))
