"""Usage metering, the pure part: what an event adds to its tenant's day, the hash chain of days, the export files.

Invariants:

* A day is an ISO date ``YYYY-MM-DD`` in UTC; an event counts on the day of its ``at``.
* ``devices_registered`` counts distinct endpoints per tenant and day (a device registering twice counts once);
  every other counter is a plain sum.
* ``bytes_delivered`` sums the packages devices reported downloaded (``firmware.delivered``), whatever the install's
  outcome; a try cut short delivers nothing here.
* A tenant's sealed days form one dense chain (no date skipped between its first and last day; quiet days are
  zero records): each record's ``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces, ASCII) of all
  its fields but ``hash``, so ``prev_hash`` (the previous day's hash; 64 zeros for the tenant's first day) is
  covered. Editing any field of any day, or removing, adding or reordering days inside a file, is detected by
  :func:`verify`. Cutting days off the ends of a CSV file is not (nothing outside the rows anchors them); a JSON
  file's header (``from``, ``to``, ``days``, ``head``) anchors both ends. Whoever can rewrite a whole file can
  recompute its chain: compare the head hash with the one the export printed.
* Nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from lwm2m_server.core.errors import InvalidRequestError

__all__ = [
    "CAMPAIGN_FINISHED",
    "CAMPAIGN_STARTED",
    "COUNTERS",
    "FIELDS",
    "FIRMWARE_DELIVERED",
    "FIRMWARE_FINISHED",
    "FIRMWARE_STARTED",
    "FORMAT",
    "GENESIS_HASH",
    "METERED_KINDS",
    "REGISTRATIONS_SEEN",
    "REGISTRATION_REGISTERED",
    "DayCounts",
    "Increment",
    "Tally",
    "UsageDay",
    "UsageExport",
    "UsageFormatError",
    "UsageProblem",
    "day_of",
    "day_start",
    "fold",
    "measure",
    "next_day",
    "parse_day",
    "parse_export",
    "record_hash",
    "seal",
    "to_csv",
    "to_json",
    "verify",
    "verify_export",
]

# The kinds metering reads (the emitters own the names; repeated here so this module imports nothing impure).
REGISTRATION_REGISTERED = "registration.registered"
FIRMWARE_STARTED = "firmware.started"
FIRMWARE_DELIVERED = "firmware.delivered"
FIRMWARE_FINISHED = "firmware.finished"
CAMPAIGN_STARTED = "campaign.started"
CAMPAIGN_FINISHED = "campaign.finished"
REGISTRATIONS_SEEN = "metering.registrations"
"""An outbox row that stands for first registrations of the day (``data["endpoints"]``: their endpoints), written
by the outbox writer in place of one row per registration (:mod:`lwm2m_server.outbox`); never on the bus."""

METERED_KINDS = (REGISTRATION_REGISTERED, FIRMWARE_STARTED, FIRMWARE_DELIVERED, FIRMWARE_FINISHED,
                 CAMPAIGN_STARTED, CAMPAIGN_FINISHED)

GENESIS_HASH = "0" * 64
FORMAT = "scratch-usage/1"
COUNTERS = ("devices_registered", "deliveries_started", "deliveries_succeeded", "deliveries_failed",
            "bytes_delivered", "campaigns_started", "campaigns_finished")
FIELDS = ("tenant_id", "day", *COUNTERS, "prev_hash", "hash")

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_HASH = re.compile(r"[0-9a-f]{64}")


class UsageFormatError(InvalidRequestError):
    """A usage file (or a day, or a record) that is not well formed; the message names the line or field."""


# ----------------------------------------------------------------------------------------------------- days


def parse_day(text: str) -> str:
    """``text`` if it is a valid ISO date ``YYYY-MM-DD``, else :class:`UsageFormatError`."""
    if not isinstance(text, str) or not _DAY.fullmatch(text):
        raise UsageFormatError(f"not a date YYYY-MM-DD: {text!r}")
    try:
        date.fromisoformat(text)
    except ValueError:
        raise UsageFormatError(f"not a date YYYY-MM-DD: {text!r}") from None
    return text


def day_of(at: float) -> str:
    """The UTC day of a POSIX time."""
    return datetime.fromtimestamp(at, UTC).date().isoformat()


def day_start(day: str) -> float:
    """The POSIX time of the first instant of ``day`` (UTC midnight)."""
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp()


def next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


# ------------------------------------------------------------------------------------------- counting events


@dataclass(frozen=True, slots=True)
class DayCounts:
    """The counters of one tenant's day (or what one event adds to them). Never negative."""

    devices_registered: int = 0
    deliveries_started: int = 0
    deliveries_succeeded: int = 0
    deliveries_failed: int = 0
    bytes_delivered: int = 0
    campaigns_started: int = 0
    campaigns_finished: int = 0

    def __post_init__(self) -> None:
        for name in COUNTERS:
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise UsageFormatError(f"{name} must be a non-negative integer, not {value!r}")

    def __add__(self, other: DayCounts) -> DayCounts:
        return DayCounts(*(getattr(self, n) + getattr(other, n) for n in COUNTERS))

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in COUNTERS}


@dataclass(frozen=True, slots=True)
class Increment:
    """What one event adds to its tenant's ``day``. ``endpoint`` is set for a registration, which adds to
    ``devices_registered`` only when that endpoint is not yet counted that day (``counts`` leaves it at 0)."""

    tenant_id: str
    day: str
    counts: DayCounts
    endpoint: str | None = None


def _nonneg_int(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


def measure(kind: str, data: Mapping[str, object], *, tenant_id: str, at: float,
            endpoint: str | None) -> Increment | None:
    """What an event adds to its day, or None for an event metering does not count (or a registration without an
    endpoint). A missing or odd ``bytes`` counts 0 bytes, never an error: metering must not drop the event."""
    day = day_of(at)
    counts: DayCounts
    if kind == REGISTRATION_REGISTERED:
        if not endpoint:
            return None
        return Increment(tenant_id, day, DayCounts(), endpoint)
    if kind == FIRMWARE_STARTED:
        counts = DayCounts(deliveries_started=1)
    elif kind == FIRMWARE_DELIVERED:
        counts = DayCounts(bytes_delivered=_nonneg_int(data.get("bytes")))
    elif kind == FIRMWARE_FINISHED:
        counts = DayCounts(deliveries_succeeded=1) if data.get("success") is True else DayCounts(deliveries_failed=1)
    elif kind == CAMPAIGN_STARTED:
        counts = DayCounts(campaigns_started=1)
    elif kind == CAMPAIGN_FINISHED:
        counts = DayCounts(campaigns_finished=1)
    else:
        return None
    return Increment(tenant_id, day, counts)


@dataclass(frozen=True, slots=True)
class Tally:
    """The running counters of one tenant's open day, with the endpoints already counted as registered
    (``counts.devices_registered == len(endpoints)``)."""

    tenant_id: str
    day: str
    counts: DayCounts = DayCounts()
    endpoints: frozenset[str] = frozenset()

    def add(self, inc: Increment) -> Tally:
        """The tally with ``inc`` counted (``inc`` must be of this tenant and day: ValueError otherwise)."""
        if (inc.tenant_id, inc.day) != (self.tenant_id, self.day):
            raise ValueError(f"an increment of {inc.tenant_id}/{inc.day} added to {self.tenant_id}/{self.day}")
        counts, endpoints = self.counts + inc.counts, self.endpoints
        if inc.endpoint is not None and inc.endpoint not in endpoints:
            endpoints = endpoints | {inc.endpoint}
            counts = replace(counts, devices_registered=counts.devices_registered + 1)
        return Tally(self.tenant_id, self.day, counts, endpoints)


def fold(tally: Tally, kind: str, data: Mapping[str, object], *, at: float, endpoint: str | None) -> Tally:
    """``tally`` with one event of its tenant counted (events of other days: ValueError; uncounted kinds: unchanged)."""
    inc = measure(kind, data, tenant_id=tally.tenant_id, at=at, endpoint=endpoint)
    return tally if inc is None else tally.add(inc)


# ------------------------------------------------------------------------------------------------- the chain


@dataclass(frozen=True, slots=True)
class UsageDay:
    """One tenant's day. Open (still counting): ``prev_hash == hash == ""``; sealed: both 64 lowercase hex."""

    tenant_id: str
    day: str
    devices_registered: int = 0
    deliveries_started: int = 0
    deliveries_succeeded: int = 0
    deliveries_failed: int = 0
    bytes_delivered: int = 0
    campaigns_started: int = 0
    campaigns_finished: int = 0
    prev_hash: str = ""
    hash: str = ""

    @classmethod
    def of(cls, tenant_id: str, day: str, counts: DayCounts) -> UsageDay:
        """An open day holding ``counts``."""
        c = counts
        return cls(tenant_id, day, c.devices_registered, c.deliveries_started, c.deliveries_succeeded,
                   c.deliveries_failed, c.bytes_delivered, c.campaigns_started, c.campaigns_finished)

    @property
    def counts(self) -> DayCounts:
        return DayCounts(*(getattr(self, n) for n in COUNTERS))

    @property
    def sealed(self) -> bool:
        return bool(self.hash)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_hash(day: UsageDay) -> str:
    """SHA-256 (hex) of the canonical JSON of every field of ``day`` but ``hash``."""
    body = {name: getattr(day, name) for name in FIELDS if name != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")).hexdigest()


def seal(days: Sequence[UsageDay], *, after: UsageDay | None = None) -> list[UsageDay]:
    """The sealed chain continuing ``after`` (the tenant's last sealed day; None: the chain starts here) with
    ``days``: one tenant's open days, in strictly increasing date order, all later than ``after``. Dates skipped
    between them (or since ``after``) become zero days, so the result is dense. ValueError on any other input."""
    out: list[UsageDay] = []
    prev = after
    for d in days:
        if d.sealed:
            raise ValueError(f"{d.day} is sealed already")
        if prev is not None:
            if d.tenant_id != prev.tenant_id:
                raise ValueError(f"days of two tenants ({prev.tenant_id}, {d.tenant_id}) in one chain")
            if d.day <= prev.day:
                raise ValueError(f"{d.day} does not come after {prev.day}")
            gap = next_day(prev.day)
            while gap < d.day:
                prev = _sealed(UsageDay(d.tenant_id, gap), prev)
                out.append(prev)
                gap = next_day(gap)
        prev = _sealed(d, prev)
        out.append(prev)
    return out


def _sealed(day: UsageDay, prev: UsageDay | None) -> UsageDay:
    linked = replace(day, prev_hash=GENESIS_HASH if prev is None else prev.hash, hash="")
    return replace(linked, hash=record_hash(linked))


@dataclass(frozen=True, slots=True)
class UsageProblem:
    """Why a chain does not verify, at ``day`` (the ``index``-th record, from 0)."""

    index: int
    day: str
    message: str

    def __str__(self) -> str:
        return f"{self.day} (record {self.index + 1}): {self.message}"


def verify(days: Sequence[UsageDay]) -> list[UsageProblem]:
    """Every problem of a chain, in record order (empty: it verifies): a record whose hash does not match its
    fields (edited), a ``prev_hash`` that is not the previous record's hash (a day removed, inserted or moved),
    dates out of order or skipped, a second tenant, an unsealed record. The first day's ``prev_hash`` is not
    checked (an export may start anywhere in a tenant's chain)."""
    problems: list[UsageProblem] = []
    prev: UsageDay | None = None
    for i, d in enumerate(days):
        def problem(message: str, i: int = i, d: UsageDay = d) -> None:
            problems.append(UsageProblem(i, d.day, message))

        if not d.sealed:
            problem("not sealed (no hash)")
        elif record_hash(d) != d.hash:
            problem("record edited: its fields do not match its hash")
        if prev is not None:
            if d.tenant_id != prev.tenant_id:
                problem(f"tenant {d.tenant_id!r} in a chain of tenant {prev.tenant_id!r}")
            if d.day <= prev.day:
                problem(f"out of order: comes after {prev.day}")
            elif d.day != next_day(prev.day):
                problem(f"day(s) missing between {prev.day} and {d.day}")
            if d.prev_hash != prev.hash:
                problem(f"broken link: prev_hash is not the hash of {prev.day}")
        prev = d
    return problems


# ------------------------------------------------------------------------------------------------ the files


@dataclass(frozen=True, slots=True)
class UsageExport:
    """A parsed usage file. JSON: ``tenant``, ``first``/``last`` day, ``head`` (last hash) and ``count`` from its
    header (checked by :func:`verify_export`); CSV: the same values taken from the rows."""

    format: Literal["csv", "json"]
    days: tuple[UsageDay, ...]
    tenant: str | None
    first: str | None
    last: str | None
    head: str | None
    count: int


def to_csv(days: Sequence[UsageDay]) -> str:
    """A header line (:data:`FIELDS`) and one row per day (RFC 4180: CRLF line ends, so that a CR or LF inside a
    field is quoted); the rows alone verify. Read it back from bytes or with ``newline=""``, as CSV wants."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    for d in days:
        writer.writerow([getattr(d, n) for n in FIELDS])
    return out.getvalue()


def to_json(days: Sequence[UsageDay], *, tenant_id: str) -> str:
    """``{"format", "tenant", "from", "to", "days" (count), "head", "records": [...]}``; ``from``/``to``/``head``
    are null when there is no day."""
    doc = {"format": FORMAT, "tenant": tenant_id,
           "from": days[0].day if days else None, "to": days[-1].day if days else None,
           "days": len(days), "head": days[-1].hash if days else None,
           "records": [d.as_dict() for d in days]}
    return json.dumps(doc, indent=2) + "\n"


def parse_export(text: str) -> UsageExport:
    """A usage file written by :func:`to_csv` or :func:`to_json` (told apart by a leading ``{``), its records
    checked for shape (not for the chain: see :func:`verify_export`). :class:`UsageFormatError` names the line
    (CSV) or record (JSON) at fault."""
    if text.lstrip().startswith("{"):
        return _parse_json(text)
    return _parse_csv(text)


def _record(values: Mapping[str, object], where: str, *, strings: bool) -> UsageDay:
    """A UsageDay from field values (CSV: every value a string; JSON: counters are integers)."""
    missing = [n for n in FIELDS if n not in values]
    extra = [str(n) for n in values if n not in FIELDS]
    if missing or extra:
        said = [f"missing {', '.join(missing)}"] if missing else []
        said += [f"unknown {', '.join(extra)}"] if extra else []
        raise UsageFormatError(f"{where}: {'; '.join(said)}")
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = values[name]
        if name in COUNTERS:
            if strings and isinstance(value, str) and value.isascii() and value.isdigit():
                value = int(value)
            if type(value) is not int or value < 0:
                raise UsageFormatError(f"{where}: {name} is not a non-negative integer: {value!r}")
        elif not isinstance(value, str):
            raise UsageFormatError(f"{where}: {name} is not a string: {value!r}")
        elif name == "day":
            try:
                parse_day(value)
            except UsageFormatError as e:
                raise UsageFormatError(f"{where}: day: {e}") from None
        elif name in ("prev_hash", "hash") and not _HASH.fullmatch(value):
            raise UsageFormatError(f"{where}: {name} is not 64 lowercase hex digits: {value!r}")
        elif name == "tenant_id" and not value:
            raise UsageFormatError(f"{where}: tenant_id is empty")
        out[name] = value
    return UsageDay(**out)


def _parse_csv(text: str) -> UsageExport:
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise UsageFormatError(f"not a usage CSV: {e}") from None
    if not rows or tuple(rows[0]) != FIELDS:
        raise UsageFormatError(f"line 1: not a usage CSV header (expected {','.join(FIELDS)})")
    days = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(FIELDS):
            raise UsageFormatError(f"line {line}: {len(row)} fields, expected {len(FIELDS)}")
        days.append(_record(dict(zip(FIELDS, row, strict=True)), f"line {line}", strings=True))
    return UsageExport("csv", tuple(days), days[0].tenant_id if days else None, days[0].day if days else None,
                       days[-1].day if days else None, days[-1].hash if days else None, len(days))


def _parse_json(text: str) -> UsageExport:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise UsageFormatError(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageFormatError(f"not a usage file: its format is not {FORMAT!r}")
    for name, kinds in (("tenant", (str,)), ("from", (str, type(None))), ("to", (str, type(None))),
                        ("head", (str, type(None))), ("days", (int,)), ("records", (list,))):
        if name not in doc or not isinstance(doc[name], kinds) or isinstance(doc[name], bool):
            raise UsageFormatError(f"header: {name} is missing or of the wrong type")
    days = []
    for i, rec in enumerate(doc["records"], start=1):
        if not isinstance(rec, dict):
            raise UsageFormatError(f"record {i}: not an object")
        days.append(_record(rec, f"record {i}", strings=False))
    return UsageExport("json", tuple(days), doc["tenant"], doc["from"], doc["to"], doc["head"], doc["days"])


def verify_export(export: UsageExport) -> list[UsageProblem]:
    """:func:`verify` of the file's records, then (JSON) its header against them: tenant, first and last day,
    number of days and head hash (a day cut off either end is caught here)."""
    problems = verify(export.days)
    if export.format != "json":
        return problems
    days = export.days
    first = UsageProblem(0, days[0].day if days else "-", "")
    last = UsageProblem(len(days) - 1, days[-1].day, "") if days else first
    bad_tenant = next((i for i, d in enumerate(days) if d.tenant_id != export.tenant), None)
    if bad_tenant is not None:
        problems.append(UsageProblem(bad_tenant, days[bad_tenant].day,
                                     f"tenant {days[bad_tenant].tenant_id!r}; the header says {export.tenant!r}"))
    checks = [
        (first, export.first == (days[0].day if days else None), f"header: from says {export.first}"),
        (last, export.last == (days[-1].day if days else None), f"header: to says {export.last}"),
        (last, export.count == len(days), f"header: days says {export.count}, the file holds {len(days)}"),
        (last, export.head == (days[-1].hash if days else None), "header: head is not the last record's hash"),
    ]
    problems += [replace(at, message=message) for at, ok, message in checks if not ok]
    return problems
