"""Errors a simulated device answers with. Each is a core error (so the transport maps it the same way) and
carries the CoAP code the LwM2M Core specification gives for the failure.

The core tree (``lwm2m_server.core.errors``) has no class for 4.04 on a device path, 4.05, 4.01 or 4.06, so
they live here until the core grows them.
"""

from __future__ import annotations

from lwm2m_server.core.errors import CoapCode, InvalidRequestError, Lwm2mError, SecurityError


class DeviceOperationError(Lwm2mError):
    """Root of the errors a simulated device answers with."""


class PathNotFoundError(DeviceOperationError, InvalidRequestError):
    """The target object, instance, resource or resource instance does not exist (4.04)."""

    coap_code = CoapCode.NOT_FOUND


class OperationNotAllowedError(DeviceOperationError, InvalidRequestError):
    """The object model does not allow this operation on this target (4.05), e.g. Write on an R resource."""

    coap_code = CoapCode.METHOD_NOT_ALLOWED


class BadValueError(DeviceOperationError, InvalidRequestError):
    """The request is well formed CoAP but its content is wrong for the target (4.00)."""

    coap_code = CoapCode.BAD_REQUEST


class NotAuthorizedError(DeviceOperationError, SecurityError):
    """The server may not access this target at all (4.01): the Security object 0."""

    coap_code = CoapCode.UNAUTHORIZED


class NotAcceptableError(DeviceOperationError, InvalidRequestError):
    """The requested Accept format cannot represent the target (4.06)."""

    coap_code = CoapCode.NOT_ACCEPTABLE
