"""A simulated device's "system": several named components (images and data files) installed all or none.

Sans I/O. :class:`ComponentSystem` holds the active set of components and, once a verified system envelope has
been staged, the complete new set (A/B of the whole set, beside Object 5's two slots). :meth:`~ComponentSystem.stage`
builds every named component's content (its payload, or its delta applied to the installed content of that name);
components the release does not name are carried over as they are. A boot commits the staged set or, when any
component fails its health check, keeps the old set: all or none.

Invariants: the active set always holds what last passed a boot (or the initial set); a failed stage leaves nothing
staged; :meth:`~ComponentSystem.rows` gives the Object 32700 resource values of each component, instance i being
component i (install order; a component a release adds takes the next id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from firmware_object.errors import FirmwareError, UpdateResult
from firmware_object.suit.components import (
    COMPONENT_NAME,
    ComponentKind,
    VerifiedSystem,
    apply_component,
)
from lwm2m_server.core.model.firmware_component import ComponentResource as R
from lwm2m_server.core.model.firmware_component import ComponentState
from lwm2m_server.core.nodes import Value

__all__ = ["ComponentStatus", "ComponentSystem", "InstalledComponent", "StagedSystem", "parse_components"]

KINDS: tuple[ComponentKind, ...] = ("image", "data")


@dataclass(frozen=True)
class InstalledComponent:
    """One component as a device holds it: ``content`` is the whole image or data file."""

    name: str
    kind: ComponentKind
    version: str
    content: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not COMPONENT_NAME.fullmatch(self.name):
            raise ValueError(f"bad component name {self.name!r}: {COMPONENT_NAME.pattern}")
        if self.kind not in KINDS:
            raise ValueError(f"component kind is image or data, not {self.kind!r}")

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.content).digest()

    @classmethod
    def generated(cls, name: str, version: str, size: int, kind: ComponentKind = "image") -> InstalledComponent:
        """A component whose ``size`` bytes of content follow from ``name`` and ``version`` alone (the same on
        every run and every device)."""
        if size < 0:
            raise ValueError("a component's size cannot be negative")
        return cls(name, kind, version, hashlib.shake_256(f"{name}@{version}".encode()).digest(size))


def parse_components(spec: str) -> tuple[InstalledComponent, ...]:
    """``app=1.0.0:65536,radio=1.0.0:32768,config=1.0.0:512:data`` (NAME=VERSION:SIZE[:KIND], KIND image by
    default) as generated components; ValueError naming the bad item."""
    components: list[InstalledComponent] = []
    for item in (part.strip() for part in spec.split(",")):
        name, _, rest = item.partition("=")
        fields = rest.split(":")
        if not name or len(fields) not in (2, 3) or not fields[0] or not fields[1].isdigit():
            raise ValueError(f"{item!r}: expected NAME=VERSION:SIZE[:image|data]")
        kind = fields[2] if len(fields) == 3 else "image"
        if kind not in KINDS:
            raise ValueError(f"{item!r}: the kind is image or data")
        components.append(InstalledComponent.generated(name, fields[0], int(fields[1]), kind))  # type: ignore[arg-type]
    check_components(components)
    return tuple(components)


def check_components(components: tuple[InstalledComponent, ...] | list[InstalledComponent]) -> None:
    """ValueError unless there is at least one component and no name is given twice."""
    names = [c.name for c in components]
    if not names:
        raise ValueError("a system has at least one component")
    if len(set(names)) != len(names):
        raise ValueError(f"a component name is given twice: {', '.join(names)}")


@dataclass(frozen=True)
class ComponentStatus:
    """What Object 32700 reports of a component besides its content: State, Update Result, Pending Version."""

    state: int = ComponentState.INSTALLED
    result: int = UpdateResult.INITIAL
    pending: str = ""


@dataclass(frozen=True)
class StagedSystem:
    """The complete set a boot will try: ``components`` in instance order, ``named`` those the release installs."""

    version: str
    components: tuple[InstalledComponent, ...]
    named: tuple[str, ...]


class ComponentSystem:
    """The active set of components, the staged one, and each component's reported status."""

    def __init__(self, components: tuple[InstalledComponent, ...]) -> None:
        check_components(components)
        self.active: tuple[InstalledComponent, ...] = components
        self.staged: StagedSystem | None = None
        self.status: dict[str, ComponentStatus] = {c.name: ComponentStatus() for c in components}

    def component(self, name: str) -> InstalledComponent | None:
        return next((c for c in self.active if c.name == name), None)

    def stage(self, verified: VerifiedSystem) -> StagedSystem:
        """Build the complete new set from ``verified`` (components in its install order) and stage it. A step that
        fails raises its :class:`FirmwareError` (the failing component, when the device has it, is marked FAILED
        with the error's Update Result) and nothing is staged."""
        self.discard()
        installed = {c.name: c for c in self.active}
        built: dict[str, InstalledComponent] = {}
        for component in verified.components:
            base = installed.get(component.name)
            try:
                content = apply_component(component, base.content if base is not None else None)
            except FirmwareError as e:
                if component.name in self.status:
                    self.status[component.name] = ComponentStatus(ComponentState.FAILED, e.update_result)
                raise
            built[component.name] = InstalledComponent(component.name, component.kind, component.version, content)
        new = [built.get(c.name, c) for c in self.active] + [c for n, c in built.items() if n not in installed]
        self.staged = StagedSystem(verified.version, tuple(new), tuple(built))
        for name in self.staged.named:
            old = self.status.get(name, ComponentStatus())
            self.status[name] = replace(old, state=ComponentState.STAGED, pending=built[name].version)
        return self.staged

    def discard(self) -> None:
        """Drop the staged set (a cancelled or replaced package); its components are back to INSTALLED."""
        staged, self.staged = self.staged, None
        if staged is None:
            return
        for name in staged.named:
            if name in self.status and self.component(name) is not None:
                self.status[name] = replace(self.status[name], state=ComponentState.INSTALLED, pending="")
            else:
                self.status.pop(name, None)  # a component the release added never became one

    def will_install(self, name: str) -> bool:
        """Whether the staged set installs (a new version of) component ``name``."""
        return self.staged is not None and name in self.staged.named

    def commit(self) -> None:
        """The staged set booted and passed its health checks: it is the active set; every component it installed
        is INSTALLED with Update Result 1."""
        staged, self.staged = self.staged, None
        if staged is None:
            return
        self.active = staged.components
        for c in self.active:
            old = self.status.get(c.name, ComponentStatus())
            result = UpdateResult.SUCCESS if c.name in staged.named else old.result
            self.status[c.name] = ComponentStatus(ComponentState.INSTALLED, result)

    def roll_back(self, failed: str | None = None) -> None:
        """The staged set did not come up (``failed`` failed its health check; None: the install as a whole
        failed): the old set stays active, ``failed`` is FAILED, every other staged component ROLLED_BACK, each
        with Update Result 8."""
        staged, self.staged = self.staged, None
        if staged is None:
            return
        for name in staged.named:
            if self.component(name) is None:
                self.status.pop(name, None)
                continue
            state = ComponentState.FAILED if name == failed else ComponentState.ROLLED_BACK
            self.status[name] = ComponentStatus(state, UpdateResult.UPDATE_FAILED)

    def rows(self) -> list[Mapping[int, Value]]:
        """The Object 32700 resource values of each active component, in instance order."""
        rows: list[Mapping[int, Value]] = []
        for c in self.active:
            status = self.status.get(c.name, ComponentStatus())
            rows.append({R.NAME: c.name, R.KIND: c.kind, R.VERSION: c.version, R.DIGEST: c.digest,
                         R.SIZE: len(c.content), R.STATE: status.state, R.UPDATE_RESULT: int(status.result),
                         R.PENDING_VERSION: status.pending})
        return rows
