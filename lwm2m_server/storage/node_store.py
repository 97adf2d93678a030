"""The node store: the server nodes sharing one database (cluster membership), as a Protocol with a memory and a
SQL implementation (table ``node``, :mod:`.node_tables`); both pass tests/unit/test_node_store_contract.py.

Invariants of every implementation:

* a node is keyed by its ``node_id`` (at most :data:`~.node_tables.MAX_NODE_ID` characters); nodes are
  infrastructure, not tenant data: no method takes a tenant;
* :meth:`NodeStore.beat` writes the whole record, inserting it or replacing every field (a restarted node comes
  back with a new ``started_at``); each call is atomic and durable once it returns;
* a node is alive at ``now`` while ``seen_at >= now - timeout``; the store keeps no clock of its own;
* :meth:`NodeStore.list` returns the nodes by ``node_id``; records are frozen and read back as written;
* a database failure, or a ``node_id`` too long, raises :class:`~lwm2m_server.core.errors.StorageError`.
"""

from __future__ import annotations

import builtins
import threading
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from lwm2m_server.core.errors import StorageError
from lwm2m_server.storage.database import Database
from lwm2m_server.storage.node_tables import MAX_NODE_ID, NodeRow

__all__ = ["MemoryNodeStore", "NodeRecord", "NodeStore", "SqlNodeStore"]


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """One server node: when it (last) started, when it was last seen, and the addresses it serves."""

    node_id: str
    started_at: float
    seen_at: float
    coap_uri: str | None = None
    coaps_uri: str | None = None
    api_url: str | None = None


def _checked(record: NodeRecord) -> NodeRecord:
    if not record.node_id or len(record.node_id) > MAX_NODE_ID:
        raise StorageError(f"a node id has 1 to {MAX_NODE_ID} characters, not {len(record.node_id)}")
    return record


@runtime_checkable
class NodeStore(Protocol):
    """The server nodes by id; see the module docstring."""

    def beat(self, record: NodeRecord) -> None:
        """Insert the node, or replace its record (every field)."""
        ...

    def get(self, node_id: str) -> NodeRecord | None: ...

    def list(self) -> builtins.list[NodeRecord]:
        """Every node, by ``node_id``."""
        ...

    def alive(self, *, now: float, timeout: float) -> set[str]:
        """The ids of the nodes seen at ``now - timeout`` or later."""
        ...

    def remove(self, node_id: str) -> bool:
        """Forget the node; whether it was there."""
        ...


class MemoryNodeStore:
    """Nodes in a dict by id; a lock makes each call atomic."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeRecord] = {}
        self._lock = threading.Lock()

    def beat(self, record: NodeRecord) -> None:
        with self._lock:
            self._nodes[record.node_id] = _checked(record)

    def get(self, node_id: str) -> NodeRecord | None:
        with self._lock:
            return self._nodes.get(node_id)

    def list(self) -> builtins.list[NodeRecord]:
        with self._lock:
            return sorted(self._nodes.values(), key=lambda n: n.node_id)

    def alive(self, *, now: float, timeout: float) -> set[str]:
        with self._lock:
            return {n.node_id for n in self._nodes.values() if n.seen_at >= now - timeout}

    def remove(self, node_id: str) -> bool:
        with self._lock:
            return self._nodes.pop(node_id, None) is not None


_NODE = NodeRow.__table__  # type: ignore[attr-defined]
_ATTEMPTS = 3  # an insert may collide with another beat of the same node: update again


def _from_row(row: Any) -> NodeRecord:
    return NodeRecord(node_id=row.node_id, started_at=row.started_at, seen_at=row.seen_at, coap_uri=row.coap_uri,
                      coaps_uri=row.coaps_uri, api_url=row.api_url)


class SqlNodeStore:
    """Nodes in the ``node`` table, one row each. Every call runs in its own transaction, committed before it
    returns."""

    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    def beat(self, record: NodeRecord) -> None:
        row = asdict(_checked(record))
        for _ in range(_ATTEMPTS):
            try:
                with self._engine.begin() as conn:
                    if conn.execute(update(_NODE).where(_NODE.c.node_id == record.node_id).values(row)).rowcount:
                        return
                    conn.execute(insert(_NODE), row)
                    return
            except IntegrityError:
                continue  # inserted meanwhile by another beat: update it
            except SQLAlchemyError as e:
                raise StorageError(f"cannot write node {record.node_id!r}: {e}") from e
        raise StorageError(f"cannot write node {record.node_id!r}: concurrent beats kept colliding")

    def get(self, node_id: str) -> NodeRecord | None:
        rows = self._read(select(_NODE).where(_NODE.c.node_id == node_id))
        return _from_row(rows[0]) if rows else None

    def list(self) -> builtins.list[NodeRecord]:
        return [_from_row(r) for r in self._read(select(_NODE).order_by(_NODE.c.node_id))]

    def alive(self, *, now: float, timeout: float) -> set[str]:
        return {r.node_id for r in self._read(select(_NODE.c.node_id).where(_NODE.c.seen_at >= now - timeout))}

    def remove(self, node_id: str) -> bool:
        try:
            with self._engine.begin() as conn:
                return bool(conn.execute(delete(_NODE).where(_NODE.c.node_id == node_id)).rowcount)
        except SQLAlchemyError as e:
            raise StorageError(f"cannot remove node {node_id!r}: {e}") from e

    def _read(self, query: Any) -> builtins.list[Any]:
        try:
            with self._engine.connect() as conn:
                return builtins.list(conn.execute(query).all())
        except SQLAlchemyError as e:
            raise StorageError(f"cannot read the nodes: {e}") from e
