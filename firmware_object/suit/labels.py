"""The integer labels of draft-ietf-suit-manifest-37 and the COSE algorithm identifiers this package knows.

Names follow the draft's CDDL (``suit-directive-override-parameters`` is ``Command.OVERRIDE_PARAMETERS``). The
``name`` of a member, used by :func:`describe`, is the CDDL name without its ``suit-`` prefix.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

ENVELOPE_TAG: Final = 107
"""SUIT_Envelope_Tagged."""
COSE_SIGN1_TAG: Final = 18
COSE_MAC0_TAG: Final = 17
COSE_SIGN_TAG: Final = 98
COSE_MAC_TAG: Final = 97


class EnvelopeKey(IntEnum):
    AUTHENTICATION_WRAPPER = 2
    MANIFEST = 3


class ManifestKey(IntEnum):
    MANIFEST_VERSION = 1
    MANIFEST_SEQUENCE_NUMBER = 2
    COMMON = 3
    REFERENCE_URI = 4
    VALIDATE = 7
    LOAD = 8
    INVOKE = 9
    PAYLOAD_FETCH = 16
    INSTALL = 20
    TEXT = 23


SEVERABLE_MEMBERS: Final = frozenset({ManifestKey.PAYLOAD_FETCH, ManifestKey.INSTALL, ManifestKey.TEXT})
"""Members that may be replaced by their SUIT_Digest in the manifest and carried beside it in the envelope."""


class CommonKey(IntEnum):
    COMPONENTS = 2
    SHARED_SEQUENCE = 4


class Command(IntEnum):
    """Conditions and directives of a SUIT_Command_Sequence (negative labels are custom commands)."""

    CONDITION_VENDOR_IDENTIFIER = 1
    CONDITION_CLASS_IDENTIFIER = 2
    CONDITION_IMAGE_MATCH = 3
    CONDITION_COMPONENT_SLOT = 5
    CONDITION_CHECK_CONTENT = 6
    CONDITION_ABORT = 14
    CONDITION_DEVICE_IDENTIFIER = 24
    DIRECTIVE_SET_COMPONENT_INDEX = 12
    DIRECTIVE_TRY_EACH = 15
    DIRECTIVE_WRITE = 18
    DIRECTIVE_OVERRIDE_PARAMETERS = 20
    DIRECTIVE_FETCH = 21
    DIRECTIVE_COPY = 22
    DIRECTIVE_INVOKE = 23
    DIRECTIVE_SWAP = 31
    DIRECTIVE_RUN_SEQUENCE = 32


class Parameter(IntEnum):
    VENDOR_IDENTIFIER = 1
    CLASS_IDENTIFIER = 2
    IMAGE_DIGEST = 3
    COMPONENT_SLOT = 5
    STRICT_ORDER = 12
    SOFT_FAILURE = 13
    IMAGE_SIZE = 14
    CONTENT = 18
    URI = 21
    SOURCE_COMPONENT = 22
    INVOKE_ARGS = 23
    DEVICE_IDENTIFIER = 24
    FETCH_ARGUMENTS = 25
    DELTA_FORMAT = -256
    """Private use: the source component of ``directive-copy`` is a delta in this format (a text string, e.g.
    ``firmware_object.delta.DELTA_FORMAT``) from the destination's current image; copy applies it."""


class TextKey(IntEnum):
    """Manifest-level keys of a SUIT_Text_LMap."""

    MANIFEST_DESCRIPTION = 1
    UPDATE_DESCRIPTION = 2
    MANIFEST_JSON_SOURCE = 3
    MANIFEST_YAML_SOURCE = 4
    SYSTEM_VERSION = -256
    """Private use: the version of a system release (several components); its presence marks a system manifest."""


class TextComponentKey(IntEnum):
    """Per-component keys of a SUIT_Text_LMap."""

    VENDOR_NAME = 1
    MODEL_NAME = 2
    VENDOR_DOMAIN = 3
    MODEL_INFO = 4
    COMPONENT_DESCRIPTION = 5
    COMPONENT_VERSION = 6
    COMPONENT_KIND = -256
    """Private use: ``"image"`` (invoked after install) or ``"data"`` (stored, never invoked)."""
    COMPONENT_AFTER = -257
    """Private use: the names of the components that install before this one, comma-separated."""
    DELTA_BASE_VERSION = -258
    """Private use: the version of the image a delta applies to, when known."""


class CoseAlg(IntEnum):
    """COSE algorithms (IANA COSE registry) that this package signs or verifies with, and the SUIT digest."""

    SHA_256 = -16
    ES256 = -7
    ESP256 = -9
    EDDSA = -8
    ED25519 = -19


class CoseHeader(IntEnum):
    ALG = 1
    KID = 4


REPORT_ON_FAILURE: Final = 2
"""SUIT_Rep_Policy for directives: send-record-on-failure (as in the draft's examples)."""
REPORT_ALL: Final = 15
"""SUIT_Rep_Policy for conditions: all four reporting bits (as in the draft's examples)."""

INTEGRATED_PAYLOAD_KEY: Final = "#firmware"
"""Envelope key (and fetch URI) of the integrated image in envelopes built here."""

PRIVATE_USE_BELOW: Final = -255
"""draft-ietf-suit-manifest-37, IANA Considerations: in every SUIT registry, labels less than -255 are Private Use,
-255 to 255 need Standards Action, above 255 Specification Required. Our private labels are -256 and below."""


def member_name(label: IntEnum) -> str:
    """The CDDL name of a label without ``suit-``: ``ManifestKey.INSTALL`` -> ``install``."""
    return label.name.lower().replace("_", "-")
