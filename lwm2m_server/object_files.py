"""Reading DDF object definition files: the I/O shell around :mod:`lwm2m_server.core.model.ddf`.

Invariants: every failure (unreadable file, malformed DDF, two files defining one object) is a
:class:`ModelError` whose message starts with the offending file's path; a folder is read non-recursively, its
``*.xml`` files in sorted name order.
"""

from __future__ import annotations

import os
from pathlib import Path

from lwm2m_server.core.errors import ModelError
from lwm2m_server.core.model import ObjectDefinition, ObjectModel
from lwm2m_server.core.model.ddf import parse_ddf

__all__ = ["load_ddf_dir", "load_ddf_file", "model_with_dir"]


def load_ddf_file(path: str | os.PathLike[str]) -> list[ObjectDefinition]:
    """The object definitions in one DDF XML file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelError(f"{p}: cannot read DDF file: {e.strerror or e}") from e
    try:
        return parse_ddf(data)
    except ModelError as e:
        raise ModelError(f"{p}: {e}") from e


def load_ddf_dir(path: str | os.PathLike[str]) -> list[ObjectDefinition]:
    """The object definitions of every ``*.xml`` file directly in ``path``; an object id may appear only once."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder of DDF files")
    try:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() == ".xml" and f.is_file())
    except OSError as e:
        raise ModelError(f"{folder}: cannot list DDF files: {e.strerror or e}") from e
    definitions: list[ObjectDefinition] = []
    origin: dict[int, Path] = {}
    for file in files:
        for definition in load_ddf_file(file):
            if definition.id in origin:
                raise ModelError(f"{file}: object {definition.id} is already defined in {origin[definition.id]}")
            origin[definition.id] = file
            definitions.append(definition)
    return definitions


def model_with_dir(path: str | os.PathLike[str] | None) -> ObjectModel:
    """The built-in model, plus (replacing built-ins with the same id) the definitions found in ``path``."""
    model = ObjectModel.default()
    return model if path is None else model.with_definitions(load_ddf_dir(path))
