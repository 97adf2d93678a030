"""LwM2M paths: ``/O``, ``/O/I``, ``/O/I/R``, ``/O/I/R/RI`` and the root ``/``.

Invariant: a :class:`LwM2mPath` holds 0 to 4 ids, each in 0..65535; an object instance id or resource instance id
of 65535 is reserved (LwM2M Core 7.2) and refused. Paths order as their id tuples do, so sorting a list of paths
gives the order a tree walk produces.
"""

from __future__ import annotations

from dataclasses import dataclass

from lwm2m_server.core.errors import InvalidPathError

MAX_ID = 65535


@dataclass(frozen=True, slots=True, order=True)
class LwM2mPath:
    """An LwM2M path. ``prefix`` is the gateway prefix of a device behind an edge gateway ('' when direct)."""

    ids: tuple[int, ...] = ()
    prefix: str = ""

    def __post_init__(self) -> None:
        if len(self.ids) > 4:
            raise InvalidPathError(f"an LwM2M path has at most 4 levels, not {len(self.ids)}")
        for level, i in enumerate(self.ids):
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_ID:
                raise InvalidPathError(f"id {i!r} out of range 0..{MAX_ID}")
            if i == MAX_ID and level in (1, 3):
                raise InvalidPathError(f"instance id {MAX_ID} is reserved")

    @classmethod
    def of(cls, *ids: int) -> LwM2mPath:
        return cls(tuple(ids))

    @classmethod
    def parse(cls, text: str) -> LwM2mPath:
        """Parse ``/3/0/1`` (a leading slash is optional, a trailing one is tolerated; the root is exactly ``/``)."""
        if not isinstance(text, str):
            raise InvalidPathError(f"path must be a string, not {type(text).__name__}")
        if text == "/":
            return ROOT
        s = text
        if s.startswith("/"):
            s = s[1:]
        if s.endswith("/"):
            s = s[:-1]
        if not s:
            raise InvalidPathError(f"invalid LwM2M path {text!r} (the root is '/')")
        return cls.from_segments(s.split("/"), text)

    @classmethod
    def from_segments(cls, segments: list[str] | tuple[str, ...], original: str | None = None) -> LwM2mPath:
        """Build a path from URI path segments (as a CoAP Uri-Path option list carries them)."""
        ids = []
        for seg in segments:
            if not seg.isdigit() or not seg.isascii() or (len(seg) > 1 and seg[0] == "0") or len(seg) > 5:
                shown = original if original is not None else "/" + "/".join(segments)
                raise InvalidPathError(f"invalid LwM2M path {shown!r}: {seg!r} is not an id")
            ids.append(int(seg))
        return cls(tuple(ids))

    def __str__(self) -> str:
        body = "/" + "/".join(str(i) for i in self.ids) if self.ids else "/"
        return f"/{self.prefix}{body}" if self.prefix else body

    @property
    def segments(self) -> tuple[str, ...]:
        """The URI path segments of this path (the gateway prefix first when there is one)."""
        ids = tuple(str(i) for i in self.ids)
        return (self.prefix, *ids) if self.prefix else ids

    @property
    def depth(self) -> int:
        return len(self.ids)

    def _level(self, n: int) -> int | None:
        return self.ids[n] if len(self.ids) > n else None

    @property
    def object_id(self) -> int | None:
        return self._level(0)

    @property
    def instance_id(self) -> int | None:
        return self._level(1)

    @property
    def resource_id(self) -> int | None:
        return self._level(2)

    @property
    def resource_instance_id(self) -> int | None:
        return self._level(3)

    @property
    def is_root(self) -> bool:
        return not self.ids

    @property
    def is_object(self) -> bool:
        return len(self.ids) == 1

    @property
    def is_object_instance(self) -> bool:
        return len(self.ids) == 2

    @property
    def is_resource(self) -> bool:
        return len(self.ids) == 3

    @property
    def is_resource_instance(self) -> bool:
        return len(self.ids) == 4

    def child(self, i: int) -> LwM2mPath:
        return LwM2mPath((*self.ids, i), self.prefix)

    @property
    def parent(self) -> LwM2mPath:
        if not self.ids:
            raise InvalidPathError("the root path has no parent")
        return LwM2mPath(self.ids[:-1], self.prefix)

    def covers(self, other: LwM2mPath) -> bool:
        """True when ``other`` is this path or lies below it."""
        return self.prefix == other.prefix and other.ids[: len(self.ids)] == self.ids


ROOT = LwM2mPath(())
