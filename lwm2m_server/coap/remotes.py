"""Printable forms of an aiocoap remote (display and rate-limit keys only; never used to reach a device)."""

from __future__ import annotations


def remote_address(remote: object) -> str:
    """A printable ``host:port`` for a remote (display only; never used to reach the device)."""
    hostinfo = getattr(remote, "hostinfo", None)
    return str(hostinfo) if hostinfo else repr(remote)


def remote_host(remote: object) -> str:
    """The host part of :func:`remote_address` (no port, no brackets): the per-address rate-limit key."""
    address = remote_address(remote)
    if address.startswith("["):
        return address[1:].partition("]")[0]
    host, sep, port = address.rpartition(":")
    return host if sep and ":" not in host and port.isdigit() else address
