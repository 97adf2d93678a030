"""The audit log: security-relevant events as JSON lines in ``DATA_DIR/audit.jsonl``.

Invariants: the file is created mode 0600 and only ever appended to (one line per event, flushed at once, so a
crash loses at most the line being written); several processes (the LwM2M server, the bootstrap server) may append
to the same file (O_APPEND writes of one line each); an event's data holds identities, endpoint names and
addresses, never a key (the emitters guarantee it and tests/conftest.py scans every log the test suite writes).
Stdlib only, so that every package may write to it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

AUDIT_FILE = "audit.jsonl"
AUDITED_KINDS = ("security", "bootstrap", "credential")
"""What goes into the audit log (event-kind prefixes): refusals, rate limiting and lockouts, bootstraps,
credential changes."""


class AuditLog:
    """Appends events to ``path`` (created 0600). Use one per process; :meth:`close` when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0),
                                       0o600)
        self._lock = threading.Lock()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> AuditLog:
        return cls(data_dir / AUDIT_FILE)

    def record(self, kind: str, at: float, data: Mapping[str, object], *, source: str) -> None:
        """Append one event as ``{"event": kind, "at": ..., "source": ..., **data}`` (``source`` names the process:
        ``lwm2m-server/node-1``, ``bootstrap-server``...)."""
        record = {**data, "at": round(at, 6), "event": kind, "source": source}  # the event's fields win
        line = json.dumps(record, default=str, separators=(",", ":"), sort_keys=True) + "\n"
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, line.encode("utf-8"))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_audit(path: Path) -> Iterator[dict[str, object]]:
    """The events of an audit file, oldest first (a torn last line is skipped)."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
