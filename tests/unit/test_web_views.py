"""What the web pages compute, without a server: counts, versions, classes, device rows and their filters, the
recent-event buffer."""

from __future__ import annotations

from dataclasses import dataclass

from lwm2m_server.events import Event
from lwm2m_server.web.views import (
    RecentEvents,
    device_rows,
    fleet_counts,
    known_devices,
    version_counts,
)


@dataclass
class Reg:
    endpoint: str
    secure: bool = True
    queue_mode: bool = False
    remote: object = None
    updated_at: float | None = None
    registered_at: float = 1.0
    lwm2m_version: str = "1.1"
    address: str = "127.0.0.1:1"


@dataclass
class Job:
    endpoint: str
    version_before: str | None = None
    version_after: str | None = None


JOBS = {"new": [Job("a", "1.0", "2.0"), Job("b", "1.0", None)], "old": [Job("a", "0.9", "1.0"), Job("c", "0.9", "1.0")]}


def test_the_newest_campaign_says_a_devices_version_and_class() -> None:
    versions, classes = known_devices([("new", "meter"), ("old", "meter-v1")], JOBS.__getitem__)
    assert versions == {"a": "2.0", "b": "1.0", "c": "1.0"}
    assert classes == {"a": "meter", "b": "meter", "c": "meter-v1"}
    assert version_counts(["a", "b", "c", "d"], {"a": "2.0", "b": "1.0", "c": "1.0"}) == {
        "1.0": 2, "2.0": 1, "unknown": 1}


def test_counts_and_rows_with_their_filters() -> None:
    regs = [Reg("a"), Reg("b", secure=False), Reg("c", queue_mode=True), Reg("d", queue_mode=True, remote=object())]
    assert fleet_counts(regs, updating={"a", "zz"}, failed={"b"}) == {"registered": 4, "sleeping": 1, "updating": 1,
                                                                      "failed": 1}
    versions, tags = {"a": "2.0", "b": "1.0"}, {"b": ["beta"]}
    rows = device_rows(regs, versions, tags, classes={"a": "meter"})
    assert [(r.endpoint, r.device_class, r.version) for r in rows] == [
        ("a", "meter", "2.0"), ("b", "-", "1.0"), ("c", "-", "unknown"), ("d", "-", "unknown")]
    assert [r.endpoint for r in device_rows(regs, versions, tags, "BETA")] == ["b"]
    assert [r.endpoint for r in device_rows(regs, versions, tags, "met", classes={"a": "meter"})] == ["a"]
    assert [r.endpoint for r in device_rows(regs, versions, tags, security="none")] == ["b"]
    assert [r.endpoint for r in device_rows(regs, versions, tags, version="unknown")] == ["c", "d"]


def test_recent_events_keep_each_tenants_last_ones_newest_first() -> None:
    recent = RecentEvents(size=2)
    for i, kind in enumerate(["registration.registered", "campaign.device.progress", "firmware.finished",
                              "security.rate_limited", "something.else"]):
        recent(Event(kind, float(i), "t1", f"ep-{i}"))
    recent(Event("registration.registered", 9.0, "t2", "x"))
    assert [e.kind for e in recent.of("t1")] == ["security.rate_limited", "firmware.finished"]
    assert [e.endpoint for e in recent.of("t2")] == ["x"] and recent.of("t3") == []
