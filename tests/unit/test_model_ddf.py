"""DDF XML parsing (lwm2m_server.core.model.ddf) and the file shell (lwm2m_server.object_files).

Oracles: every official OMA XML under ../shared/reference/lwm2m-objects, checked against INDEX.json (derived there
independently of our parser). Malformed inputs are our own small documents.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lwm2m_server.core.errors import ModelError
from lwm2m_server.core.model import ObjectDefinition, ObjectModel
from lwm2m_server.core.model.ddf import parse_ddf, parse_ddf_text
from lwm2m_server.core.nodes import ResourceType
from lwm2m_server.object_files import load_ddf_dir, load_ddf_file, model_with_dir
from tests.conftest import REFERENCE

OBJECTS = "lwm2m-objects"


def _reference_xml_names(prefix: str = "") -> list[str]:
    """Every XML under reference/lwm2m-objects (relative names starting with ``prefix``); a placeholder when the
    folder is absent, so the test is collected and then skipped by the ``reference`` fixture with its reason."""
    folder = REFERENCE / OBJECTS
    if not folder.is_dir():
        return ["<reference absent>"]
    return sorted(n for p in folder.rglob("*.xml") if (n := p.relative_to(folder).as_posix()).startswith(prefix))


def _index(reference: Path) -> dict[str, Any]:
    index: dict[str, Any] = json.loads((reference / OBJECTS / "INDEX.json").read_text("utf-8"))
    return index


def _only(defs: list[ObjectDefinition]) -> ObjectDefinition:
    assert len(defs) == 1, [d.id for d in defs]
    return defs[0]


def _type_text(t: ResourceType) -> str:
    """The DDF spelling of a type ("" for an executable resource's absent type)."""
    return "" if t is ResourceType.NONE else t.value


# ---------------------------------------------------------------------------------------------------------------
# (a) every official file loads and agrees with INDEX.json


def test_every_reference_file_is_indexed(reference: Path) -> None:
    names = _reference_xml_names()
    assert len(names) >= 30  # 10 current files and 25 in version_history/ at the pinned registry commit
    assert set(names) == set(_index(reference))


@pytest.mark.parametrize("name", _reference_xml_names())
def test_reference_file_matches_index(reference: Path, name: str) -> None:
    entry = _index(reference)[name]
    obj = _only(parse_ddf((reference / OBJECTS / name).read_bytes()))

    assert obj.id == entry["object_id"]
    assert obj.name == entry["name"].strip()
    assert obj.version == (entry["object_version"] or "1.0")
    assert obj.lwm2m_version == (entry["lwm2m_version"] or "1.0")
    assert obj.urn == entry["urn"].strip()
    assert obj.multiple == (entry["instances"] == "Multiple")
    assert obj.mandatory == (entry["mandatory"] == "Mandatory")
    assert obj.description and obj.description == obj.description.strip()

    assert list(obj.resources) == [r["id"] for r in entry["resources"]]
    for r in entry["resources"]:
        res = obj.resources[r["id"]]
        where = f"{name} resource {r['id']}"
        assert res.id == r["id"], where
        assert res.name == r["name"].strip(), where
        assert res.operations == r["operations"], where
        assert res.multiple == (r["instances"] == "Multiple"), where
        assert res.mandatory == (r["mandatory"] == "Mandatory"), where
        assert _type_text(res.type) == r["type"], where
        assert res.range == r["range"].strip(), where
        assert res.units == r["units"].strip(), where
        assert res.description == res.description.strip(), where


@pytest.mark.parametrize("name", _reference_xml_names("version_history/"))
def test_history_file_name_gives_the_object_version(reference: Path, name: str) -> None:
    """version_history/N-X_Y.xml is object N version X.Y; files without <ObjectVersion> read as 1.0."""
    m = re.fullmatch(r"version_history/(\d+)-(\d+)_(\d+)\.xml", name)
    assert m, name
    obj = _only(parse_ddf((reference / OBJECTS / name).read_bytes()))
    assert (obj.id, obj.version) == (int(m[1]), f"{m[2]}.{m[3]}")


def test_current_files_equal_their_newest_history_version(reference: Path) -> None:
    folder = reference / OBJECTS
    for current in sorted(folder.glob("*.xml")):
        history = sorted(
            (folder / "version_history").glob(f"{current.stem}-*.xml"),
            key=lambda p: tuple(int(x) for x in p.stem.split("-")[1].split("_")),
        )
        assert history, current.name
        assert parse_ddf(current.read_bytes()) == parse_ddf(history[-1].read_bytes()), current.name


def test_both_schemas_and_missing_versions(reference: Path) -> None:
    """1.0-schema files may lack <ObjectVersion>/<LWM2MVersion>: both read as 1.0 and the plain URN stays."""
    v10 = _only(parse_ddf((reference / OBJECTS / "version_history/3-1_0.xml").read_bytes()))
    assert (v10.version, v10.lwm2m_version, v10.urn) == ("1.0", "1.0", "urn:oma:lwm2m:oma:3")
    no_lwm2m = _only(parse_ddf((reference / OBJECTS / "version_history/4-1_1.xml").read_bytes()))
    assert (no_lwm2m.version, no_lwm2m.lwm2m_version) == ("1.1", "1.0")
    v11 = _only(parse_ddf((reference / OBJECTS / "5.xml").read_bytes()))
    assert (v11.version, v11.lwm2m_version, v11.urn) == ("1.2", "1.1", "urn:oma:lwm2m:oma:5:1.2")
    assert v11.resources[2].type is ResourceType.NONE and v11.resources[2].executable
    assert 4 not in v11.resources


def test_padding_is_stripped(reference: Path) -> None:
    """21.xml pads names (' OSCORE ID Context', 'OSCORE AEAD Algorithm ')."""
    oscore = _only(parse_ddf((reference / OBJECTS / "21.xml").read_bytes()))
    assert oscore.resources[6].name == "OSCORE ID Context"
    assert oscore.resources[3].name == "OSCORE AEAD Algorithm"


def test_parse_ddf_text_agrees_with_bytes(reference: Path) -> None:
    data = (reference / OBJECTS / "1.xml").read_bytes()
    assert parse_ddf_text(data.decode("utf-8")) == parse_ddf(data)


# ---------------------------------------------------------------------------------------------------------------
# Our own small documents

ITEM = """<Item ID="{id}"><Name>{name}</Name><Operations>{ops}</Operations>
<MultipleInstances>Single</MultipleInstances><Mandatory>Optional</Mandatory><Type>{type}</Type>
<RangeEnumeration></RangeEnumeration><Units></Units><Description>d</Description></Item>"""


def ddf(
    oid: str = "10241",
    items: str | None = None,
    name: str = "Test Object",
    extra: str = "<ObjectVersion>1.1</ObjectVersion><LWM2MVersion>1.1</LWM2MVersion>",
    prolog: str = '<?xml version="1.0" encoding="UTF-8"?>',
) -> bytes:
    """A minimal DDF document (object ``oid``, default: one RW Integer resource 0)."""
    if items is None:
        items = ITEM.format(id=0, name="Value", ops="RW", type="Integer")
    id_element = f"<ObjectID>{oid}</ObjectID>" if oid else ""
    return f"""{prolog}
<LWM2M><Object ObjectType="MODefinition">
  <Name>{name}</Name><Description1>  An object of ours.  </Description1>{id_element}
  <ObjectURN>urn:oma:lwm2m:x:{oid}</ObjectURN>{extra}
  <MultipleInstances> Multiple </MultipleInstances><Mandatory>Optional</Mandatory>
  <Resources>{items}</Resources><Description2></Description2>
</Object></LWM2M>""".encode()


def test_minimal_document() -> None:
    obj = _only(parse_ddf(ddf()))
    assert (obj.id, obj.name, obj.version, obj.lwm2m_version) == (10241, "Test Object", "1.1", "1.1")
    assert obj.multiple and not obj.mandatory
    assert obj.description == "An object of ours."
    res = obj.resources[0]
    assert (res.name, res.operations, res.type, res.multiple, res.mandatory) == (
        "Value",
        "RW",
        ResourceType.INTEGER,
        False,
        False,
    )


def test_two_objects_in_one_document() -> None:
    one = ddf("10241").decode()
    two = ddf("10242").decode()
    body = one[one.index("<Object ") : one.index("</LWM2M>")] + two[two.index("<Object ") : two.index("</LWM2M>")]
    assert [d.id for d in parse_ddf(f"<LWM2M>{body}</LWM2M>".encode())] == [10241, 10242]
    with pytest.raises(ModelError, match=r"object 10241 \(Test Object\) is defined twice"):
        parse_ddf(f"<LWM2M>{body.replace('10242', '10241')}</LWM2M>".encode())


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE LWM2M [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<LWM2M><Object><Name>&lol9;</Name><ObjectID>1</ObjectID></Object></LWM2M>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE LWM2M [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<LWM2M><Object><Name>&xxe;</Name><ObjectID>1</ObjectID></Object></LWM2M>"""

EXTERNAL_PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE LWM2M [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/evil.dtd"> %ext;]>
<LWM2M/>"""


# (c) each malformed input raises ModelError, and the message names what is wrong
@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"this is not XML", "not well-formed", id="not-xml"),
        pytest.param(b"", "not well-formed", id="empty"),
        pytest.param(ddf()[:-20], "not well-formed", id="truncated"),
        pytest.param(b"\xff\xfe\x00<", "not well-formed", id="garbage-bytes"),
        pytest.param(ddf(prolog='<?xml version="1.0" encoding="no-such"?>'), "unknown encoding", id="unknown-encoding"),
        pytest.param(BILLION_LAUGHS, "refused", id="billion-laughs"),
        pytest.param(EXTERNAL_ENTITY, "refused", id="external-entity"),
        pytest.param(EXTERNAL_PARAMETER_ENTITY, "refused", id="external-parameter-entity"),
        pytest.param(b"<Objects><Object/></Objects>", "root is <Objects>", id="wrong-root"),
        pytest.param(b"<LWM2M></LWM2M>", "no <Object>", id="no-object"),
        pytest.param(ddf(oid=""), "object 'Test Object': missing <ObjectID>", id="missing-object-id"),
        pytest.param(ddf(oid="abc"), r"<ObjectID> 'abc' is not an id", id="non-numeric-object-id"),
        pytest.param(ddf(oid="70000"), "'70000' is not an id", id="object-id-too-large"),
        pytest.param(ddf(oid="-1"), "'-1' is not an id", id="negative-object-id"),
        pytest.param(ddf(oid="\u0663"), "is not an id", id="unicode-digit-object-id"),
        pytest.param(ddf(oid="1e3"), "is not an id", id="float-object-id"),
        pytest.param(ddf(name=""), "object 10241: missing or empty <Name>", id="missing-name"),
        pytest.param(
            ddf(extra="<ObjectID>7</ObjectID>"), "object 'Test Object': <ObjectID> appears 2 times", id="two-ids"
        ),
        pytest.param(
            ddf(items=ITEM.format(id=0, name="A", ops="RWE", type="Integer")),
            r"object 10241 \(Test Object\), resource 0 \(A\): unknown <Operations> 'RWE'",
            id="bad-operations",
        ),
        pytest.param(
            ddf(items=ITEM.format(id=0, name="A", ops="rw", type="Integer")),
            "unknown <Operations> 'rw'",
            id="lowercase-operations",
        ),
        pytest.param(
            ddf(items=ITEM.format(id=3, name="A", ops="R", type="Double")),
            r"object 10241 \(Test Object\), resource 3 \(A\): unknown LwM2M resource type 'Double'",
            id="unknown-type",
        ),
        pytest.param(
            ddf(items=ITEM.format(id=0, name="A", ops="R", type="String") * 2),
            r"object 10241 \(Test Object\): resource id 0 is defined twice",
            id="duplicate-resource-id",
        ),
        pytest.param(
            ddf(items=ITEM.format(id="x", name="A", ops="R", type="String")),
            r"object 10241 \(Test Object\): <Item ID> 'x' is not an id",
            id="bad-resource-id",
        ),
        pytest.param(
            ddf(items=ITEM.format(id="65536", name="A", ops="R", type="String")),
            "'65536' is not an id",
            id="resource-id-too-large",
        ),
        pytest.param(
            ddf(items=ITEM.replace(' ID="{id}"', "").format(name="A", ops="R", type="String")),
            "<Item> without an ID attribute",
            id="missing-resource-id",
        ),
        pytest.param(
            ddf(items=ITEM.format(id=0, name="A", ops="R", type="String").replace("Single", "Many")),
            r"resource 0 \(A\): <MultipleInstances> is 'Many', expected Multiple or Single",
            id="bad-multiple-instances",
        ),
        pytest.param(
            ddf(items=ITEM.format(id=0, name="A", ops="R", type="String").replace("Optional", "")),
            r"resource 0 \(A\): <Mandatory> is '', expected Mandatory or Optional",
            id="empty-mandatory",
        ),
        pytest.param(
            ddf().replace(b"<Mandatory>Optional</Mandatory>\n", b""),
            r"object 10241 \(Test Object\): missing <Mandatory>",
            id="object-missing-mandatory",
        ),
    ],
)
def test_malformed_input_raises_model_error(data: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_ddf(data)


def test_non_bytes_input_raises_model_error() -> None:
    with pytest.raises(ModelError):
        parse_ddf(None)  # type: ignore[arg-type]


def test_tolerant_where_absence_has_a_meaning() -> None:
    """No <Operations>, <Type>, <RangeEnumeration>, <Units> or <Description>: empty, type NONE; case of
    Single/Multiple and Mandatory/Optional is not significant."""
    item = (
        '<Item ID="7"><Name> Go </Name><MultipleInstances>single</MultipleInstances>'
        "<Mandatory>MANDATORY</Mandatory></Item>"
    )
    res = _only(parse_ddf(ddf(items=item))).resources[7]
    assert (res.name, res.operations, res.type, res.range, res.units, res.description) == (
        "Go",
        "",
        ResourceType.NONE,
        "",
        "",
        "",
    )
    assert res.mandatory and not res.multiple


def test_object_without_resources() -> None:
    assert _only(parse_ddf(ddf(items=""))).resources == {}


_VALID = ddf(items=ITEM.format(id=0, name="A", ops="R", type="String") + ITEM.format(id=1, name="B", ops="E", type=""))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_documents_raise_only_model_error(data: st.DataObject) -> None:
    """Random byte edits of a valid document either parse or raise ModelError, never anything else."""
    doc = bytearray(_VALID)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(doc) - 1))
        action = data.draw(st.sampled_from(["replace", "delete", "insert"]))
        byte = data.draw(st.sampled_from(list(b"<>/&;\"'=! \x00\xff09AZaz\n")))
        if action == "replace":
            doc[pos] = byte
        elif action == "delete":
            del doc[pos]
        else:
            doc.insert(pos, byte)
    try:
        result = parse_ddf(bytes(doc))
    except ModelError:
        return
    assert all(isinstance(d, ObjectDefinition) for d in result)


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_random_input_raises_only_model_error(data: bytes) -> None:
    with contextlib.suppress(ModelError):
        parse_ddf(data)


# ---------------------------------------------------------------------------------------------------------------
# (d) the file shell


def test_load_ddf_dir_reads_every_xml_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.xml").write_bytes(ddf("10241"))
    (tmp_path / "a.xml").write_bytes(ddf("10242"))
    (tmp_path / "notes.txt").write_text("not a DDF file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.xml").write_bytes(b"ignored: not read recursively")
    assert [d.id for d in load_ddf_dir(tmp_path)] == [10242, 10241]
    assert [d.id for d in load_ddf_file(tmp_path / "b.xml")] == [10241]


def test_load_ddf_dir_names_the_broken_file(tmp_path: Path) -> None:
    (tmp_path / "good.xml").write_bytes(ddf("10241"))
    (tmp_path / "broken.xml").write_bytes(ddf(items=ITEM.format(id=0, name="A", ops="X", type="String")))
    with pytest.raises(ModelError, match=r"broken\.xml: object 10241 \(Test Object\), resource 0"):
        load_ddf_dir(tmp_path)


def test_load_ddf_dir_refuses_one_object_in_two_files(tmp_path: Path) -> None:
    (tmp_path / "a.xml").write_bytes(ddf("10241"))
    (tmp_path / "b.xml").write_bytes(ddf("10241", name="Again"))
    with pytest.raises(ModelError, match=r"b\.xml: object 10241 is already defined in .*a\.xml"):
        load_ddf_dir(tmp_path)


def test_missing_paths_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nowhere"):
        load_ddf_dir(tmp_path / "nowhere")
    with pytest.raises(ModelError, match=r"nothing\.xml: cannot read"):
        load_ddf_file(tmp_path / "nothing.xml")


def test_model_with_dir_overrides_a_builtin(reference: Path, tmp_path: Path) -> None:
    """An operator's folder holding Firmware Update 1.0 replaces our built-in 1.2 and adds object 10241."""
    shutil.copy(reference / OBJECTS / "version_history" / "5-1_0.xml", tmp_path / "5.xml")
    (tmp_path / "10241.xml").write_bytes(ddf("10241"))
    model = model_with_dir(tmp_path)
    default = ObjectModel.default()
    fw = model.get(5)
    assert fw is not None and fw.version == "1.0" and 10 not in fw.resources
    assert model.get(10241) is not None
    assert [d.id for d in model] == [0, 1, 3, 4, 5, 25, 10241, 32700]
    for oid in (0, 1, 3, 4):
        assert model.get(oid) == default.get(oid)
    default_fw = default.get(5)
    assert default_fw is not None and default_fw.version == "1.2"  # the default model is left as it was


def test_model_with_dir_none_is_the_default() -> None:
    assert list(model_with_dir(None)) == list(ObjectModel.default())
