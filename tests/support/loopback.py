"""Tests touch only 127.0.0.1: an audit hook (PEP 578) refuses, in this process, every TCP connection to a
non-loopback address and every name lookup other than localhost (numeric hosts such as ``0`` or
``0x7f.1`` are parsed, not looked up, so the resolver may read them; connecting is what is checked).

A refused connection raises ``ConnectionRefusedError`` and a refused lookup ``socket.gaierror`` — what a
closed port or an unknown name would raise — so code under test sees an ordinary network failure, and a
test that needed the internet fails instead of reaching it. Child processes (the node OpenID provider,
Chromium, gunicorn) are not covered; they are started on 127.0.0.1 by the fixtures.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import sys
from typing import Any

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_installed = False


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:  # the numeric forms the system resolver takes without DNS: 2130706433, 0x7f.1
        return ipaddress.IPv4Address(socket.inet_aton(host)).is_loopback
    except OSError:
        return False


def _is_numeric(host: str) -> bool:
    """An address the resolver reads without DNS (any range: the connect check decides where it may go)."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        pass
    if any(c.isspace() for c in host):  # inet_aton stops at a space; getaddrinfo would ask DNS for the rest
        return False
    try:
        socket.inet_aton(host)
        return True
    except OSError:
        return False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"tests touch only 127.0.0.1, not {address[0]}")
    elif event == "socket.getaddrinfo":
        host = args[0]
        if isinstance(host, bytes):
            host = host.decode("idna", "replace")
        if host is not None and host.lower() not in LOCAL_NAMES and not _is_numeric(host):
            raise socket.gaierror(socket.EAI_NONAME, f"tests look up no names but localhost, not {host!r}")


def install() -> None:
    """Install the hook once per process (audit hooks cannot be removed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
