"""LwM2M Gateway (OMA LwM2M Gateway 1.1, object 25), sans I/O: what a gateway says about the end devices behind it.

A gateway registers like any client, with one ``/25/i`` instance per end device ("IoT device"): resource 0 is the
device's id (its endpoint name here), 1 the prefix that reaches it (``/<prefix>/<object>/...`` on the gateway) and
3 its objects in CoRE link format. :func:`end_devices` turns a Read of ``/25`` into validated
:class:`EndDevice` entries.

Invariants: every entry has a valid endpoint name, a prefix that is one path segment of 1-64 characters from
``[A-Za-z0-9_.~-]`` and not all digits (a numeric prefix could not be told from an object id), and link targets
that are LwM2M paths; device ids and prefixes are unique among the entries (a repeated one is refused, the first
kept); at most ``max_devices`` entries. What is refused is returned with the reason, never raised: one bad
instance does not hide the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lwm2m_server.core.codec.link import Link, parse_links
from lwm2m_server.core.errors import CodecError, InvalidPathError
from lwm2m_server.core.nodes import Instance, Node, Obj, SingleResource
from lwm2m_server.core.paths import LwM2mPath
from lwm2m_server.core.registration import MAX_ENDPOINT_BYTES, MAX_LINKS_BYTES

GATEWAY_OBJECT = 25
DEVICE_ID, PREFIX, DEVICE_OBJECTS = 0, 1, 3
MAX_END_DEVICES = 1024
_PREFIX = re.compile(r"[A-Za-z0-9_.~-]{1,64}")


@dataclass(frozen=True, slots=True)
class EndDevice:
    """One end device behind a gateway, as its ``/25/<instance>`` describes it."""

    instance: int
    endpoint: str
    prefix: str
    links: tuple[Link, ...]


@dataclass(frozen=True, slots=True)
class Refused:
    """A ``/25`` instance that was not taken, and why."""

    instance: int
    reason: str


def valid_prefix(prefix: str) -> bool:
    """One path segment, not all digits (see the module invariants)."""
    return _PREFIX.fullmatch(prefix) is not None and not prefix.isdigit() and prefix not in (".", "..")


def end_devices(node: Node, *, max_devices: int = MAX_END_DEVICES) -> tuple[tuple[EndDevice, ...], tuple[Refused, ...]]:
    """The end devices of a Read of ``/25`` (an object, or a single instance), in instance order."""
    if isinstance(node, Obj):
        instances = [node.instances[i] for i in sorted(node.instances)]
    elif isinstance(node, Instance):
        instances = [node]
    else:
        return (), (Refused(-1, "the answer to a Read of /25 holds no object instances"),)
    taken: list[EndDevice] = []
    refused: list[Refused] = []
    endpoints: set[str] = set()
    prefixes: set[str] = set()
    for inst in instances:
        entry = _entry(inst)
        if isinstance(entry, Refused):
            refused.append(entry)
        elif entry.endpoint in endpoints:
            refused.append(Refused(inst.id, f"device id {entry.endpoint!r} is listed twice"))
        elif entry.prefix in prefixes:
            refused.append(Refused(inst.id, f"prefix {entry.prefix!r} is listed twice"))
        elif len(taken) >= max_devices:
            refused.append(Refused(inst.id, f"more than {max_devices} end devices behind one gateway"))
        else:
            endpoints.add(entry.endpoint)
            prefixes.add(entry.prefix)
            taken.append(entry)
    return tuple(taken), tuple(refused)


def _text(inst: Instance, rid: int) -> str | None:
    res = inst.resources.get(rid)
    if not isinstance(res, SingleResource):
        return None
    value = res.value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def _entry(inst: Instance) -> EndDevice | Refused:
    endpoint, prefix, objects = _text(inst, DEVICE_ID), _text(inst, PREFIX), _text(inst, DEVICE_OBJECTS)
    if not endpoint or len(endpoint.encode()) > MAX_ENDPOINT_BYTES or not endpoint.isprintable():
        return Refused(inst.id, "Device ID (/25/x/0) must be a printable name of 1 to 255 bytes")
    if prefix is None or not valid_prefix(prefix.strip("/")):
        return Refused(inst.id, f"{endpoint}: Prefix (/25/x/1) must be one path segment of letters, digits, "
                                "'_.~-' (not all digits)")
    if objects is None or len(objects.encode()) > MAX_LINKS_BYTES:
        return Refused(inst.id, f"{endpoint}: IoT Device Objects (/25/x/3) missing or too long")
    try:
        links = parse_links(objects) if objects.strip() else ()
        for link in links:
            LwM2mPath.parse(link.target)
    except (CodecError, InvalidPathError) as e:
        return Refused(inst.id, f"{endpoint}: IoT Device Objects (/25/x/3) unreadable: {e}")
    return EndDevice(inst.id, endpoint, prefix.strip("/"), links)
