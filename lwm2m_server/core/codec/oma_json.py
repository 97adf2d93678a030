"""OMA JSON (content format 11543; LwM2M 1.0's 1543 is the same), LwM2M Core 1.0 section 6.4.4: decode only.

``{"bn": "/3/0/", "bt": ..., "e": [{"n": "0", "sv": "..."}, {"n": "6/0", "v": 1}, {"n": "2", "bv": true},
{"n": "3", "ov": "1:0"}]}``. A name is ``bn`` concatenated with ``n``; without ``bn`` a relative ``n`` is taken
relative to the request path and an absolute one (``/3/0/1``) as is. ``v`` carries numbers (Integer, Unsigned
Integer, Time, Float), ``sv`` strings (and Opaque as base64), ``bv`` booleans and ``ov`` object links; times
(``t``, ``bt``) are ignored. The node is assembled like SenML (:func:`~.senml.assemble`).

Invariant: decoding any bytes returns a node or raises :class:`CodecError`.
"""

from __future__ import annotations

from typing import Any

from lwm2m_server.core.codec.senml import (
    K_BOOL,
    K_BYTES,
    K_LINK,
    K_NULL,
    K_NUMBER,
    K_STRING,
    Leaf,
    assemble,
    load_json,
    typed_value,
)
from lwm2m_server.core.codec.text import b64decode_lenient
from lwm2m_server.core.errors import InvalidPathError, MalformedPayloadError
from lwm2m_server.core.model.definitions import ObjectModel
from lwm2m_server.core.nodes import Node, ResourceType
from lwm2m_server.core.paths import LwM2mPath

_VALUE_KEYS = {"v": K_NUMBER, "sv": K_STRING, "bv": K_BOOL, "ov": K_LINK}


def _entry(e: Any) -> tuple[str, int, Any]:
    if not isinstance(e, dict):
        raise MalformedPayloadError("an OMA JSON entry is an object")
    name = e.get("n", "")
    if type(name) is not str:
        raise MalformedPayloadError("n must be a string")
    kind, raw = K_NULL, None
    for key, k in _VALUE_KEYS.items():
        if key not in e:
            continue
        if kind != K_NULL:
            raise MalformedPayloadError("an OMA JSON entry with more than one value")
        raw = e[key]
        t = type(raw)
        if k == K_NUMBER:
            ok = t is int or t is float
        elif k == K_BOOL:
            ok = t is bool
        else:
            ok = t is str
        if not ok:
            raise MalformedPayloadError(f"OMA JSON {key} cannot be a {t.__name__}")
        kind = k
    return name, kind, raw


def _ids(name: str) -> tuple[int, ...]:
    if not name.startswith("/"):
        raise MalformedPayloadError(f"entry name {name[:60]!r} is not an absolute LwM2M path")
    try:
        ids = LwM2mPath.from_segments(name[1:].split("/")).ids
    except InvalidPathError:
        raise MalformedPayloadError(f"entry name {name[:60]!r} is not an LwM2M path") from None
    if len(ids) < 3:
        raise MalformedPayloadError(f"entry name {name!r} is not a resource or resource instance")
    return ids


def decode(payload: bytes, path: LwM2mPath, model: ObjectModel) -> Node:
    data = load_json(payload)
    if not isinstance(data, dict) or not isinstance(data.get("e"), list):
        raise MalformedPayloadError('an OMA JSON payload is an object with an "e" array')
    bn = data.get("bn")
    if bn is not None and type(bn) is not str:
        raise MalformedPayloadError("bn must be a string")
    leaves: list[Leaf] = []
    for e in data["e"]:
        name, kind, raw = _entry(e)
        if bn is not None:
            full = bn + name
        elif name.startswith("/"):
            full = name
        else:
            full = "/" + "/".join([*map(str, path.ids), name]) if name else "/" + "/".join(map(str, path.ids))
        ids = _ids(full)
        defn = model.resource(ids[0], ids[2])
        rtype = defn.type if defn is not None else None
        if rtype is ResourceType.OPAQUE and kind == K_STRING:  # OMA JSON carries opaque values as base64 in sv
            kind, raw = K_BYTES, b64decode_lenient(raw)
        leaves.append((ids, *typed_value(rtype, kind, raw)))
    return assemble(path, leaves, model)
