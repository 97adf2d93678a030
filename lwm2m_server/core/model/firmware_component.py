"""Our own object, 32700 "SCRATCh Firmware Component": one instance per component of a device's system (an
application, a radio firmware, a configuration file...), so the server sees each component's version, digest and
state, not only the one version of /3/0/3 and /5/0/7.

Modelled on the registry's approach to software components (one instance per component, identity and version as
resources), written here from scratch: 32700 lies in the registry's range for objects "defined by vendors or
individuals to re-use" (26241-32768), which need no registration.

Instance ids follow the install order of the components (instance 0 installs first). Resources (all read-only):

==  =================  =======  ===========================================================================
id  name               type     meaning
==  =================  =======  ===========================================================================
0   Component Name     String   the component's name, also its SUIT component identifier ``[h'<name>']``
1   Component Kind     String   ``image`` (runs) or ``data`` (a file kept: configuration, certificates)
2   Version            String   the version of the installed (running) content
3   Digest             Opaque   SHA-256 of the installed content (32 bytes)
4   Size               Integer  bytes of the installed content
5   State              Integer  :data:`COMPONENT_STATES`
6   Update Result      Integer  the Update Result (/5/0/5 values) of the last update that touched it
7   Pending Version    String   the version staged for the next install ("" when none)
==  =================  =======  ===========================================================================

Invariant: the definition here is the one both the server (``ObjectModel.default()``) and the simulated devices
use; a change to it changes both.
"""

from __future__ import annotations

from typing import Final

from lwm2m_server.core.model.definitions import ObjectDefinition, ResourceDefinition
from lwm2m_server.core.nodes import ResourceType

__all__ = ["COMPONENT_STATES", "FIRMWARE_COMPONENT", "FIRMWARE_COMPONENT_ID", "ComponentResource", "ComponentState"]

FIRMWARE_COMPONENT_ID: Final = 32700


class ComponentResource:
    NAME: Final = 0
    KIND: Final = 1
    VERSION: Final = 2
    DIGEST: Final = 3
    SIZE: Final = 4
    STATE: Final = 5
    UPDATE_RESULT: Final = 6
    PENDING_VERSION: Final = 7


class ComponentState:
    INSTALLED: Final = 0
    """Running (an image) or in use (a data file); nothing staged."""
    STAGED: Final = 1
    """A new version is downloaded and verified, waiting for the install (Execute /5/0/2)."""
    ROLLED_BACK: Final = 2
    """The last install was undone (this component or another one failed): the old content is back."""
    FAILED: Final = 3
    """This component is the one whose verification, install, boot or health check failed (then all rolled back)."""


COMPONENT_STATES: Final = {0: "installed", 1: "staged", 2: "rolled back", 3: "failed"}

_R = ResourceDefinition
_STR, _INT, _OPAQUE = ResourceType.STRING, ResourceType.INTEGER, ResourceType.OPAQUE
FIRMWARE_COMPONENT: Final = ObjectDefinition(
    FIRMWARE_COMPONENT_ID, "SCRATCh Firmware Component", "1.0", "1.1", True, False,
    f"urn:oma:lwm2m:x:{FIRMWARE_COMPONENT_ID}",
    {
        0: _R(0, "Component Name", "R", False, True, _STR, "0..32", ""),
        1: _R(1, "Component Kind", "R", False, True, _STR, "", ""),
        2: _R(2, "Version", "R", False, True, _STR, "0..64", ""),
        3: _R(3, "Digest", "R", False, True, _OPAQUE, "32", ""),
        4: _R(4, "Size", "R", False, True, _INT, "", "B"),
        5: _R(5, "State", "R", False, True, _INT, "0..3", ""),
        6: _R(6, "Update Result", "R", False, False, _INT, "0..11", ""),
        7: _R(7, "Pending Version", "R", False, False, _STR, "0..64", ""),
    },
    description="One component (image or data file) of a device's system: name, kind, version, digest, state.",
)
