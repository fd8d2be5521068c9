"""THE outbound guard: which addresses the app may connect to, and the one way to open a socket to them.

Every connection to a host that an admin, a service token, a provider's discovery document or a setting
named goes through :class:`OutboundGuard`, whatever the protocol:

* HTTP — :class:`app.net.OutboundClient` connects through :meth:`OutboundGuard.vetted_addresses` in its
  httpcore network backend (so redirects, retries and pooled reconnects are checked too);
* SMTP — :mod:`app.mailer` gets its socket from :meth:`OutboundGuard.connect`;
* anything else that opens a socket (webhook deliveries go through the HTTP client; a proxy or another
  protocol calls :meth:`OutboundGuard.connect` and wraps the socket in TLS with the *original* host name).

Ruff's banned-api keeps ``socket.create_connection``/``socket.socket`` and the protocol clients (httpx,
smtplib, …) out of every other module.

The rules, in production and everywhere else alike (``AMI_AUTH_OUTBOUND_ALLOW`` is the only way round them):

1. **Resolve once, vet every address, connect to a vetted one.** The host is resolved once; *every*
   address it resolves to must pass; the socket connects to an address literal from that list, so
   nothing resolves the name a second time and DNS rebinding has no window. TLS still uses the
   configured host name for SNI and the certificate check (the caller wraps the socket with it).
2. **Numeric spellings mean what the socket layer makes of them.** ``127.1``, ``2130706433``,
   ``0x7f000001``, ``0177.0.0.1`` and ``0`` are address literals to ``getaddrinfo`` (glibc reads them
   with ``inet_aton``), so the guard reads them the same way (``AI_NUMERICHOST``: no DNS) and vets the
   address they denote; ``[::1]`` loses its brackets, ``127.0.0.1.`` its trailing dot; ``localhost``,
   ``localhost.`` and ``*.localhost`` are loopback whatever the resolver says (RFC 6761 §6.3).
3. **Refused unless allow-listed:** anything the stdlib ``ipaddress`` module does not call globally
   reachable (loopback, private, link-local — cloud metadata at 169.254.169.254 —, CGNAT, documentation,
   ``0.0.0.0/8``…), multicast, unspecified and reserved addresses; IPv6 forms that carry an IPv4 address
   (IPv4-mapped, 6to4, NAT64) are judged by the IPv4 address they reach. Cloud metadata host names are
   refused by name, before any lookup.

Errors: a refused address is :class:`OutboundBlocked` (``invalid_config``, naming the address and why);
a name that does not resolve is :class:`UnresolvedHost` (an ``OSError``, like any other connection
failure); a failed connect is the ``OSError`` the socket raised.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from app.errors import AppError
from app.settings import Settings

__all__ = [
    "ALLOW_HINT",
    "OutboundBlocked",
    "OutboundGuard",
    "Resolver",
    "UnresolvedHost",
    "blocked_reason",
    "numeric_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> addresses``; the default asks the system resolver (``socket.getaddrinfo``)."""

ALLOW_HINT: Final = "Allow it with AMI_AUTH_OUTBOUND_ALLOW if it is intended"

# Names that cloud providers resolve to their instance metadata service from inside a VM; refused by
# name so a split-horizon resolver cannot hand out an address we do not recognise as metadata.
METADATA_HOSTS: Final = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)
# Named in the refusal so an admin sees what the address is; both are refused as link-local / private anyway.
METADATA_ADDRESSES: Final = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
# RFC 6052: a NAT64 gateway connects to the IPv4 address in the last 32 bits. ipaddress has properties for
# the mapped (::ffff:0:0/96) and 6to4 forms, not for this prefix.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# For the message only (the decision is ``is_global``): the RFC 1918 / RFC 4193 blocks people call private,
# as opposed to documentation, benchmarking and the other special-purpose blocks.
_PRIVATE_USE: Final = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


# --- errors -------------------------------------------------------------------------------------------


class OutboundBlocked(AppError):
    """The address is somewhere the app must not connect to (internal address, wrong scheme)."""

    def __init__(self, message: str, *, host: str, hint: str = ALLOW_HINT) -> None:
        super().__init__("invalid_config", message=message, hint=hint)
        self.host = host


class UnresolvedHost(OSError):
    """The host name has no address (DNS failure or an empty answer)."""


# --- address policy -----------------------------------------------------------------------------------


def _unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address really reaches, when it embeds one (mapped, 6to4, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _parse_address(address: str) -> IPAddress:
    # getaddrinfo returns link-local IPv6 with a zone ("fe80::1%eth0"); the zone does not change the range.
    return ipaddress.ip_address(address.split("%", 1)[0])


def blocked_reason(address: str | IPAddress) -> str | None:
    """Why ``address`` is off limits for outbound connections, or ``None`` if it is a public address.

    The allow list is not consulted here; see :class:`OutboundGuard`.
    """
    ip = _parse_address(address) if isinstance(address, str) else address
    ip = _unwrap(ip)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    # Multicast (224.0.0.0/4, ff00::/8) counts as "global" to ipaddress, so it is checked on its own.
    if ip.is_multicast:
        return "multicast"
    # Before is_global: ipaddress calls IPv4-compatible (::a.b.c.d) and other ::/8 addresses global.
    if ip.is_reserved:
        return "reserved"
    if ip.is_global:
        return None
    if isinstance(ip, ipaddress.IPv4Address) and not ip.is_private:
        # RFC 6598 shared address space (100.64.0.0/10) is the one IPv4 block neither private nor global.
        return "shared address space"
    if any(ip in net for net in _PRIVATE_USE if net.version == ip.version):
        return "private"
    # Documentation, benchmarking, 0.0.0.0/8, Teredo, ORCHIDs…
    return "not globally routable"


def numeric_address(host: str) -> str | None:
    """The address literal that ``host`` spells, read as the socket layer reads it, or ``None`` for a name.

    ``getaddrinfo`` takes the BSD ``inet_aton`` forms (``127.1``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
    ``0``) as addresses without asking DNS; so does this, through ``AI_NUMERICHOST``. Brackets around an IPv6
    literal and one trailing dot (``127.0.0.1.``, which no resolver answers with anything else: RFC 3696 §2
    forbids an all-numeric top-level domain) are dropped first. A standard literal comes back as written,
    zone included (``fe80::1%eth0``), so a connection to it keeps its interface.
    """
    candidate = host.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    if candidate.endswith(".") and not candidate.endswith(".."):
        candidate = candidate[:-1]
    if not candidate:
        return None
    try:
        _parse_address(candidate)
    except ValueError:
        pass
    else:
        return candidate
    if not candidate.isascii() or not candidate.replace(".", "").isalnum():
        return None  # not even the shape of an inet_aton form: a name (or garbage the resolver refuses)
    try:
        infos = socket.getaddrinfo(
            candidate, None, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_NUMERICHOST
        )
    except (OSError, UnicodeError, ValueError):
        return None
    return str(infos[0][4][0]) if infos else None


def _is_localhost(name: str) -> bool:
    """RFC 6761 §6.3: ``localhost`` and every name under it are the loopback interface, with or without DNS."""
    return name == "localhost" or name.endswith(".localhost")


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _system_resolver(host: str, port: int) -> Sequence[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


# --- the guard ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboundGuard:
    """Decides which addresses a host may be reached at, and opens sockets only to those.

    A host name passes only if **every** address it resolves to is public or allowed: a name with one
    public and one internal address would otherwise reach the internal one whenever the public one is
    down (or listed second). To allow such a name, list the name itself or each of its addresses.

    ``OutboundGuard()`` allows nothing internal; :meth:`from_settings` reads ``AMI_AUTH_OUTBOUND_ALLOW``.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()
    resolver: Resolver = _system_resolver

    @classmethod
    def from_allow(cls, allow: Iterable[str], resolver: Resolver | None = None) -> OutboundGuard:
        """``allow`` holds IPs, CIDR ranges and host names (the form of ``AMI_AUTH_OUTBOUND_ALLOW``)."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in allow:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                hosts.add(_normal_host(entry))
        return cls(tuple(networks), frozenset(hosts), resolver or _system_resolver)

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver | None = None) -> OutboundGuard:
        """The guard ``AMI_AUTH_OUTBOUND_ALLOW`` describes: the one every outbound connection goes through."""
        return cls.from_allow(settings.outbound_allow, resolver)

    def address_allowed(self, address: IPAddress) -> bool:
        candidates = {address, _unwrap(address)}
        return any(ip in net for ip in candidates for net in self.networks if ip.version == net.version)

    def check_address(self, host: str, address: str) -> None:
        """Raise :class:`OutboundBlocked` unless ``address`` (one of ``host``'s) may be used."""
        ip = _parse_address(address)
        if self.address_allowed(ip):
            return
        reason = blocked_reason(ip)
        if reason is not None:
            target = host if address == host else f"{host} resolves to {address}"
            raise OutboundBlocked(f"Outbound address not allowed: {target} ({reason})", host=host)

    def vetted_addresses(self, host: str, port: int) -> tuple[str, ...]:
        """Resolve ``host`` once and return its addresses, all checked; raise if any is refused.

        Raises :class:`OutboundBlocked` for a refused address and :class:`UnresolvedHost` when the name
        has no address. The addresses are literals: connect to them, never to ``host`` again.
        """
        name = _normal_host(host)
        literal = numeric_address(host)
        if literal is not None:
            addresses: Sequence[str] = [literal]
        else:
            if name in METADATA_HOSTS and name not in self.hosts:
                raise OutboundBlocked(f"Outbound address not allowed: {host} (cloud metadata)", host=host)
            try:
                addresses = self.resolver(host, port)
            except (OSError, UnicodeError, ValueError) as exc:
                if _is_localhost(name) and name not in self.hosts:
                    raise OutboundBlocked(f"Outbound address not allowed: {host} (loopback)", host=host) from None
                raise UnresolvedHost(f"DNS lookup failed ({exc})") from exc
            if not addresses:
                raise UnresolvedHost("DNS lookup returned no address")
        unique = tuple(dict.fromkeys(addresses))
        if name not in self.hosts:
            for address in unique:
                if _is_localhost(name) and not _unwrap(_parse_address(address)).is_loopback:
                    # RFC 6761 §6.3: a localhost name is loopback; a resolver saying otherwise is not believed.
                    raise OutboundBlocked(f"Outbound address not allowed: {host} (loopback)", host=host)
                self.check_address(host, address)
        return unique

    def connect(self, host: str, port: int, *, timeout: float | None) -> socket.socket:
        """A TCP connection to ``host:port`` at an address this guard vetted — the way to open a socket.

        Tries each vetted address in turn (as ``socket.create_connection`` does) with ``timeout`` for each.
        The caller wraps the socket in TLS with ``server_hostname=host``, so SNI and the certificate check
        use the configured name, not the address. Raises :class:`OutboundBlocked` before any packet is sent
        to a refused address, :class:`UnresolvedHost`, or the ``OSError`` of the last failed attempt.
        """
        last_error: OSError | None = None
        for address in self.vetted_addresses(host, port):
            try:
                # An address literal: getaddrinfo parses it without DNS, so this is what was vetted.
                return socket.create_connection((address, port), timeout)
            except OSError as exc:
                last_error = exc
        assert last_error is not None  # vetted_addresses never returns an empty tuple
        raise last_error
