"""Shared fixtures. Reference data (OMA XML, SUIT and COSE vectors) is read from ../shared/reference, beside the
repository, never copied into it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("SCRATCH_REFERENCE", REPO.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference() -> Path:
    """The reference-data folder; tests that need it are skipped, with the reason, when it is absent."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (set SCRATCH_REFERENCE)")
    return REFERENCE
