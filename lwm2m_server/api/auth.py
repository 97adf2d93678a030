"""Who is calling, and may they: the API's side of :mod:`lwm2m_server.tenancy`.

:class:`~lwm2m_server.api.app.ApiGuard` authenticates the bearer token before the app runs and puts the
:class:`~lwm2m_server.tenancy.model.Principal` into the request's state; every route then declares the one action
it performs with ``Depends(caller(Action.X))``, which authorises it (403 otherwise) and hands the route the principal.
Routes take the tenant from that principal only (never from the path, query or body), so another tenant's device,
release or campaign is looked up in the caller's tenant and is a 404, indistinguishable from one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Request

from lwm2m_server.tenancy.model import Action, Principal, authorize

__all__ = ["PRINCIPAL", "caller", "principal_of"]

PRINCIPAL = "principal"  # the key of the principal in the ASGI scope's state


def principal_of(request: Request) -> Principal:
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    if not isinstance(principal, Principal):  # the guard lets no request through without one
        raise RuntimeError("no authenticated principal on this request")
    return principal


def caller(action: Action) -> Any:
    """A FastAPI dependency: the authenticated principal, once it is authorised for ``action``."""

    def dependency(request: Request) -> Principal:
        principal = principal_of(request)
        authorize(principal, action)
        return principal

    dependency.__name__ = f"may_{action.name.lower()}"
    return Depends(dependency)


Authenticate = Callable[[str], Principal | None]
