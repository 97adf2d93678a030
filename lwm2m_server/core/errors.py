"""The LwM2M error tree. Every protocol error knows the CoAP response code it maps to.

CoAP codes are the RFC 7252 numeric codes (class << 5 | detail), so a transport converts them without a table.
"""

from __future__ import annotations

from enum import IntEnum


class CoapCode(IntEnum):
    """CoAP response codes used by LwM2M (RFC 7252 section 12.1.2)."""

    CREATED = 0x41
    DELETED = 0x42
    VALID = 0x43
    CHANGED = 0x44
    CONTENT = 0x45
    CONTINUE = 0x5F
    BAD_REQUEST = 0x80
    UNAUTHORIZED = 0x81
    BAD_OPTION = 0x82
    FORBIDDEN = 0x83
    NOT_FOUND = 0x84
    METHOD_NOT_ALLOWED = 0x85
    NOT_ACCEPTABLE = 0x86
    REQUEST_ENTITY_INCOMPLETE = 0x88
    CONFLICT = 0x89
    PRECONDITION_FAILED = 0x8C
    REQUEST_ENTITY_TOO_LARGE = 0x8D
    UNSUPPORTED_CONTENT_FORMAT = 0x8F
    INTERNAL_SERVER_ERROR = 0xA0
    NOT_IMPLEMENTED = 0xA1
    SERVICE_UNAVAILABLE = 0xA3
    GATEWAY_TIMEOUT = 0xA4

    @property
    def dotted(self) -> str:
        """The code as CoAP writes it, e.g. ``4.04``."""
        return f"{self >> 5}.{self & 0x1F:02d}"

    @property
    def is_success(self) -> bool:
        return (self >> 5) == 2


def dotted_code(code: int) -> str:
    """Format any numeric CoAP code as ``c.dd`` (also codes this enum does not name)."""
    return f"{code >> 5}.{code & 0x1F:02d}"


class Lwm2mError(Exception):
    """Root of the LwM2M error tree; ``coap_code`` is the response this error maps to."""

    coap_code: CoapCode = CoapCode.INTERNAL_SERVER_ERROR


class InvalidPathError(Lwm2mError, ValueError):
    """A path that is not /O[/I[/R[/RI]]] with ids in 0..65535."""

    coap_code = CoapCode.BAD_REQUEST


class ModelError(Lwm2mError):
    """An object definition that is malformed or missing, or a value that does not fit its definition."""

    coap_code = CoapCode.NOT_FOUND


class InvalidRequestError(Lwm2mError, ValueError):
    """A request that cannot be made as asked (wrong path level for the operation, bad attribute...)."""

    coap_code = CoapCode.BAD_REQUEST


class NotFoundError(Lwm2mError):
    """No resource (CoAP) or no object, instance or resource (LwM2M) at the requested path."""

    coap_code = CoapCode.NOT_FOUND


class MethodNotAllowedError(Lwm2mError):
    """The target exists but does not take this method or operation."""

    coap_code = CoapCode.METHOD_NOT_ALLOWED


class NotAcceptableError(Lwm2mError):
    """The requested content format (Accept) cannot represent the target."""

    coap_code = CoapCode.NOT_ACCEPTABLE


class UnauthorizedError(Lwm2mError):
    """The requester may not access the target at all."""

    coap_code = CoapCode.UNAUTHORIZED


class CodecError(Lwm2mError):
    """A payload that cannot be encoded or decoded."""

    coap_code = CoapCode.BAD_REQUEST


class UnsupportedContentFormatError(CodecError):
    coap_code = CoapCode.UNSUPPORTED_CONTENT_FORMAT


class MalformedPayloadError(CodecError):
    coap_code = CoapCode.BAD_REQUEST


class RequestFailedError(Lwm2mError):
    """A downlink request to a device that did not succeed."""

    coap_code = CoapCode.GATEWAY_TIMEOUT


class RequestTimeoutError(RequestFailedError):
    coap_code = CoapCode.GATEWAY_TIMEOUT


class ClientSleepingError(RequestFailedError):
    """The device is in queue mode and not awake; the request was not sent."""

    coap_code = CoapCode.SERVICE_UNAVAILABLE


class ErrorResponseError(RequestFailedError):
    """The device answered with an error code; ``code`` is that numeric CoAP code."""

    def __init__(self, code: int, message: str = "") -> None:
        self.code = code
        super().__init__(f"device answered {dotted_code(code)}" + (f": {message}" if message else ""))

    @property
    def coap_code(self) -> CoapCode:  # type: ignore[override]
        try:
            return CoapCode(self.code)
        except ValueError:
            return CoapCode.BAD_REQUEST if (self.code >> 5) == 4 else CoapCode.INTERNAL_SERVER_ERROR


class RegistrationError(Lwm2mError):
    """A Register/Update/De-register that cannot be accepted as sent."""

    coap_code = CoapCode.BAD_REQUEST


class UnknownRegistrationError(RegistrationError):
    coap_code = CoapCode.NOT_FOUND


class UnknownEndpointError(Lwm2mError):
    """No device is registered under that endpoint name."""

    coap_code = CoapCode.NOT_FOUND


class SecurityError(Lwm2mError):
    coap_code = CoapCode.FORBIDDEN


class StorageError(Lwm2mError):
    coap_code = CoapCode.INTERNAL_SERVER_ERROR
