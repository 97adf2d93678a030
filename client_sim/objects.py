"""A simulated device's object tree, sans I/O: instances and resource values shaped by an :class:`ObjectModel`,
and the LwM2M Device Management operations a server performs on them.

Invariants:
- every stored value matches the model's type for its resource; multiple resources are stored as
  ``{resource instance id: value}``, single ones as the value (``None`` for executable resources);
- a server operation either applies completely or raises a :class:`~client_sim.errors.DeviceOperationError`
  (or another core error) carrying its CoAP code and changes nothing;
- the Security object (and the OSCORE object) are never readable, writable or discoverable by a management server
  (4.01); only the device side (``raw_instance``, ``add_instance``, ``remove_instance``) and a bootstrap server
  (``bootstrap_write``, which :mod:`client_sim.bootstrap` serves only over the bootstrap session) reach them;
- listeners learn of every change after it is applied, never of a failed operation.

This module reads no clock and opens nothing; values that follow the clock are bound to getters by the device.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias

from client_sim.errors import (
    BadValueError,
    NotAuthorizedError,
    OperationNotAllowedError,
    PathNotFoundError,
)
from lwm2m_server.core.codec.link import Link
from lwm2m_server.core.errors import ModelError
from lwm2m_server.core.model.definitions import ObjectDefinition, ObjectModel, ResourceDefinition
from lwm2m_server.core.nodes import (
    Instance,
    MultipleResource,
    Node,
    Obj,
    ObjectLink,
    ResourceInstance,
    ResourceType,
    SingleResource,
    Value,
    check_value,
)
from lwm2m_server.core.paths import LwM2mPath

Stored: TypeAlias = Value | dict[int, Value]
"""What the tree keeps for one resource: its value, or ``{resource instance id: value}`` for a multiple one."""

ExecuteHandler: TypeAlias = Callable[[str], None]
"""Called with the Execute arguments text; may raise a core error to fail the Execute."""

PROTECTED_OBJECTS = frozenset({0, 21})
"""Security and OSCORE: a management server gets 4.01 on every operation on them."""

CORE_OBJECTS_WITHOUT_VERSION = frozenset({0, 1, 2, 21})
"""Objects whose version the LwM2M enabler version implies: no ``ver`` attribute in the Register payload."""

ATTRIBUTE_ORDER = ("pmin", "pmax", "gt", "lt", "st", "epmin", "epmax", "edge", "con", "hqmax")
NUMERIC_TYPES = frozenset({ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.FLOAT})
_INT_ATTRS = frozenset({"pmin", "pmax", "epmin", "epmax", "hqmax"})
_FLOAT_ATTRS = frozenset({"gt", "lt", "st"})
_FLAG_ATTRS = frozenset({"edge", "con"})
_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*\.\.\s*(-?\d+(?:\.\d+)?)\s*$")
_EXEC_ARG = re.compile(r"^[0-9](='[!#-&(-\[\]-~ ]*')?$")
_MISSING = object()


class ChangeKind(Enum):
    VALUE = "value"  # resource values changed under the path
    STRUCTURE = "structure"  # an instance was created or deleted (the registration links changed)
    ATTRIBUTES = "attributes"  # notification attributes were written on the path


@dataclass(frozen=True, slots=True)
class Change:
    path: LwM2mPath
    kind: ChangeKind


ChangeListener: TypeAlias = Callable[[Change], None]


DEFAULT_VALUES: Mapping[ResourceType, Value] = {
    ResourceType.STRING: "",
    ResourceType.CORELNK: "",
    ResourceType.INTEGER: 0,
    ResourceType.UNSIGNED_INTEGER: 0,
    ResourceType.TIME: 0,
    ResourceType.FLOAT: 0.0,
    ResourceType.BOOLEAN: False,
    ResourceType.OPAQUE: b"",
    ResourceType.OBJLNK: ObjectLink(65535, 65535),
    ResourceType.NONE: None,
}


def parse_execute_arguments(text: str) -> dict[int, str | None]:
    """Parse Execute arguments (LwM2M Core 5.4.4): ``0='v',1`` gives ``{0: 'v', 1: None}``; 4.00 if malformed."""
    args: dict[int, str | None] = {}
    if not text:
        return args
    for part in _split_arguments(text):
        if not _EXEC_ARG.match(part):
            raise BadValueError(f"malformed Execute argument {part!r}")
        digit = int(part[0])
        if digit in args:
            raise BadValueError(f"Execute argument {digit} given twice")
        args[digit] = part[3:-1] if len(part) > 1 else None
    return args


def _split_arguments(text: str) -> Iterator[str]:
    start, quoted = 0, False
    for i, c in enumerate(text):
        if c == "'":
            quoted = not quoted
        elif c == "," and not quoted:
            yield text[start:i]
            start = i + 1
    if quoted:
        raise BadValueError("unterminated quote in Execute arguments")
    yield text[start:]


def _check_range(rdef: ResourceDefinition, value: Value) -> None:
    if rdef.type not in NUMERIC_TYPES or not isinstance(value, int | float):
        return
    m = _RANGE.match(rdef.range)
    if m and not float(m.group(1)) <= value <= float(m.group(2)):
        raise BadValueError(f"resource {rdef.id} ({rdef.name}): {value} out of range {rdef.range}")


class ObjectTree:
    """The objects, instances and resource values of one device, and the operations on them."""

    __slots__ = ("_any_handlers", "_attrs", "_data", "_getters", "_handlers", "_initial", "_listeners", "_setters",
                 "model")

    def __init__(self, model: ObjectModel) -> None:
        self.model = model
        self._data: dict[int, dict[int, dict[int, Stored]]] = {}
        self._attrs: dict[LwM2mPath, dict[str, str]] = {}
        self._handlers: dict[LwM2mPath, ExecuteHandler] = {}
        self._any_handlers: dict[tuple[int, int], ExecuteHandler] = {}
        self._getters: dict[LwM2mPath, Callable[[], Value]] = {}
        self._setters: dict[LwM2mPath, Callable[[Value], None]] = {}
        self._listeners: list[ChangeListener] = []
        self._initial: dict[int, dict[int, dict[int, Stored]]] | None = None

    # ------------------------------------------------------------------ device side (no access control)

    def add_object(self, object_id: int) -> None:
        """Make an object of the model present (with no instances yet)."""
        if object_id not in self.model:
            raise ModelError(f"object {object_id} is not in the model")
        self._data.setdefault(object_id, {})

    def add_instance(self, object_id: int, instance_id: int,
                     values: Mapping[int, Value | Mapping[int, Value]]) -> LwM2mPath:
        """Add an instance with these resource values (mandatory executable resources are added too)."""
        self.add_object(object_id)
        odef = self._definition(object_id)
        LwM2mPath.of(object_id, instance_id)  # validates the id
        stored: dict[int, Stored] = {}
        for rid, v in values.items():
            rdef = odef.resource(rid)
            if rdef is None:
                raise ModelError(f"object {object_id} has no resource {rid}")
            stored[rid] = self._stored(rdef, v)
        for rid, rdef in odef.resources.items():
            if rdef.executable and (rdef.mandatory or (object_id, rid) in self._any_handlers):
                stored.setdefault(rid, None)
        self._data[object_id][instance_id] = stored
        return LwM2mPath.of(object_id, instance_id)

    def raw_instance(self, object_id: int, instance_id: int) -> dict[int, Stored]:
        """A copy of one instance's stored values as the device sees them (no access control: /0 too)."""
        inst = self._instance(object_id, instance_id)
        bound = {p.ids[2]: g for p, g in self._getters.items() if p.ids[:2] == (object_id, instance_id)}
        return {rid: copy.copy(bound[rid]() if rid in bound else v) for rid, v in inst.items()}

    def remove_instance(self, object_id: int, instance_id: int) -> bool:
        """Remove an instance as the device itself (or a bootstrap server) does; False when there was none."""
        if instance_id not in self._data.get(object_id, {}):
            return False
        path = LwM2mPath.of(object_id, instance_id)
        del self._data[object_id][instance_id]
        for table in (self._attrs, self._handlers, self._getters, self._setters):
            for p in [p for p in table if path.covers(p)]:
                del table[p]
        self._emit([Change(path, ChangeKind.STRUCTURE)])
        return True

    def bootstrap_write(self, path: LwM2mPath, node: Node) -> None:
        """Bootstrap-Write (LwM2M 1.1 Core 5.2.7.4): no access control, instances are created when missing, any
        resource of the model may be written (read-only ones such as /1/x/0 too) and the values given replace the
        ones there (others stay). All or nothing; 4.00 for a payload that does not fit the path or the model."""
        if path.is_root:
            raise OperationNotAllowedError("Bootstrap-Write targets an object, an instance or a resource")
        oid = path.ids[0]
        odef = self._definition(oid)
        staged: dict[int, dict[int, Stored]] = {}
        created: list[int] = []

        def instance(iid: int) -> dict[int, Stored]:
            if iid not in staged:
                current = self._data.get(oid, {}).get(iid)
                if current is None:
                    others = [i for i in self._data.get(oid, {}) if i != iid]
                    if not odef.multiple and (others or created):
                        raise BadValueError(f"object {oid} is single-instance and already has an instance")
                    created.append(iid)
                staged[iid] = dict(current) if current is not None else {}
            return staged[iid]

        def value(iid: int, rid: int, res: Node) -> Stored:
            rdef = odef.resource(rid)
            if rdef is None:
                raise PathNotFoundError(f"object {oid} has no resource {rid}")
            if rdef.executable:
                raise BadValueError(f"resource {rid} of object {oid} is executable and takes no value")
            if LwM2mPath.of(oid, iid, rid) in self._getters:
                raise OperationNotAllowedError(f"resource {rid} of object {oid} cannot be bootstrap-written")
            return self._stored_from_node(rdef, res)

        if path.depth == 1:
            if not isinstance(node, Obj) or node.id != oid:
                raise BadValueError(f"object {oid} was expected for {path}")
            for inst in node.instances.values():
                target = instance(inst.id)
                target.update({rid: value(inst.id, rid, res) for rid, res in inst.resources.items()})
        elif path.depth == 2:
            if not isinstance(node, Instance) or node.id != path.ids[1]:
                raise BadValueError(f"an instance {path.ids[1]} was expected for {path}")
            target = instance(node.id)
            target.update({rid: value(node.id, rid, res) for rid, res in node.resources.items()})
        elif path.depth == 3:
            instance(path.ids[1])[path.ids[2]] = value(path.ids[1], path.ids[2], node)
        else:
            rdef = self._resource_definition(oid, path.ids[2])
            if not rdef.multiple:
                raise PathNotFoundError(f"{path.parent} is not a multiple resource")
            if not isinstance(node, ResourceInstance) or node.id != path.ids[3] or node.type is not rdef.type:
                raise BadValueError(f"a resource instance {path.ids[3]} of type {rdef.type.value} was expected")
            target = instance(path.ids[1])
            current = target.get(rdef.id)
            target[rdef.id] = {**(current if isinstance(current, dict) else {}), path.ids[3]: node.value}
        for iid in created:
            for rid, rdef in odef.resources.items():
                if rid in staged[iid]:
                    continue
                if rdef.executable and (rdef.mandatory or (oid, rid) in self._any_handlers):
                    staged[iid][rid] = None
                elif rdef.mandatory and not rdef.executable:
                    staged[iid][rid] = {} if rdef.multiple else DEFAULT_VALUES[rdef.type]
        changes: list[Change] = []
        objects = self._data.setdefault(oid, {})
        for iid, new in staged.items():
            if iid in created:
                changes.append(Change(LwM2mPath.of(oid, iid), ChangeKind.STRUCTURE))
            else:
                old = objects[iid]
                changed = [r for r in sorted(set(old) | set(new)) if old.get(r, _MISSING) != new.get(r, _MISSING)]
                changes.extend(Change(LwM2mPath.of(oid, iid, rid), ChangeKind.VALUE) for rid in changed)
            objects[iid] = new
        if changes:
            self._emit(changes)

    def set_value(self, path: LwM2mPath, value: Value | Mapping[int, Value]) -> None:
        """Set a resource (or resource instance) as the device itself would; listeners hear of a change."""
        if path.depth not in (3, 4):
            raise ModelError(f"set_value needs a resource path, not {path}")
        oid, iid, rid = path.ids[:3]
        inst = self._instance(oid, iid)
        rdef = self._resource_definition(oid, rid)
        if path.depth == 3:
            new = self._stored(rdef, value)
            old = inst.get(rid, _MISSING)
            inst[rid] = new
        else:
            if not rdef.multiple:
                raise ModelError(f"{path.parent} is not a multiple resource")
            check_value(rdef.type, value)  # type: ignore[arg-type]
            current = inst.get(rid)
            multi = dict(current) if isinstance(current, dict) else {}
            old = multi.get(path.ids[3], _MISSING)
            multi[path.ids[3]] = value  # type: ignore[assignment]
            inst[rid] = multi
            new = value  # type: ignore[assignment]
        if old != new:
            self._emit([Change(path, ChangeKind.VALUE)])

    def sync_instances(self, object_id: int, rows: Sequence[Mapping[int, Value]]) -> None:
        """Make instances 0..len(rows)-1 of ``object_id`` hold ``rows`` (the object is added when missing, other
        instances are removed), as the device itself: listeners hear of each new or removed instance (STRUCTURE)
        and of each resource whose value changed."""
        self.add_object(object_id)
        objects = self._data[object_id]
        changes: list[Change] = []
        checked = [{rid: self._stored(self._resource_definition(object_id, rid), v) for rid, v in row.items()}
                   for row in rows]
        for iid in [i for i in objects if i >= len(rows)]:
            self.remove_instance(object_id, iid)
        for iid, (row, stored) in enumerate(zip(rows, checked, strict=True)):
            current = objects.get(iid)
            if current is None:
                self.add_instance(object_id, iid, row)
                changes.append(Change(LwM2mPath.of(object_id, iid), ChangeKind.STRUCTURE))
                continue
            for rid, value in stored.items():
                if current.get(rid, _MISSING) != value:
                    current[rid] = value
                    changes.append(Change(LwM2mPath.of(object_id, iid, rid), ChangeKind.VALUE))
        if changes:
            self._emit(changes)

    def get_value(self, path: LwM2mPath) -> Stored:
        """The current value of a resource (a dict for a multiple one), as the device sees it."""
        oid, iid, rid = path.ids[:3]
        inst = self._instance(oid, iid)
        if rid not in inst:
            raise PathNotFoundError(f"{path} not found")
        value = self._current(LwM2mPath.of(oid, iid, rid), inst[rid])
        if path.depth == 4:
            if not isinstance(value, dict) or path.ids[3] not in value:
                raise PathNotFoundError(f"{path} not found")
            return value[path.ids[3]]
        return copy.copy(value)

    def bind(self, path: LwM2mPath, getter: Callable[[], Value],
             setter: Callable[[Value], None] | None = None) -> None:
        """Let a single resource follow something outside the tree (a clock): reads call ``getter``, writes
        call ``setter``. Change notices for it are the binder's job (see :meth:`touch`)."""
        rdef = self._resource_definition(path.ids[0], path.ids[2]) if path.depth == 3 else None
        if rdef is None or rdef.multiple:
            raise ModelError(f"only single resources can be bound, not {path}")
        self._instance(path.ids[0], path.ids[1]).setdefault(path.ids[2], getter())
        self._getters[path] = getter
        if setter is not None:
            self._setters[path] = setter

    def touch(self, path: LwM2mPath) -> None:
        """Tell listeners a value under ``path`` changed (for bound resources)."""
        self._emit([Change(path, ChangeKind.VALUE)])

    def on_execute(self, path: LwM2mPath, handler: ExecuteHandler) -> None:
        """Run ``handler(arguments)`` when the server executes ``path``."""
        if path.depth != 3:
            raise ModelError(f"an executable resource path is /O/I/R, not {path}")
        rdef = self._resource_definition(path.ids[0], path.ids[2])
        if not rdef.executable:
            raise ModelError(f"{path} is not executable in the model")
        self._handlers[path] = handler

    def on_execute_any(self, object_id: int, resource_id: int, handler: ExecuteHandler) -> None:
        """Run ``handler(arguments)`` when the server executes ``/object_id/*/resource_id`` on any instance, also
        on instances created later (they get the resource even when the model marks it optional)."""
        rdef = self._resource_definition(object_id, resource_id)
        if not rdef.executable:
            raise ModelError(f"/{object_id}/x/{resource_id} is not executable in the model")
        self._any_handlers[(object_id, resource_id)] = handler
        for inst in self._data.get(object_id, {}).values():
            inst.setdefault(resource_id, None)

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener`` after every applied change; returns the function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def mark_initial(self) -> None:
        """Remember the current values as the factory state :meth:`factory_reset` returns to."""
        self._initial = copy.deepcopy(self._data)

    def factory_reset(self) -> None:
        """Return to the state of :meth:`mark_initial` and forget every written attribute."""
        if self._initial is None:
            raise ModelError("no factory state was marked")
        self._data = copy.deepcopy(self._initial)
        self._attrs.clear()
        self._emit([Change(LwM2mPath.of(oid), ChangeKind.STRUCTURE) for oid in self._data])

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self._data))

    def instance_ids(self, object_id: int) -> tuple[int, ...]:
        return tuple(sorted(self._data.get(object_id, {})))

    def registration_links(self) -> tuple[Link, ...]:
        """The object links of a Register/Update payload: ``</O/I>`` per instance (``</O>`` for an object
        without instances); when the object version is not 1.0, ``</O>;ver=X`` before them (``ver`` is an
        Object-level attribute: never on an instance link, Leshan refuses that Register); protected objects left
        out."""
        links: list[Link] = []
        for oid in self.object_ids:
            if oid in PROTECTED_OBJECTS:
                continue
            odef = self._definition(oid)
            attrs: tuple[tuple[str, str | None], ...] = ()
            if odef.version != "1.0" and oid not in CORE_OBJECTS_WITHOUT_VERSION:
                attrs = (("ver", odef.version),)
            iids = self.instance_ids(oid)
            if attrs or not iids:
                links.append(Link(f"/{oid}", attrs))
            links.extend(Link(f"/{oid}/{iid}") for iid in iids)
        return tuple(links)

    # ------------------------------------------------------------------ server operations

    def read(self, path: LwM2mPath) -> Node:
        """Read an object, instance, resource or resource instance (readable resources only)."""
        self._guard(path, "Read")
        oid = path.ids[0]
        if path.depth == 1:
            return Obj(oid, {iid: self._read_instance(oid, iid) for iid in self.instance_ids(oid)})
        iid = path.ids[1]
        if path.depth == 2:
            self._instance(oid, iid)
            return self._read_instance(oid, iid)
        rdef, value = self._existing_resource(path)
        if not rdef.readable:
            raise OperationNotAllowedError(f"resource {path} is not readable")
        if path.depth == 3:
            return self._resource_node(rdef, value)
        assert isinstance(value, dict)
        return ResourceInstance(path.ids[3], rdef.type, value[path.ids[3]])

    def read_composite(self, paths: Iterable[LwM2mPath]) -> dict[LwM2mPath, Node]:
        """Read-Composite: each path read on its own; paths that do not exist are left out, the root reads
        every object a server may see. Any other failure fails the whole read."""
        out: dict[LwM2mPath, Node] = {}
        for path in paths:
            if path.is_root:
                for oid in self.object_ids:
                    if oid not in PROTECTED_OBJECTS:
                        out[LwM2mPath.of(oid)] = self.read(LwM2mPath.of(oid))
                continue
            try:
                out[path] = self.read(path)
            except PathNotFoundError:
                continue
        return out

    def write(self, path: LwM2mPath, node: Node, *, replace: bool) -> None:
        """Write (replace or partial update) an instance, a resource or a resource instance."""
        self._apply_writes([(path, node, replace)])

    def write_composite(self, nodes: Mapping[LwM2mPath, Node]) -> None:
        """Write-Composite: resources and resource instances are replaced, instances partially updated;
        all or nothing."""
        if not nodes:
            raise BadValueError("Write-Composite without any value")
        self._apply_writes([(p, n, p.depth >= 3) for p, n in nodes.items()])

    def execute(self, path: LwM2mPath, arguments: str = "") -> None:
        """Execute a resource the model marks E, passing the arguments to its handler (if any)."""
        self._guard(path, "Execute")
        if path.depth != 3:
            raise OperationNotAllowedError(f"Execute targets a resource, not {path}")
        rdef, _ = self._existing_resource(path)
        if not rdef.executable:
            raise OperationNotAllowedError(f"resource {path} is not executable")
        parse_execute_arguments(arguments)
        handler = self._handlers.get(path) or self._any_handlers.get((path.ids[0], path.ids[2]))
        if handler is not None:
            handler(arguments)

    def create(self, path: LwM2mPath, instance: Instance, *, assign_id: bool = False) -> LwM2mPath:
        """Create an instance of the object at ``path`` (the lowest free id when ``assign_id``); mandatory
        resources the payload leaves out get their type's default value. Returns the new instance's path."""
        self._guard(path, "Create")
        if path.depth != 1:
            raise OperationNotAllowedError(f"Create targets an object, not {path}")
        oid = path.ids[0]
        odef = self._definition(oid)
        existing = self._data[oid]
        if not odef.multiple and existing:
            raise BadValueError(f"object {oid} is single-instance and already has an instance")
        iid = instance.id
        if assign_id:
            iid = next(i for i in range(65535) if i not in existing)
        if iid in existing:
            raise BadValueError(f"instance /{oid}/{iid} already exists")
        new_path = LwM2mPath.of(oid, iid)
        stored: dict[int, Stored] = {}
        for rid, res in instance.resources.items():
            rdef = odef.resource(rid)
            if rdef is None:
                raise BadValueError(f"object {oid} has no resource {rid}")
            if rdef.executable:
                raise BadValueError(f"resource {rid} of object {oid} is executable and takes no value")
            stored[rid] = self._stored_from_node(rdef, res)
        for rid, rdef in odef.resources.items():
            if rdef.mandatory and rid not in stored:
                stored[rid] = {} if rdef.multiple else DEFAULT_VALUES[rdef.type]
            elif rdef.executable and (oid, rid) in self._any_handlers:
                stored.setdefault(rid, None)
        existing[iid] = stored
        self._emit([Change(new_path, ChangeKind.STRUCTURE)])
        return new_path

    def delete(self, path: LwM2mPath) -> None:
        """Delete an object instance (not of a mandatory single-instance object such as /3)."""
        self._guard(path, "Delete")
        if path.depth != 2:
            raise OperationNotAllowedError(f"Delete targets an object instance, not {path}")
        oid, iid = path.ids
        self._instance(oid, iid)
        odef = self._definition(oid)
        if odef.mandatory and not odef.multiple:
            raise OperationNotAllowedError(f"the instance of mandatory object {oid} cannot be deleted")
        del self._data[oid][iid]
        for table in (self._attrs, self._handlers, self._getters, self._setters):
            for p in [p for p in table if path.covers(p)]:
                del table[p]
        self._emit([Change(path, ChangeKind.STRUCTURE)])

    def discover(self, path: LwM2mPath) -> tuple[Link, ...]:
        """Discover: the target and what lies below it, with the attributes attached at each level
        (``dim`` for multiple resources); a resource shows its inherited attributes too."""
        self._guard(path, "Discover")
        oid = path.ids[0]
        links: list[Link] = []
        if path.depth == 1:
            odef = self._definition(oid)
            version = () if odef.version == "1.0" else (("ver", odef.version),)
            links.append(Link(f"/{oid}", (*version, *self._attr_items(self._attrs.get(path, {})))))
            for iid in self.instance_ids(oid):
                links.extend(self._instance_links(oid, iid))
        elif path.depth == 2:
            self._instance(oid, path.ids[1])
            links.extend(self._instance_links(oid, path.ids[1]))
        else:
            _, value = self._existing_resource(path)
            dim = (("dim", str(len(value))),) if isinstance(value, dict) and path.depth == 3 else ()
            links.append(Link(str(path), (*dim, *self._attr_items(self.effective_attributes(path)))))
            if path.depth == 3 and isinstance(value, dict):
                for riid in sorted(value):
                    ri = path.child(riid)
                    links.append(Link(str(ri), self._attr_items(self._attrs.get(ri, {}))))
        return tuple(links)

    def write_attributes(self, path: LwM2mPath, attributes: Mapping[str, str | None]) -> None:
        """Write-Attributes: set notification attributes on a path; a ``None`` or empty value removes one.
        Refused (4.00) unless the result keeps pmin <= pmax, epmin <= epmax, lt < gt and lt + 2*st < gt,
        and gt/lt/st sit on numeric resources."""
        self._guard(path, "Write-Attributes")
        rdef: ResourceDefinition | None = None
        if path.depth == 2:
            self._instance(path.ids[0], path.ids[1])
        elif path.depth >= 3:
            rdef, _ = self._existing_resource(path)
            if rdef.executable:
                raise OperationNotAllowedError(f"resource {path} is executable and has no attributes")
        merged = dict(self._attrs.get(path, {}))
        for name, value in attributes.items():
            if name not in ATTRIBUTE_ORDER:
                raise BadValueError(f"unknown attribute {name!r}")
            if value is None or value == "":
                merged.pop(name, None)
                continue
            if name in _FLOAT_ATTRS:
                if rdef is None or rdef.type not in NUMERIC_TYPES or (rdef.multiple and path.depth == 3):
                    raise BadValueError(f"{name} applies to a numeric single resource or resource instance")
                try:
                    number = float(value)
                except ValueError:
                    raise BadValueError(f"{name}={value!r} is not a number") from None
                if not math.isfinite(number) or (name == "st" and number < 0):
                    raise BadValueError(f"{name}={value!r} out of range")
            elif name in _INT_ATTRS or name in _FLAG_ATTRS:
                if not value.isascii() or not value.isdigit():
                    raise BadValueError(f"{name}={value!r} is not a non-negative integer")
                if name in _FLAG_ATTRS and value not in ("0", "1"):
                    raise BadValueError(f"{name} is 0 or 1, not {value!r}")
            merged[name] = value
        self._check_attribute_set(merged)
        if merged:
            self._attrs[path] = merged
        else:
            self._attrs.pop(path, None)
        self._emit([Change(path, ChangeKind.ATTRIBUTES)])

    def attributes(self, path: LwM2mPath) -> dict[str, str]:
        """The attributes written on exactly this path."""
        return dict(self._attrs.get(path, {}))

    def effective_attributes(self, path: LwM2mPath) -> dict[str, str]:
        """The attributes that apply to ``path``: those of the object, then instance, resource and resource
        instance levels, each deeper level overriding."""
        out: dict[str, str] = {}
        for depth in range(1, path.depth + 1):
            out.update(self._attrs.get(LwM2mPath(path.ids[:depth]), {}))
        return out

    # ------------------------------------------------------------------ internals

    def _emit(self, changes: list[Change]) -> None:
        for listener in list(self._listeners):
            for change in changes:
                listener(change)

    def _definition(self, object_id: int) -> ObjectDefinition:
        odef = self.model.get(object_id)
        if odef is None:
            raise PathNotFoundError(f"object {object_id} is not in the model")
        return odef

    def _resource_definition(self, object_id: int, resource_id: int) -> ResourceDefinition:
        rdef = self._definition(object_id).resource(resource_id)
        if rdef is None:
            raise PathNotFoundError(f"object {object_id} has no resource {resource_id}")
        return rdef

    def _guard(self, path: LwM2mPath, operation: str) -> None:
        if path.is_root:
            raise OperationNotAllowedError(f"{operation} on the root path is not allowed")
        oid = path.ids[0]
        if oid in PROTECTED_OBJECTS:
            raise NotAuthorizedError(f"object {oid} is not accessible to a management server")
        if oid not in self._data:
            raise PathNotFoundError(f"object {oid} not found")

    def _instance(self, object_id: int, instance_id: int) -> dict[int, Stored]:
        try:
            return self._data[object_id][instance_id]
        except KeyError:
            raise PathNotFoundError(f"/{object_id}/{instance_id} not found") from None

    def _existing_resource(self, path: LwM2mPath) -> tuple[ResourceDefinition, Stored]:
        oid, iid, rid = path.ids[:3]
        inst = self._instance(oid, iid)
        rdef = self.model.resource(oid, rid)
        if rdef is None or rid not in inst:
            raise PathNotFoundError(f"{LwM2mPath.of(oid, iid, rid)} not found")
        value = self._current(LwM2mPath.of(oid, iid, rid), inst[rid])
        if path.depth == 4 and (not isinstance(value, dict) or path.ids[3] not in value):
            raise PathNotFoundError(f"{path} not found")
        return rdef, value

    def _current(self, resource_path: LwM2mPath, stored: Stored) -> Stored:
        getter = self._getters.get(resource_path)
        return getter() if getter is not None else stored

    def _read_instance(self, oid: int, iid: int) -> Instance:
        odef = self._definition(oid)
        resources: list[SingleResource | MultipleResource] = []
        for rid, stored in sorted(self._data[oid][iid].items()):
            rdef = odef.resource(rid)
            if rdef is not None and rdef.readable:
                resources.append(self._resource_node(rdef, self._current(LwM2mPath.of(oid, iid, rid), stored)))
        return Instance.of(iid, resources)

    @staticmethod
    def _resource_node(rdef: ResourceDefinition, value: Stored) -> SingleResource | MultipleResource:
        if rdef.multiple:
            assert isinstance(value, dict)
            return MultipleResource(rdef.id, rdef.type, dict(sorted(value.items())))
        assert not isinstance(value, dict)
        return SingleResource(rdef.id, rdef.type, value)

    @staticmethod
    def _stored(rdef: ResourceDefinition, value: Value | Mapping[int, Value]) -> Stored:
        try:
            if rdef.multiple:
                if not isinstance(value, Mapping):
                    raise ModelError(f"resource {rdef.id} is multiple: give {{instance id: value}}")
                for v in value.values():
                    check_value(rdef.type, v)
                return dict(value)
            if isinstance(value, Mapping):
                raise ModelError(f"resource {rdef.id} is single: give one value")
            check_value(rdef.type, value)
            return value
        except ModelError as e:
            raise ModelError(f"resource {rdef.id} ({rdef.name}): {e}") from None

    @staticmethod
    def _stored_from_node(rdef: ResourceDefinition, node: Node) -> Stored:
        """Check a resource node from a request against its definition and return what to store."""
        if isinstance(node, SingleResource | MultipleResource) and node.id != rdef.id:
            raise BadValueError(f"resource {node.id} given where {rdef.id} was expected")
        if isinstance(node, SingleResource):
            if rdef.multiple:
                raise BadValueError(f"resource {rdef.id} is multiple, a single value was given")
            if node.type is not rdef.type:
                raise BadValueError(f"resource {rdef.id} is {rdef.type.value}, not {node.type.value}")
            _check_range(rdef, node.value)
            return node.value
        if isinstance(node, MultipleResource):
            if not rdef.multiple:
                raise BadValueError(f"resource {rdef.id} is single, several values were given")
            if node.type is not rdef.type:
                raise BadValueError(f"resource {rdef.id} is {rdef.type.value}, not {node.type.value}")
            for v in node.instances.values():
                _check_range(rdef, v)
            return dict(node.instances)
        raise BadValueError(f"a resource was expected, not {type(node).__name__}")

    def _apply_writes(self, items: list[tuple[LwM2mPath, Node, bool]]) -> None:
        """Check every write against the current state, then apply them all (or none)."""
        staged: dict[tuple[int, int], dict[int, Stored]] = {}
        setter_calls: list[tuple[LwM2mPath, Value]] = []
        for path, node, replace in items:
            self._guard(path, "Write")
            if path.depth == 1:
                raise OperationNotAllowedError(f"Write on an object ({path}) is not allowed")
            oid, iid = path.ids[:2]
            key = (oid, iid)
            if key not in staged:
                staged[key] = dict(self._instance(oid, iid))
            inst = staged[key]
            odef = self._definition(oid)
            if path.depth == 2:
                if not isinstance(node, Instance) or node.id != iid:
                    raise BadValueError(f"an instance {iid} was expected for {path}")
                updates = {rid: self._writable(odef, path.child(rid), res) for rid, res in node.resources.items()}
                if replace:
                    for rid, rdef in odef.resources.items():
                        bound = path.child(rid) in self._getters
                        if rdef.writable and not rdef.mandatory and rid not in updates and not bound:
                            inst.pop(rid, None)
                for rid, value in updates.items():
                    rdef = odef.resources[rid]
                    self._stage(inst, rdef, path.child(rid), value, replace, setter_calls)
            elif path.depth == 3:
                rdef, _ = self._existing_resource(path)
                value = self._writable(odef, path, node)
                self._stage(inst, rdef, path, value, replace, setter_calls)
            else:
                rdef = self._resource_definition(oid, path.ids[2])
                if not rdef.multiple or path.ids[2] not in inst:
                    raise PathNotFoundError(f"{path.parent} is not a multiple resource of {path.parent.parent}")
                if not rdef.writable:
                    raise OperationNotAllowedError(f"resource {path.parent} is not writable")
                if not isinstance(node, ResourceInstance) or node.id != path.ids[3]:
                    raise BadValueError(f"a resource instance {path.ids[3]} was expected for {path}")
                if node.type is not rdef.type:
                    raise BadValueError(f"resource {rdef.id} is {rdef.type.value}, not {node.type.value}")
                _check_range(rdef, node.value)
                current = inst[path.ids[2]]
                inst[path.ids[2]] = {**(current if isinstance(current, dict) else {}), path.ids[3]: node.value}
        changes: list[Change] = []
        for (oid, iid), new in staged.items():
            old = self._data[oid][iid]
            for rid in sorted(set(old) | set(new)):
                if old.get(rid, _MISSING) != new.get(rid, _MISSING):
                    changes.append(Change(LwM2mPath.of(oid, iid, rid), ChangeKind.VALUE))
            self._data[oid][iid] = new
        for path, value in setter_calls:
            self._setters[path](value)
            changes.append(Change(path, ChangeKind.VALUE))
        if changes:
            self._emit(changes)

    def _writable(self, odef: ObjectDefinition, path: LwM2mPath, node: Node) -> Stored:
        rid = path.ids[2]
        rdef = odef.resource(rid)
        if rdef is None:
            raise PathNotFoundError(f"object {odef.id} has no resource {rid}")
        if not rdef.writable:
            raise OperationNotAllowedError(f"resource {path} is not writable")
        return self._stored_from_node(rdef, node)

    def _stage(self, inst: dict[int, Stored], rdef: ResourceDefinition, path: LwM2mPath, value: Stored,
               replace: bool, setter_calls: list[tuple[LwM2mPath, Value]]) -> None:
        if path in self._getters:
            if path not in self._setters:
                raise OperationNotAllowedError(f"resource {path} cannot be written on this device")
            assert not isinstance(value, dict)
            setter_calls.append((path, value))
            return
        current = inst.get(rdef.id)
        if rdef.multiple and not replace and isinstance(current, dict) and isinstance(value, dict):
            inst[rdef.id] = {**current, **value}
        else:
            inst[rdef.id] = value

    def _instance_links(self, oid: int, iid: int) -> list[Link]:
        ipath = LwM2mPath.of(oid, iid)
        links = [Link(str(ipath), self._attr_items(self._attrs.get(ipath, {})))]
        odef = self._definition(oid)
        for rid, stored in sorted(self._data[oid][iid].items()):
            rpath = ipath.child(rid)
            rdef = odef.resource(rid)
            dim: tuple[tuple[str, str | None], ...] = ()
            if rdef is not None and rdef.multiple and isinstance(stored, dict):
                dim = (("dim", str(len(stored))),)
            links.append(Link(str(rpath), (*dim, *self._attr_items(self._attrs.get(rpath, {})))))
        return links

    @staticmethod
    def _attr_items(attrs: Mapping[str, str]) -> tuple[tuple[str, str | None], ...]:
        return tuple((name, attrs[name]) for name in ATTRIBUTE_ORDER if name in attrs)

    @staticmethod
    def _check_attribute_set(attrs: Mapping[str, str]) -> None:
        def num(name: str) -> float | None:
            return float(attrs[name]) if name in attrs else None

        pmin, pmax, epmin, epmax = num("pmin"), num("pmax"), num("epmin"), num("epmax")
        gt, lt, st = num("gt"), num("lt"), num("st")
        if pmin is not None and pmax is not None and pmax < pmin:
            raise BadValueError(f"pmax {attrs['pmax']} is less than pmin {attrs['pmin']}")
        if epmin is not None and epmax is not None and epmax < epmin:
            raise BadValueError(f"epmax {attrs['epmax']} is less than epmin {attrs['epmin']}")
        if gt is not None and lt is not None:
            if not lt < gt:
                raise BadValueError(f"lt {attrs['lt']} must be less than gt {attrs['gt']}")
            if st is not None and not lt + 2 * st < gt:
                raise BadValueError("lt + 2*st must be less than gt")
