"""Our built-in objects 0, 1, 3, 4, 5, 25 against the official OMA definitions.

Each built-in is compared twice: with parse_ddf of the official XML, and, independently of our parser, with
INDEX.json (derived in ../shared/reference from the same XML), so a parser bug cannot hide a built-in bug.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest

from lwm2m_server.core.model import ObjectDefinition, ObjectModel, ResourceDefinition, builtin
from lwm2m_server.core.model.builtin import BUILTIN_OBJECTS
from lwm2m_server.core.model.ddf import parse_ddf
from lwm2m_server.core.model.firmware_component import FIRMWARE_COMPONENT, FIRMWARE_COMPONENT_ID
from lwm2m_server.core.nodes import ResourceType

BUILTIN_IDS = (0, 1, 3, 4, 5, 25)
# Resources whose DDF <RangeEnumeration> is prose rather than a range; the built-in leaves it empty.
PROSE_RANGES = {(1, 22)}


def _builtin(oid: int) -> ObjectDefinition:
    found = [d for d in BUILTIN_OBJECTS if d.id == oid]
    assert len(found) == 1
    return found[0]


def _official(reference: Path, oid: int) -> ObjectDefinition:
    (obj,) = parse_ddf((reference / "lwm2m-objects" / f"{oid}.xml").read_bytes())
    return obj


def _index_entry(reference: Path, oid: int) -> dict[str, Any]:
    index = json.loads((reference / "lwm2m-objects" / "INDEX.json").read_text("utf-8"))
    entry: dict[str, Any] = index[f"{oid}.xml"]
    return entry


def test_builtin_objects_are_0_1_3_4_5() -> None:
    assert tuple(d.id for d in BUILTIN_OBJECTS) == BUILTIN_IDS
    model = ObjectModel.default()
    assert [d.id for d in model] == [*BUILTIN_IDS, FIRMWARE_COMPONENT_ID]  # and our own object, 32700
    for d in BUILTIN_OBJECTS:
        assert model.get(d.id) is d
        assert all(k == r.id for k, r in d.resources.items())


@pytest.mark.parametrize("oid", BUILTIN_IDS)
def test_builtin_matches_parsed_official_xml(reference: Path, oid: int) -> None:
    ours, official = _builtin(oid), _official(reference, oid)
    assert (ours.id, ours.name, ours.version, ours.lwm2m_version, ours.urn) == (
        official.id,
        official.name,
        official.version,
        official.lwm2m_version,
        official.urn,
    )
    assert (ours.multiple, ours.mandatory) == (official.multiple, official.mandatory)
    assert list(ours.resources) == list(official.resources)
    for rid, theirs in official.resources.items():
        mine = ours.resources[rid]
        assert _facts(mine) == _facts(theirs), f"object {oid} resource {rid}"
        expected_range = "" if (oid, rid) in PROSE_RANGES else theirs.range
        assert (mine.range, mine.units) == (expected_range, theirs.units), f"object {oid} resource {rid}"


@pytest.mark.parametrize("oid", BUILTIN_IDS)
def test_builtin_matches_index_json(reference: Path, oid: int) -> None:
    """The same comparison against INDEX.json's raw strings, with no use of our DDF parser."""
    ours, entry = _builtin(oid), _index_entry(reference, oid)
    assert ours.id == entry["object_id"]
    assert ours.name == entry["name"].strip()
    assert ours.version == entry["object_version"]
    assert ours.lwm2m_version == entry["lwm2m_version"]
    assert ours.urn == entry["urn"]
    assert ("Multiple" if ours.multiple else "Single") == entry["instances"]
    assert ("Mandatory" if ours.mandatory else "Optional") == entry["mandatory"]
    assert list(ours.resources) == [r["id"] for r in entry["resources"]]
    for r in entry["resources"]:
        mine = ours.resources[r["id"]]
        where = f"object {oid} resource {r['id']}"
        assert mine.name == r["name"].strip(), where
        assert mine.operations == r["operations"], where
        assert ("" if mine.type is ResourceType.NONE else mine.type.value) == r["type"], where
        assert ("Multiple" if mine.multiple else "Single") == r["instances"], where
        assert ("Mandatory" if mine.mandatory else "Optional") == r["mandatory"], where
        assert mine.units == r["units"], where
        if (oid, r["id"]) not in PROSE_RANGES:
            assert mine.range == r["range"], where


def test_firmware_update_facts_the_fota_code_relies_on() -> None:
    fw = _builtin(5)
    assert 4 not in fw.resources  # no resource 4 in any version of object 5
    assert fw.resources[0].writable and not fw.resources[0].readable and fw.resources[0].type is ResourceType.OPAQUE
    assert fw.resources[2].executable and fw.resources[2].type is ResourceType.NONE
    assert fw.resources[3].readable and not fw.resources[3].writable
    assert fw.resources[14].type is ResourceType.BOOLEAN


def test_builtin_carries_our_text_not_omas(reference: Path) -> None:
    """Descriptions are our own one-liners; resources carry none; no OMA copyright line in the module."""
    source = inspect.getsource(builtin)
    assert "Open Mobile Alliance" not in source
    assert "Redistribution" not in source
    for oid in BUILTIN_IDS:
        ours, official = _builtin(oid), _official(reference, oid)
        assert ours.description and "\n" not in ours.description
        assert ours.description not in official.description
        assert all(r.description == "" for r in ours.resources.values())


def _facts(r: ResourceDefinition) -> tuple[object, ...]:
    return (r.id, r.name, r.operations, r.type, r.multiple, r.mandatory)


def test_our_firmware_component_object_is_in_the_private_range_with_unique_read_only_resources() -> None:
    assert 26241 <= FIRMWARE_COMPONENT.id <= 32768  # the registry's range for objects re-used without registration
    assert FIRMWARE_COMPONENT.multiple and not FIRMWARE_COMPONENT.mandatory
    assert sorted(FIRMWARE_COMPONENT.resources) == list(range(8))
    assert all(r.operations == "R" and k == r.id for k, r in FIRMWARE_COMPONENT.resources.items())
    assert ObjectModel.default().get(FIRMWARE_COMPONENT.id) is FIRMWARE_COMPONENT
