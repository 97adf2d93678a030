"""The frozen LwM2M node model: objects, object instances, resources and resource instances.

Values are plain Python values, one type per LwM2M data type (see :data:`PYTHON_TYPES`):
String and Corelnk are ``str``, Integer and Unsigned Integer ``int``, Float ``float``, Boolean ``bool``,
Opaque ``bytes``, Time ``int`` (seconds since the Unix epoch, UTC), Objlnk :class:`ObjectLink`, and the value of
an executable resource (type NONE) is ``None``.

Invariants: every node is immutable once built (the mappings it holds are never mutated after construction);
every value matches its resource type; ids are in 0..65535.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias

from lwm2m_server.core.errors import ModelError
from lwm2m_server.core.paths import LwM2mPath


class ResourceType(Enum):
    """LwM2M data types, valued with the spelling of the OMA DDF ``<Type>`` element."""

    STRING = "String"
    INTEGER = "Integer"
    UNSIGNED_INTEGER = "Unsigned Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    OPAQUE = "Opaque"
    TIME = "Time"
    OBJLNK = "Objlnk"
    CORELNK = "Corelnk"
    NONE = "none"

    @classmethod
    def from_ddf(cls, text: str | None) -> ResourceType:
        """Map a DDF ``<Type>`` text (empty for executable resources) to a type."""
        t = (text or "").strip()
        if not t:
            return cls.NONE
        for member in cls:
            if member.value.lower() == t.lower():
                return member
        raise ModelError(f"unknown LwM2M resource type {text!r}")


@dataclass(frozen=True, slots=True, order=True)
class ObjectLink:
    """An Objlnk value: a reference to object instance /object_id/instance_id (65535:65535 is the null link)."""

    object_id: int
    instance_id: int

    def __post_init__(self) -> None:
        for v in (self.object_id, self.instance_id):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 65535:
                raise ModelError(f"object link id {v!r} out of range 0..65535")

    def __str__(self) -> str:
        return f"{self.object_id}:{self.instance_id}"

    @classmethod
    def parse(cls, text: str) -> ObjectLink:
        o, sep, i = text.partition(":")
        if not sep or not all(p.isascii() and p.isdigit() and len(p) <= 5 for p in (o, i)):
            raise ModelError(f"invalid object link {text!r}, expected 'O:I' in decimal digits")
        return cls(int(o), int(i))


Value: TypeAlias = str | int | float | bool | bytes | ObjectLink | None

PYTHON_TYPES: Mapping[ResourceType, tuple[type, ...]] = {
    ResourceType.STRING: (str,),
    ResourceType.CORELNK: (str,),
    ResourceType.INTEGER: (int,),
    ResourceType.UNSIGNED_INTEGER: (int,),
    ResourceType.TIME: (int,),
    ResourceType.FLOAT: (float,),
    ResourceType.BOOLEAN: (bool,),
    ResourceType.OPAQUE: (bytes,),
    ResourceType.OBJLNK: (ObjectLink,),
    ResourceType.NONE: (type(None),),
}

INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def check_value(rtype: ResourceType, value: Value) -> None:
    """Raise :class:`ModelError` unless ``value`` is a valid value of ``rtype``."""
    expected = PYTHON_TYPES[rtype]
    if isinstance(value, bool) and rtype is not ResourceType.BOOLEAN:
        raise ModelError(f"{rtype.value} value expected, got a boolean")
    if not isinstance(value, expected):
        raise ModelError(f"{rtype.value} value expected, got {type(value).__name__}")
    if rtype in (ResourceType.INTEGER, ResourceType.TIME):
        assert isinstance(value, int)
        if not INT64_MIN <= value <= INT64_MAX:
            raise ModelError(f"{rtype.value} value {value} does not fit in 64 bits")
    elif rtype is ResourceType.UNSIGNED_INTEGER:
        assert isinstance(value, int)
        if not 0 <= value <= UINT64_MAX:
            raise ModelError(f"Unsigned Integer value {value} out of range 0..2^64-1")


def _check_id(i: int) -> None:
    if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= 65535:
        raise ModelError(f"node id {i!r} out of range 0..65535")


@dataclass(frozen=True, slots=True)
class ResourceInstance:
    """One instance of a multiple resource, addressed on its own (/O/I/R/RI)."""

    id: int
    type: ResourceType
    value: Value

    def __post_init__(self) -> None:
        _check_id(self.id)
        check_value(self.type, self.value)


@dataclass(frozen=True, slots=True)
class SingleResource:
    id: int
    type: ResourceType
    value: Value

    def __post_init__(self) -> None:
        _check_id(self.id)
        check_value(self.type, self.value)


@dataclass(frozen=True, slots=True)
class MultipleResource:
    """A multiple-instance resource; ``instances`` maps resource instance id to value (may be empty)."""

    id: int
    type: ResourceType
    instances: Mapping[int, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id(self.id)
        for i, v in self.instances.items():
            _check_id(i)
            check_value(self.type, v)

    def instance(self, rid: int) -> ResourceInstance:
        return ResourceInstance(rid, self.type, self.instances[rid])


Resource: TypeAlias = SingleResource | MultipleResource


@dataclass(frozen=True, slots=True)
class Instance:
    """An object instance: resources by id."""

    id: int
    resources: Mapping[int, Resource] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id(self.id)
        for k, r in self.resources.items():
            if k != r.id:
                raise ModelError(f"resource {r.id} filed under id {k}")

    @classmethod
    def of(cls, iid: int, resources: Iterable[Resource]) -> Instance:
        return cls(iid, {r.id: r for r in resources})


@dataclass(frozen=True, slots=True)
class Obj:
    """An object: its instances by id (may be empty)."""

    id: int
    instances: Mapping[int, Instance] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_id(self.id)
        for k, inst in self.instances.items():
            if k != inst.id:
                raise ModelError(f"instance {inst.id} filed under id {k}")

    @classmethod
    def of(cls, oid: int, instances: Iterable[Instance]) -> Obj:
        return cls(oid, {i.id: i for i in instances})


Node: TypeAlias = Obj | Instance | SingleResource | MultipleResource | ResourceInstance


def assemble(path: LwM2mPath, parts: Mapping[LwM2mPath, Node]) -> Node | None:
    """Build the node at ``path`` from nodes found at or below it (as a composite answer lists them), or None
    when nothing lies there. Invariant: the result holds exactly the values of ``parts`` below ``path``."""
    if path in parts:
        return parts[path]
    below = {p: n for p, n in parts.items() if p != path and path.covers(p)}
    if not below:
        return None
    depth = path.depth
    if depth == 3:
        rtype = next(iter(below.values())).type  # type: ignore[union-attr]
        return MultipleResource(path.ids[2], rtype, {p.ids[3]: n.value for p, n in below.items()
                                                     if isinstance(n, ResourceInstance)})
    children = sorted({p.ids[depth] for p in below})
    built = [assemble(path.child(c), below) for c in children]
    if depth == 2:
        return Instance.of(path.ids[1], [n for n in built if isinstance(n, SingleResource | MultipleResource)])
    if depth == 1:
        return Obj.of(path.ids[0], [n for n in built if isinstance(n, Instance)])
    return None


MAX_DEVICE_TEXT = 255


def device_text(value: Value) -> str:
    """A value a device reported, as text fit to store and show: NUL (which PostgreSQL refuses in text) and other
    C0 controls except tab become U+FFFD, and at most ``MAX_DEVICE_TEXT`` characters are kept."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return "".join("\ufffd" if ord(c) < 32 and c != "\t" else c for c in text[:MAX_DEVICE_TEXT])
