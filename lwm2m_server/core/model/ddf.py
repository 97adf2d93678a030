"""Parse OMA LwM2M DDF XML (``<LWM2M><Object>...``; LWM2M.xsd and LWM2M-v1_1.xsd schemas) into definitions.

Pure: the caller hands in the bytes (see ``lwm2m_server.object_files`` for reading files).

Invariants:
* the only exception that leaves this module is :class:`ModelError`, and its message names the object (and the
  resource) at fault;
* XML is parsed with defusedxml: entity declarations (billion laughs) and external references are refused;
* every text is stripped of the padding the OMA files carry; a missing ``<ObjectVersion>`` or
  ``<LWM2MVersion>`` reads as "1.0", a missing ``<Operations>``, ``<Type>``, ``<RangeEnumeration>``,
  ``<Units>`` or description as empty (an empty type is :attr:`ResourceType.NONE`);
* ids are ASCII decimal numbers in 0..65535; resource ids are unique within an object, object ids within a
  document; ``<Name>``, ``<MultipleInstances>`` and ``<Mandatory>`` are required.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException  # type: ignore[import-untyped]
from defusedxml.ElementTree import fromstring  # type: ignore[import-untyped]

from lwm2m_server.core.errors import ModelError
from lwm2m_server.core.model.definitions import OPERATIONS, ObjectDefinition, ResourceDefinition
from lwm2m_server.core.nodes import ResourceType

__all__ = ["parse_ddf", "parse_ddf_text"]

_ID = re.compile(r"[0-9]{1,5}")
_MULTIPLE = {"multiple": True, "single": False}
_MANDATORY = {"mandatory": True, "optional": False}


def parse_ddf(data: bytes) -> list[ObjectDefinition]:
    """The object definitions in one DDF document, in document order (usually exactly one)."""
    return _parse_document(data)


def parse_ddf_text(text: str) -> list[ObjectDefinition]:
    """Like :func:`parse_ddf`, for a document already decoded to ``str``."""
    return _parse_document(text)


def _parse_document(data: bytes | str) -> list[ObjectDefinition]:
    if not isinstance(data, bytes | str):
        raise ModelError(f"DDF document must be bytes or str, not {type(data).__name__}")
    try:
        root: Element = fromstring(data, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise ModelError(f"DDF document refused: {type(e).__name__} ({e})") from e
    except (ParseError, ValueError, LookupError, UnicodeError) as e:
        raise ModelError(f"DDF document is not well-formed XML: {e}") from e
    if _local(root.tag) != "LWM2M":
        raise ModelError(f"DDF document root is <{_local(root.tag)}>, expected <LWM2M>")
    objects = [_parse_object(el, n) for n, el in enumerate(_children(root, "Object"), start=1)]
    if not objects:
        raise ModelError("DDF document holds no <Object>")
    seen: set[int] = set()
    for obj in objects:
        if obj.id in seen:
            raise ModelError(f"object {obj.id} ({obj.name}) is defined twice in one DDF document")
        seen.add(obj.id)
    return objects


def _parse_object(el: Element, position: int) -> ObjectDefinition:
    where = f"object #{position}"
    name = _text(el, "Name", where)
    if name:
        where = f"object {name!r}"
    raw_id = _child(el, "ObjectID", where)
    if raw_id is None:
        raise ModelError(f"{where}: missing <ObjectID>")
    oid = _parse_id(_strip(raw_id.text), f"{where}: <ObjectID>")
    where = f"object {oid} ({name})" if name else f"object {oid}"
    if not name:
        raise ModelError(f"{where}: missing or empty <Name>")
    resources: dict[int, ResourceDefinition] = {}
    container = _child(el, "Resources", where)
    for item in _children(container, "Item") if container is not None else []:
        res = _parse_resource(item, where)
        if res.id in resources:
            raise ModelError(f"{where}: resource id {res.id} is defined twice")
        resources[res.id] = res
    return ObjectDefinition(
        id=oid,
        name=name,
        version=_text(el, "ObjectVersion", where) or "1.0",
        lwm2m_version=_text(el, "LWM2MVersion", where) or "1.0",
        multiple=_flag(el, "MultipleInstances", _MULTIPLE, where),
        mandatory=_flag(el, "Mandatory", _MANDATORY, where),
        urn=_text(el, "ObjectURN", where),
        resources=resources,
        description=_text(el, "Description1", where),
    )


def _parse_resource(item: Element, obj_where: str) -> ResourceDefinition:
    raw_id = item.get("ID")
    if raw_id is None:
        raise ModelError(f"{obj_where}: <Item> without an ID attribute")
    rid = _parse_id(raw_id.strip(), f"{obj_where}: <Item ID>")
    where = f"{obj_where}, resource {rid}"
    name = _text(item, "Name", where)
    if not name:
        raise ModelError(f"{where}: missing or empty <Name>")
    where = f"{where} ({name})"
    operations = _text(item, "Operations", where)
    if operations not in OPERATIONS:
        raise ModelError(f"{where}: unknown <Operations> {operations!r}, expected R, W, RW, E or empty")
    try:
        rtype = ResourceType.from_ddf(_text(item, "Type", where))
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from e
    return ResourceDefinition(
        id=rid,
        name=name,
        operations=operations,
        multiple=_flag(item, "MultipleInstances", _MULTIPLE, where),
        mandatory=_flag(item, "Mandatory", _MANDATORY, where),
        type=rtype,
        range=_text(item, "RangeEnumeration", where),
        units=_text(item, "Units", where),
        description=_text(item, "Description", where),
    )


def _parse_id(text: str, where: str) -> int:
    if not _ID.fullmatch(text) or int(text) > 65535:
        raise ModelError(f"{where} {text!r} is not an id in 0..65535")
    return int(text)


def _flag(el: Element, tag: str, values: dict[str, bool], where: str) -> bool:
    child = _child(el, tag, where)
    if child is None:
        raise ModelError(f"{where}: missing <{tag}>")
    text = _strip(child.text)
    try:
        return values[text.lower()]
    except KeyError:
        expected = " or ".join(v.capitalize() for v in values)
        raise ModelError(f"{where}: <{tag}> is {text!r}, expected {expected}") from None


def _local(tag: object) -> str:
    """The local name of an element tag (a namespace, if any, dropped; comments have non-str tags)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el: Element, tag: str) -> list[Element]:
    return [c for c in el if _local(c.tag) == tag]


def _child(el: Element, tag: str, where: str) -> Element | None:
    found = _children(el, tag)
    if len(found) > 1:
        raise ModelError(f"{where}: <{tag}> appears {len(found)} times")
    return found[0] if found else None


def _text(el: Element, tag: str, where: str) -> str:
    child = _child(el, tag, where)
    return _strip(child.text) if child is not None else ""


def _strip(text: str | None) -> str:
    return (text or "").strip()
