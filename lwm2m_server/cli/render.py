"""Human-readable output of API answers (rich tables), with resource names from the object model."""

from __future__ import annotations

import datetime as dt
from typing import Any

from rich.console import Console
from rich.table import Table

from lwm2m_server.core.model import ObjectModel


def _rows(node: dict[str, Any], ids: list[int], model: ObjectModel, rows: list[tuple[str, str, str, str]]) -> None:
    """Flatten a JSON node found at path ``ids`` into (path, name, type, value) rows."""
    kind = node["kind"]
    if kind == "object":
        for inst in node["instances"]:
            _rows(inst, [*ids, inst["id"]], model, rows)
        return
    if kind == "instance":
        for res in node["resources"]:
            _rows(res, [*ids, res["id"]], model, rows)
        return
    rdef = model.resource(ids[0], ids[2]) if len(ids) >= 3 else None
    name = rdef.name if rdef else ""
    path = "/" + "/".join(str(i) for i in ids)
    if kind == "multiple":
        if not node["values"]:
            rows.append((path, name, node["type"], "(no instances)"))
        for k, v in node["values"].items():
            rows.append((f"{path}/{k}", name, node["type"], _show(v, node["type"])))
    else:
        rows.append((path, name, node["type"], _show(node["value"], node["type"])))


def _show(value: Any, rtype: str) -> str:
    if rtype == "Time" and isinstance(value, int):
        try:
            return f"{value} ({dt.datetime.fromtimestamp(value, dt.UTC):%Y-%m-%d %H:%M:%S}Z)"
        except (OverflowError, OSError, ValueError):
            return str(value)
    if rtype == "Opaque":
        return f"0x{value}" if value else "(empty)"
    return str(value)


def node_table(content: dict[str, Any], path: str, model: ObjectModel, title: str | None = None) -> Table:
    rows: list[tuple[str, str, str, str]] = []
    _rows(content, [int(x) for x in path.strip("/").split("/") if x], model, rows)
    table = Table(title=title, show_lines=False)
    for col in ("path", "name", "type", "value"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    return table


def _objects(instances: list[str]) -> str:
    """``['/1/0', '/3/0', '/5/0']`` as ``1 3 5`` (object ids, each once, in order)."""
    ids = dict.fromkeys(p.strip("/").split("/")[0] for p in instances if p.strip("/"))
    return " ".join(ids)


def devices_table(devices: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(devices)} registered device(s)")
    for col in ("endpoint", "address", "security", "lwm2m", "binding", "lifetime", "objects", "last update"):
        table.add_column(col, overflow="fold")
    for d in devices:
        updated = dt.datetime.fromtimestamp(d["updated_at"], dt.UTC).strftime("%H:%M:%S")
        security = "DTLS-PSK" if d.get("secure") else "none"
        endpoint = d["endpoint"] + (f" ({len(d['children'])} behind)" if d.get("children") else "")
        address = f"via {d['gateway']} /{d['path_prefix']}" if d.get("gateway") else d["address"]
        table.add_row(endpoint, address, security, d["lwm2m_version"],
                      d["binding"] + (" Q" if d["queue_mode"] else ""), str(d["lifetime"]), _objects(d["objects"]),
                      updated)
    return table


def device_details(d: dict[str, Any]) -> Table:
    """One device: its registration, and its gateway or the end devices behind it."""
    table = Table(title=d["endpoint"], show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [("registration", d["registration_id"]), ("tenant", d["tenant_id"]),
            ("security", "DTLS-PSK" if d.get("secure") else "none"),
            ("lwm2m", f"{d['lwm2m_version']} binding {d['binding']}" + (" Q" if d["queue_mode"] else "")),
            ("lifetime", f"{d['lifetime']} s"), ("reachable", "yes" if d.get("reachable") else "no"),
            ("objects", _objects(d["objects"]))]
    if d.get("gateway"):
        rows.insert(0, ("gateway", f"{d['gateway']} (prefix /{d['path_prefix']})"))
    else:
        rows.insert(0, ("address", d["address"]))
    if d.get("children"):
        rows.append((f"end devices ({len(d['children'])})", ", ".join(d["children"])))
    for name, value in rows:
        table.add_row(name, value)
    return table


def print_response(console: Console, answer: dict[str, Any], path: str, model: ObjectModel) -> None:
    if "content" in answer and isinstance(answer["content"], dict) and "kind" in answer["content"]:
        console.print(node_table(answer["content"], path, model,
                                 title=f"{path} ({answer.get('format', '?')}, {answer['code']})"))
    elif "content" in answer and isinstance(answer["content"], dict):
        for p, node in answer["content"].items():
            console.print(node_table(node, p, model, title=p))
    elif "links" in answer:
        for link in answer["links"]:
            console.print(link["text"], markup=False, highlight=False)
    else:
        console.print(f"{answer['code']}" + (f" location {answer['location']}" if "location" in answer else ""))


def components_table(endpoint: str, components: list[dict[str, Any]]) -> Table:
    """A device's components (object 32700), in install order."""
    table = Table(title=f"{endpoint}: {len(components)} component(s)")
    for col in ("component", "kind", "version", "state", "result", "size", "sha-256", "pending"):
        table.add_column(col, overflow="fold")
    for c in components:
        table.add_row(c["name"] or "?", c["kind"] or "", c["version"] or "", c["state"] or "",
                      "" if c["update_result"] is None else str(c["update_result"]),
                      "" if c["size"] is None else str(c["size"]), (c["digest"] or "")[:16],
                      c.get("pending_version") or "")
    return table
