"""The firmware error tree, and the Object 5 enumerations its errors map to.

Every :class:`FirmwareError` knows the Object 5 Update Result (/5/0/5) a device reports for it, and the CoAP code a
device answers with when the error ends a request (a Write of /5/0/0, an Execute of /5/0/2).
"""

from __future__ import annotations

from enum import IntEnum

from lwm2m_server.core.errors import CoapCode


class State(IntEnum):
    """Object 5 State (/5/0/3)."""

    IDLE = 0
    DOWNLOADING = 1
    DOWNLOADED = 2
    UPDATING = 3


class UpdateResult(IntEnum):
    """Object 5 Update Result (/5/0/5); 10 and 11 exist from Object 5 version 1.1 on."""

    INITIAL = 0
    SUCCESS = 1
    NOT_ENOUGH_FLASH = 2
    OUT_OF_RAM = 3
    CONNECTION_LOST = 4
    INTEGRITY_CHECK_FAILURE = 5
    UNSUPPORTED_PACKAGE_TYPE = 6
    INVALID_URI = 7
    UPDATE_FAILED = 8
    UNSUPPORTED_PROTOCOL = 9
    CANCELLED = 10
    DEFERRED = 11

    @property
    def label(self) -> str:
        return _RESULT_LABELS[self]

    @classmethod
    def known(cls, value: object) -> UpdateResult | None:
        """The Update Result ``value`` names, or None for anything else (a newer code, None, a string...)."""
        if isinstance(value, int) and not isinstance(value, bool) and value in cls._value2member_map_:
            return cls(value)
        return None


_RESULT_LABELS = {
    UpdateResult.INITIAL: "initial value",
    UpdateResult.SUCCESS: "firmware updated successfully",
    UpdateResult.NOT_ENOUGH_FLASH: "not enough flash memory for the package",
    UpdateResult.OUT_OF_RAM: "out of RAM during download",
    UpdateResult.CONNECTION_LOST: "connection lost during download",
    UpdateResult.INTEGRITY_CHECK_FAILURE: "integrity check failure",
    UpdateResult.UNSUPPORTED_PACKAGE_TYPE: "unsupported package type",
    UpdateResult.INVALID_URI: "invalid URI",
    UpdateResult.UPDATE_FAILED: "firmware update failed",
    UpdateResult.UNSUPPORTED_PROTOCOL: "unsupported protocol",
    UpdateResult.CANCELLED: "firmware update cancelled",
    UpdateResult.DEFERRED: "firmware update deferred",
}


class FirmwareError(Exception):
    """Root of the firmware error tree."""

    update_result: UpdateResult = UpdateResult.UPDATE_FAILED
    coap_code: CoapCode = CoapCode.BAD_REQUEST


class InvalidTransitionError(FirmwareError):
    """An event the Object 5 state machine does not take in its current state (e.g. Update while Idle)."""

    coap_code = CoapCode.METHOD_NOT_ALLOWED


class PackageTooLargeError(FirmwareError):
    """A package larger than the device can store."""

    update_result = UpdateResult.NOT_ENOUGH_FLASH
    coap_code = CoapCode.REQUEST_ENTITY_TOO_LARGE


class SuitError(FirmwareError):
    """A SUIT envelope that must not be installed. Subclasses follow the verification order."""

    update_result = UpdateResult.INTEGRITY_CHECK_FAILURE


class SuitDecodeError(SuitError):
    """Not a SUIT envelope: bad CBOR, wrong tag, or a member of the wrong shape."""

    update_result = UpdateResult.UNSUPPORTED_PACKAGE_TYPE


class SignatureError(SuitError):
    """A required signature is missing or does not verify over the manifest digest."""

    update_result = UpdateResult.INTEGRITY_CHECK_FAILURE


class DigestMismatchError(SuitError):
    """The manifest does not match the SUIT_Digest that the signatures cover."""

    update_result = UpdateResult.INTEGRITY_CHECK_FAILURE


class RollbackError(SuitError):
    """The manifest's sequence number is not above the installed one (anti-rollback)."""

    update_result = UpdateResult.UPDATE_FAILED


class ConditionFailedError(SuitError):
    """A vendor, class or device identifier condition does not hold on this device."""

    update_result = UpdateResult.UNSUPPORTED_PACKAGE_TYPE


class ImageMismatchError(SuitError):
    """The image's SHA-256 digest or size differs from what the manifest declares."""

    update_result = UpdateResult.INTEGRITY_CHECK_FAILURE


class DeltaError(FirmwareError):
    """A delta that cannot be applied: corrupt, in another format, or producing more than the image's size."""

    update_result = UpdateResult.INTEGRITY_CHECK_FAILURE


class DeltaBaseMismatchError(FirmwareError):
    """The installed image is not the delta's base (the server then sends the full image)."""

    update_result = UpdateResult.UNSUPPORTED_PACKAGE_TYPE
