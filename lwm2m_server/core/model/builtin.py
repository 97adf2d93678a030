"""Our built-in definitions of the core LwM2M objects 0, 1, 3, 4, 5 and 25 (LwM2M Gateway), at their current
registry versions.

The facts (ids, names, operations, multiplicity, mandatory flags, types, ranges, units, versions, URNs) follow
the published object definitions; descriptions are our own one-liners. tests/unit/test_model_builtin.py checks
every resource against the official DDF files, so a change here must follow a change there.

Invariant: ``BUILTIN_OBJECTS`` holds exactly objects 0, 1, 3, 4, 5 and 25, in that order, with unique resource ids.
"""

from __future__ import annotations

from collections.abc import Iterable

from lwm2m_server.core.model.definitions import ObjectDefinition, ResourceDefinition
from lwm2m_server.core.nodes import ResourceType

__all__ = ["BUILTIN_OBJECTS"]

# Column values: instances (MULTI/SINGLE), presence (MAN/OPT) and the resource types.
MULTI, SINGLE = True, False
MAN, OPT = True, False
STR, INT, UINT = ResourceType.STRING, ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER
FLOAT, BOOL, OPAQUE, TIME = ResourceType.FLOAT, ResourceType.BOOLEAN, ResourceType.OPAQUE, ResourceType.TIME
OBJLNK, CORELNK, NONE = ResourceType.OBJLNK, ResourceType.CORELNK, ResourceType.NONE

# (id, name, object version, LwM2M version, instances, presence, URN)
_Header = tuple[int, str, str, str, bool, bool, str]
# (id, name, operations, instances, presence, type, range, units)
_Row = tuple[int, str, str, bool, bool, ResourceType, str, str]


def _object(header: _Header, description: str, rows: Iterable[_Row]) -> ObjectDefinition:
    oid, name, version, lwm2m_version, multiple, mandatory, urn = header
    resources: dict[int, ResourceDefinition] = {}
    for rid, rname, ops, rmultiple, rmandatory, rtype, rng, units in rows:
        if rid in resources:
            raise ValueError(f"built-in object {oid}: resource {rid} listed twice")
        resources[rid] = ResourceDefinition(rid, rname, ops, rmultiple, rmandatory, rtype, rng, units)
    return ObjectDefinition(
        oid, name, version, lwm2m_version, multiple, mandatory, urn, resources, description=description
    )


SECURITY = _object(
    (0, "LWM2M Security", "1.2", "1.1", MULTI, MAN, "urn:oma:lwm2m:oma:0:1.2"),
    "Keying material a client uses to reach one LwM2M server or bootstrap server.",
    [
        (0, "LWM2M  Server URI", "", SINGLE, MAN, STR, "0..255", ""),  # sic: two spaces, as in the DDF
        (1, "Bootstrap-Server", "", SINGLE, MAN, BOOL, "", ""),
        (2, "Security Mode", "", SINGLE, MAN, INT, "0..4", ""),
        (3, "Public Key or Identity", "", SINGLE, MAN, OPAQUE, "", ""),
        (4, "Server Public Key", "", SINGLE, MAN, OPAQUE, "", ""),
        (5, "Secret Key", "", SINGLE, MAN, OPAQUE, "", ""),
        (6, "SMS Security Mode", "", SINGLE, OPT, INT, "0..255", ""),
        (7, "SMS Binding Key Parameters", "", SINGLE, OPT, OPAQUE, "6", ""),
        (8, "SMS Binding Secret Key(s)", "", SINGLE, OPT, OPAQUE, "16,32,48", ""),
        (9, "LwM2M Server SMS Number", "", SINGLE, OPT, STR, "", ""),
        (10, "Short Server ID", "", SINGLE, OPT, INT, "1..65534", ""),
        (11, "Client Hold Off Time", "", SINGLE, OPT, INT, "", "s"),
        (12, "Bootstrap-Server Account Timeout", "", SINGLE, OPT, INT, "", "s"),
        (13, "Matching Type", "", SINGLE, OPT, UINT, "0..3", ""),
        (14, "SNI", "", SINGLE, OPT, STR, "", ""),
        (15, "Certificate Usage", "", SINGLE, OPT, UINT, "0..3", ""),
        (16, "DTLS/TLS Ciphersuite", "", MULTI, OPT, UINT, "", ""),
        (17, "OSCORE Security Mode", "", SINGLE, OPT, OBJLNK, "", ""),
        (18, "Groups To Use by Client", "", MULTI, OPT, UINT, "0..65535", ""),
        (19, "Signature Algorithms Supported by Server", "", MULTI, OPT, UINT, "0..65535", ""),
        (20, "Signature Algorithms To Use by Client", "", MULTI, OPT, UINT, "0..65535", ""),
        (21, "Signature Algorithm Certs Supported by Server", "", MULTI, OPT, UINT, "0..65535", ""),
        (22, "TLS 1.3 Features To Use by Client", "", SINGLE, OPT, UINT, "0..65535", ""),
        (23, "TLS Extensions Supported by Server", "", SINGLE, OPT, UINT, "0..65535", ""),
        (24, "TLS Extensions To Use by Client", "", SINGLE, OPT, UINT, "0..65535", ""),
        (25, "Secondary LwM2M Server URI", "", MULTI, OPT, STR, "0..255", ""),
        (26, "MQTT Server", "", SINGLE, OPT, OBJLNK, "", ""),
        (27, "LwM2M COSE Security", "", MULTI, OPT, OBJLNK, "", ""),
        (28, "RDS Destination Port", "", SINGLE, OPT, INT, "0..15", ""),
        (29, "RDS Source Port", "", SINGLE, OPT, INT, "0..15", ""),
        (30, "RDS Application ID", "", SINGLE, OPT, STR, "", ""),
    ],
)

SERVER = _object(
    (1, "LwM2M Server", "1.2", "1.2", MULTI, MAN, "urn:oma:lwm2m:oma:1:1.2"),
    "The client's settings for one LwM2M server: lifetime, binding, notification defaults, triggers.",
    [
        (0, "Short Server ID", "R", SINGLE, MAN, INT, "1..65534", ""),
        (1, "Lifetime", "RW", SINGLE, MAN, INT, "", "s"),
        (2, "Default Minimum Period", "RW", SINGLE, OPT, INT, "", "s"),
        (3, "Default Maximum Period", "RW", SINGLE, OPT, INT, "", "s"),
        (4, "Disable", "E", SINGLE, OPT, NONE, "", ""),
        (5, "Disable Timeout", "RW", SINGLE, OPT, INT, "", "s"),
        (6, "Notification Storing When Disabled or Offline", "RW", SINGLE, MAN, BOOL, "", ""),
        (7, "Binding", "RW", SINGLE, MAN, STR, "", ""),
        (8, "Registration Update Trigger", "E", SINGLE, MAN, NONE, "", ""),
        (9, "Bootstrap-Request Trigger", "E", SINGLE, OPT, NONE, "", ""),
        (10, "APN Link", "RW", SINGLE, OPT, OBJLNK, "", ""),
        (11, "TLS-DTLS Alert Code", "R", SINGLE, OPT, UINT, "0..255", ""),
        (12, "Last Bootstrapped", "R", SINGLE, OPT, TIME, "", ""),
        (13, "Registration Priority Order", "R", SINGLE, OPT, UINT, "", ""),
        (14, "Initial Registration Delay Timer", "RW", SINGLE, OPT, UINT, "", "s"),
        (15, "Registration Failure Block", "R", SINGLE, OPT, BOOL, "", ""),
        (16, "Bootstrap on Registration Failure", "R", SINGLE, OPT, BOOL, "", ""),
        (17, "Communication Retry Count", "RW", SINGLE, OPT, UINT, "", ""),
        (18, "Communication Retry Timer", "RW", SINGLE, OPT, UINT, "", "s"),
        (19, "Communication Sequence Delay Timer", "RW", SINGLE, OPT, UINT, "", "s"),
        (20, "Communication Sequence Retry Count", "RW", SINGLE, OPT, UINT, "", ""),
        (21, "Trigger", "RW", SINGLE, OPT, BOOL, "", ""),
        (22, "Preferred Transport", "RW", SINGLE, OPT, STR, "", ""),  # DDF range is prose, not a range
        (23, "Mute Send", "RW", SINGLE, OPT, BOOL, "", ""),
        (24, "Alternate APN Links", "RW", MULTI, OPT, OBJLNK, "", ""),
        (25, "Supported Server Versions", "RW", MULTI, OPT, STR, "", ""),
        (26, "Default Notification Mode", "RW", SINGLE, OPT, INT, "0..1", ""),
        (27, "Profile ID Hash Algorithm", "RW", SINGLE, OPT, UINT, "0..255", ""),
    ],
)

DEVICE = _object(
    (3, "Device", "1.2", "1.1", SINGLE, MAN, "urn:oma:lwm2m:oma:3:1.2"),
    "Identity, power, clock and reboot/reset controls of the device.",
    [
        (0, "Manufacturer", "R", SINGLE, OPT, STR, "", ""),
        (1, "Model Number", "R", SINGLE, OPT, STR, "", ""),
        (2, "Serial Number", "R", SINGLE, OPT, STR, "", ""),
        (3, "Firmware Version", "R", SINGLE, OPT, STR, "", ""),
        (4, "Reboot", "E", SINGLE, MAN, NONE, "", ""),
        (5, "Factory Reset", "E", SINGLE, OPT, NONE, "", ""),
        (6, "Available Power Sources", "R", MULTI, OPT, INT, "0..7", ""),
        (7, "Power Source Voltage", "R", MULTI, OPT, INT, "", ""),
        (8, "Power Source Current", "R", MULTI, OPT, INT, "", ""),
        (9, "Battery Level", "R", SINGLE, OPT, INT, "0..100", "/100"),
        (10, "Memory Free", "R", SINGLE, OPT, INT, "", ""),
        (11, "Error Code", "R", MULTI, MAN, INT, "0..32", ""),
        (12, "Reset Error Code", "E", SINGLE, OPT, NONE, "", ""),
        (13, "Current Time", "RW", SINGLE, OPT, TIME, "", ""),
        (14, "UTC Offset", "RW", SINGLE, OPT, STR, "", ""),
        (15, "Timezone", "RW", SINGLE, OPT, STR, "", ""),
        (16, "Supported Binding and Modes", "R", SINGLE, MAN, STR, "", ""),
        (17, "Device Type", "R", SINGLE, OPT, STR, "", ""),
        (18, "Hardware Version", "R", SINGLE, OPT, STR, "", ""),
        (19, "Software Version", "R", SINGLE, OPT, STR, "", ""),
        (20, "Battery Status", "R", SINGLE, OPT, INT, "0..6", ""),
        (21, "Memory Total", "R", SINGLE, OPT, INT, "", ""),
        (22, "ExtDevInfo", "R", MULTI, OPT, OBJLNK, "", ""),
    ],
)

CONNECTIVITY_MONITORING = _object(
    (4, "Connectivity Monitoring", "1.3", "1.1", SINGLE, OPT, "urn:oma:lwm2m:oma:4:1.3"),
    "The bearer, signal and addresses of the device's network connection.",
    [
        (0, "Network Bearer", "R", SINGLE, MAN, INT, "0..50", ""),
        (1, "Available Network Bearer", "R", MULTI, MAN, INT, "0..50", ""),
        (2, "Radio Signal Strength", "R", SINGLE, MAN, INT, "", "dBm"),
        (3, "Link Quality", "R", SINGLE, OPT, INT, "", ""),
        (4, "IP Addresses", "R", MULTI, MAN, STR, "", ""),
        (5, "Router IP Addresses", "R", MULTI, OPT, STR, "", ""),
        (6, "Link Utilization", "R", SINGLE, OPT, INT, "0..100", "/100"),
        (7, "APN", "R", MULTI, OPT, STR, "", ""),
        (8, "Cell ID", "R", SINGLE, OPT, INT, "", ""),
        (9, "SMNC", "R", SINGLE, OPT, INT, "0..999", ""),
        (10, "SMCC", "R", SINGLE, OPT, INT, "0..999", ""),
        (11, "SignalSNR", "R", SINGLE, OPT, INT, "", "dB"),
        (12, "LAC", "R", SINGLE, OPT, INT, "", ""),
        (13, "Coverage Enhancement Level", "R", SINGLE, OPT, INT, "0..4", ""),
    ],
)

FIRMWARE_UPDATE = _object(
    (5, "Firmware Update", "1.2", "1.1", SINGLE, OPT, "urn:oma:lwm2m:oma:5:1.2"),
    "Delivery (push or pull), installation and result of a firmware package.",
    [
        (0, "Package", "W", SINGLE, MAN, OPAQUE, "", ""),
        (1, "Package URI", "RW", SINGLE, MAN, STR, "0..255", ""),
        (2, "Update", "E", SINGLE, MAN, NONE, "", ""),
        (3, "State", "R", SINGLE, MAN, INT, "0..3", ""),
        (5, "Update Result", "R", SINGLE, MAN, INT, "0..11", ""),
        (6, "PkgName", "R", SINGLE, OPT, STR, "0..255", ""),
        (7, "PkgVersion", "R", SINGLE, OPT, STR, "0..255", ""),
        (8, "Firmware Update Protocol Support", "R", MULTI, OPT, INT, "0..5", ""),
        (9, "Firmware Update Delivery Method", "R", SINGLE, MAN, INT, "0..2", ""),
        (10, "Cancel", "E", SINGLE, OPT, NONE, "", ""),
        (11, "Severity", "RW", SINGLE, OPT, INT, "0..2", ""),
        (12, "Last State Change Time", "R", SINGLE, OPT, TIME, "", ""),
        (13, "Maximum Defer Period", "RW", SINGLE, OPT, UINT, "", "s"),
        (14, "Automatic Upgrade at Download", "RW", SINGLE, OPT, BOOL, "", ""),
    ],
)

LWM2M_GATEWAY = _object(
    (25, "LwM2M Gateway", "2.0", "1.1", MULTI, OPT, "urn:oma:lwm2m:oma:25:2.0"),
    "One instance per end device behind an LwM2M gateway: its id, the prefix that reaches it, its objects.",
    [
        (0, "Device ID", "R", SINGLE, MAN, STR, "", ""),
        (1, "Prefix", "R", SINGLE, MAN, STR, "", ""),
        (3, "IoT Device Objects", "R", SINGLE, MAN, CORELNK, "", ""),
    ],
)

BUILTIN_OBJECTS: tuple[ObjectDefinition, ...] = (
    SECURITY,
    SERVER,
    DEVICE,
    CONNECTIVITY_MONITORING,
    FIRMWARE_UPDATE,
    LWM2M_GATEWAY,
)
