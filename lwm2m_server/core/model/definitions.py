"""Object and resource definitions, and :class:`ObjectModel`, the set of definitions a peer is understood with.

Invariant: an :class:`ObjectModel` holds at most one definition per object id; adding a definition with an id
already present replaces it (so a user's DDF file overrides a built-in one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from lwm2m_server.core.nodes import ResourceType

OPERATIONS = ("", "R", "W", "RW", "E")


@dataclass(frozen=True, slots=True)
class ResourceDefinition:
    id: int
    name: str
    operations: str  # one of OPERATIONS; "" for none
    multiple: bool
    mandatory: bool
    type: ResourceType
    range: str = ""
    units: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.operations not in OPERATIONS:
            raise ValueError(f"resource {self.id}: operations {self.operations!r} not one of {OPERATIONS}")

    @property
    def readable(self) -> bool:
        return "R" in self.operations

    @property
    def writable(self) -> bool:
        return "W" in self.operations

    @property
    def executable(self) -> bool:
        return self.operations == "E"


@dataclass(frozen=True, slots=True)
class ObjectDefinition:
    id: int
    name: str
    version: str  # object version, "1.0" when the DDF gives none
    lwm2m_version: str  # LwM2M enabler version, "1.0" when the DDF gives none
    multiple: bool
    mandatory: bool
    urn: str
    resources: Mapping[int, ResourceDefinition] = field(default_factory=dict)
    description: str = ""

    def resource(self, rid: int) -> ResourceDefinition | None:
        return self.resources.get(rid)


class ObjectModel:
    """The object definitions known to a server or device, by object id."""

    __slots__ = ("_objects",)

    def __init__(self, definitions: Iterable[ObjectDefinition] = ()) -> None:
        self._objects: dict[int, ObjectDefinition] = {}
        for d in definitions:
            self._objects[d.id] = d

    @classmethod
    def default(cls) -> ObjectModel:
        """Our built-in definitions of the core OMA objects (current versions) and of our own object 32700
        (:mod:`~lwm2m_server.core.model.firmware_component`)."""
        from lwm2m_server.core.model.builtin import BUILTIN_OBJECTS
        from lwm2m_server.core.model.firmware_component import FIRMWARE_COMPONENT

        return cls([*BUILTIN_OBJECTS, FIRMWARE_COMPONENT])

    def with_definitions(self, definitions: Iterable[ObjectDefinition]) -> ObjectModel:
        """A new model: these definitions added to ours, replacing any with the same id."""
        return ObjectModel([*self._objects.values(), *definitions])

    def get(self, object_id: int) -> ObjectDefinition | None:
        return self._objects.get(object_id)

    def resource(self, object_id: int, resource_id: int) -> ResourceDefinition | None:
        obj = self._objects.get(object_id)
        return obj.resources.get(resource_id) if obj is not None else None

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._objects

    def __iter__(self) -> Iterator[ObjectDefinition]:
        return iter(sorted(self._objects.values(), key=lambda d: d.id))

    def __len__(self) -> int:
        return len(self._objects)
