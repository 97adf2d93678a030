"""Differential updates: a delta turns the image a device runs (the base) into the new image (the target).

The format is detools' sequential patch (bsdiff-style diff and extra blocks, read front to back) compressed with
heatshrink, window 2^8 and lookahead 2^7 (how detools' C library builds heatshrink): a device applies it streaming,
reading the base and writing the target once each, with about 0.5 KiB of decompressor state (256-byte window,
256-byte input buffer) and no second copy of either image in RAM. Its first byte names the patch type and
compression, then come the target's size (detools' variable-length integer) and heatshrink's own parameter byte.

Invariants: :func:`apply_delta` reads the target's size from the delta and refuses, before producing anything, a
target larger than ``max_size``; it raises :class:`DeltaError` and nothing else for any input bytes, and returns
exactly the declared number of bytes. Checking that the base is the right one and the result the expected image
is the caller's job (:func:`firmware_object.suit.components.apply_component`).
"""

from __future__ import annotations

import io
from typing import Final

import detools
from detools.common import (
    COMPRESSIONS,
    PATCH_TYPES,
    unpack_header,
    unpack_size,
)
from detools.compression.heatshrink import pack_header as heatshrink_header

from firmware_object.errors import DeltaError

DELTA_FORMAT: Final = "detools-sequential-heatshrink"
"""The name a manifest gives this format (SUIT private-use parameter ``delta-format``)."""
_PATCH_TYPE: Final = "sequential"
_COMPRESSION: Final = "heatshrink"
HEATSHRINK_WINDOW_SZ2: Final = 8
HEATSHRINK_LOOKAHEAD_SZ2: Final = 7
_HEATSHRINK_HEADER: Final[bytes] = heatshrink_header(HEATSHRINK_WINDOW_SZ2, HEATSHRINK_LOOKAHEAD_SZ2)


def make_delta(base: bytes, target: bytes) -> bytes:
    """A delta in :data:`DELTA_FORMAT` from ``base`` to ``target`` (deterministic)."""
    patch = io.BytesIO()
    detools.create_patch(
        io.BytesIO(base),
        io.BytesIO(target),
        patch,
        compression=_COMPRESSION,
        patch_type=_PATCH_TYPE,
        use_mmap=False,
        heatshrink_window_sz2=HEATSHRINK_WINDOW_SZ2,
        heatshrink_lookahead_sz2=HEATSHRINK_LOOKAHEAD_SZ2,
    )
    return patch.getvalue()


def delta_target_size(delta: bytes) -> int:
    """The size of the image ``delta`` produces, from its header. Raises :class:`DeltaError` for anything that is
    not a delta in :data:`DELTA_FORMAT`."""
    if not delta:
        raise DeltaError("empty delta")
    try:
        stream = io.BytesIO(delta)
        patch_type, compression = unpack_header(stream.read(1))
        if patch_type != PATCH_TYPES[_PATCH_TYPE] or compression != COMPRESSIONS[_COMPRESSION]:
            raise DeltaError(f"delta is not {DELTA_FORMAT} (patch type {patch_type}, compression {compression})")
        size = unpack_size(stream)
        if isinstance(size, int) and size > 0 and stream.read(1) != _HEATSHRINK_HEADER:
            expected = f"{HEATSHRINK_WINDOW_SZ2}/{HEATSHRINK_LOOKAHEAD_SZ2}"
            raise DeltaError(f"delta's heatshrink window/lookahead bits are not {expected}")
    except DeltaError:
        raise
    except Exception as exc:  # detools raises its own Error, IndexError, struct and bitstruct errors
        raise DeltaError(f"unreadable delta header: {exc}") from exc
    if not isinstance(size, int) or size < 0:
        raise DeltaError("delta declares a negative target size")
    return size


def apply_delta(base: bytes, delta: bytes, *, max_size: int) -> bytes:
    """The target that ``delta`` makes from ``base``. Raises :class:`DeltaError` for a corrupt or unusable delta,
    including one whose target would exceed ``max_size`` bytes (refused before anything is produced)."""
    size = delta_target_size(delta)
    if size > max_size:
        raise DeltaError(f"delta would produce {size} bytes, more than the limit of {max_size}")
    target = io.BytesIO()
    try:
        written = detools.apply_patch(io.BytesIO(base), io.BytesIO(delta), target)
    except Exception as exc:  # every failure inside detools, whatever its type, is a corrupt delta
        raise DeltaError(f"delta does not apply: {exc}") from exc
    result = target.getvalue()
    if written != size or len(result) != size:
        raise DeltaError(f"delta produced {len(result)} bytes instead of the declared {size}")
    return result
