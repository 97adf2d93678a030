"""A tenant's white label, validated: what replaces "SCRATCh" for its users, reports, webhooks and CLI banners.

Invariant: a stored brand has a printable name of 1-64 characters, ``#RRGGBB`` colours, an https support URL and a
logo that is a PNG, or an SVG without scripts, of at most :data:`MAX_LOGO` bytes: a brand is shown in browsers, so
nothing in it may run there.
"""

from __future__ import annotations

import re
from typing import Final

from lwm2m_server.core.errors import InvalidRequestError
from lwm2m_server.tenancy.stores import Brand

__all__ = ["MAX_LOGO", "PRODUCT_NAME", "brand_from_fields", "product_name"]

PRODUCT_NAME: Final = "SCRATCh"
MAX_LOGO: Final = 256 << 10
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_LOGO_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png"}


def product_name(brand: Brand | None) -> str:
    """The name to show: the brand's, else the product's own."""
    return brand.product_name if brand is not None else PRODUCT_NAME


def brand_from_fields(product_name: str, *, report_issuer: str | None = None, primary_color: str | None = None,
                      accent_color: str | None = None, support_url: str | None = None,
                      logo: bytes | None = None) -> Brand:
    """A validated brand: a name of 1-64 printable characters, ``#RRGGBB`` colours, an https (or loopback http)
    support URL, a PNG or SVG logo of at most :data:`MAX_LOGO` bytes."""
    name = product_name.strip()
    if not 0 < len(name) <= 64 or not name.isprintable():
        raise InvalidRequestError("the product name is 1-64 printable characters")
    if report_issuer is not None and not (0 < len(report_issuer.strip()) <= 128 and report_issuer.isprintable()):
        raise InvalidRequestError("the report issuer is 1-128 printable characters")
    for color in (primary_color, accent_color):
        if color is not None and not _COLOR.fullmatch(color):
            raise InvalidRequestError(f"colour {color[:16]!r} is not #RRGGBB")
    if support_url is not None and not (support_url.startswith("https://")
                                        or support_url.startswith("http://127.0.0.1")
                                        or support_url.startswith("http://localhost")):
        raise InvalidRequestError("the support URL must be https://")
    logo_type = None
    if logo is not None:
        if len(logo) > MAX_LOGO:
            raise InvalidRequestError(f"the logo is larger than {MAX_LOGO} bytes")
        logo_type = next((t for magic, t in _LOGO_TYPES.items() if logo.startswith(magic)), None)
        head = logo[:512].lstrip().lower()
        if logo_type is None and (head.startswith(b"<svg") or head.startswith(b"<?xml")) and b"<svg" in head:
            if b"<script" in logo.lower() or b"javascript:" in logo.lower():
                raise InvalidRequestError("an SVG logo may not carry scripts")
            logo_type = "image/svg+xml"
        if logo_type is None:
            raise InvalidRequestError("the logo must be a PNG or an SVG file")
    return Brand(name, report_issuer.strip() if report_issuer else None, primary_color, accent_color, support_url,
                 logo, logo_type)
