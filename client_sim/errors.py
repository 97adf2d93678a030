"""Errors a simulated device answers with. Each is a core error (so the transport maps it the same way) and
carries the CoAP code the LwM2M Core specification gives for the failure.
"""

from __future__ import annotations

from lwm2m_server.core.errors import (
    CoapCode,
    InvalidRequestError,
    Lwm2mError,
    MethodNotAllowedError,
    NotAcceptableError,
    NotFoundError,
    UnauthorizedError,
)


class DeviceOperationError(Lwm2mError):
    """Root of the errors a simulated device answers with."""


class PathNotFoundError(DeviceOperationError, NotFoundError):
    """The target object, instance, resource or resource instance does not exist (4.04)."""


class OperationNotAllowedError(DeviceOperationError, MethodNotAllowedError):
    """The object model does not allow this operation on this target (4.05), e.g. Write on an R resource."""


class BadValueError(DeviceOperationError, InvalidRequestError):
    """The request is well formed CoAP but its content is wrong for the target (4.00)."""

    coap_code = CoapCode.BAD_REQUEST


class NotAuthorizedError(DeviceOperationError, UnauthorizedError):
    """The server may not access this target at all (4.01): the Security object 0."""


class FormatNotAcceptableError(DeviceOperationError, NotAcceptableError):
    """The requested Accept format cannot represent the target (4.06)."""
