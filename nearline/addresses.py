"""What kind of address a host is: the one place nearline decides "is this loopback?" and "is
this a public address?".

``nearline serve`` and ``nearline triton serve`` refuse to listen off loopback without keys;
the callback guard (:mod:`nearline.callbacks`) refuses to send to loopback, private, link-local
and other non-public addresses unless an :class:`AllowList` names them.

Host text from a URL is read the way a browser (the WHATWG URL standard) and the C library's
``inet_aton`` read it, so that no spelling slips past a check: ``2130706433``, ``0x7f.1``,
``0177.0.0.1`` and ``127.1`` are all ``127.0.0.1``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Ranges that are never a public unicast address, each with the word a refusal uses for it.
#: Stated here rather than left to ``ipaddress``'s ``is_global``, whose tables change between
#: Python versions; ``is_global`` is still checked last for anything not listed.
_NOT_PUBLIC: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("0.0.0.0/8", "unspecified"),
        ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "IETF protocol"),
        ("192.0.2.0/24", "documentation"),
        ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo"),
        ("2001:db8::/32", "documentation"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"),
        ("ff00::/8", "multicast"),
    )
)
#: IPv6 forms that carry an IPv4 address in their last 32 bits, which is then what counts.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_DIGITS = frozenset("0123456789")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback ranges (127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_localhost_name(name: str) -> bool:
    """True for ``localhost`` and its subdomains, which always mean loopback (RFC 6761)."""
    name = name.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def non_public_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public unicast address (e.g. ``"loopback"``); None when it is one.

    IPv4-mapped (``::ffff:127.0.0.1``), IPv4-compatible (``::127.0.0.1``), NAT64
    (``64:ff9b::7f00:1``) and 6to4 (``2002:7f00:1::``) addresses are judged by the IPv4
    address they carry.
    """
    for net, why in _NOT_PUBLIC:
        if ip.version == net.version and ip in net:
            return why
    inner = embedded_ipv4(ip)
    if inner is not None:
        inner_why = non_public_reason(inner)
        return None if inner_why is None else f"{inner_why}, as IPv4 in IPv6"
    return None if ip.is_global else "not globally routable"


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read as an IPv4 address in any spelling a browser or ``inet_aton`` accepts.

    One to four dot-separated numbers, each decimal, octal (leading ``0``) or hex (``0x``), the
    last filling the remaining bytes; a trailing dot is allowed. None when ``host`` is a name
    (its last label is not a number).

    Raises:
        ValueError: The last label is a number but the whole is no address (``1.2.3.4.5``,
            ``256.1.1.1``): a browser refuses such a host, and so does nearline.
    """
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()
    if _number(labels[-1]) is None:
        return None
    numbers = [_number(label) for label in labels]
    if len(numbers) > 4 or None in numbers:
        raise ValueError(f"{host!r} ends in a number but is not an IPv4 address")
    *high, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in high) or last >= 256 ** (4 - len(high)):
        raise ValueError(f"{host!r} is out of the IPv4 range")
    value = last + sum(n << (8 * (3 - i)) for i, n in enumerate(high))
    return ipaddress.IPv4Address(value)


def _number(label: str) -> int | None:
    """One label of an IPv4 literal as a number (decimal, 0-octal, 0x-hex); None if it is not one."""
    if label[:2] in ("0x", "0X"):
        digits, base, chars = label[2:], 16, _HEX_DIGITS
    elif len(label) > 1 and label[0] == "0":
        digits, base, chars = label[1:], 8, frozenset("01234567")
    else:
        digits, base, chars = label, 10, _DIGITS
    if not set(digits) <= chars or (base == 10 and not digits):
        return None
    return int(digits, base) if digits else 0


def host_name(name: str) -> str:
    """``name`` as a DNS name to look up: IDNA-encoded, lower case, without a trailing dot.

    Raises:
        ValueError: Not a host name (empty labels, labels over 63 characters, characters a
            name cannot have).
    """
    try:
        ascii_name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"{name!r} is not a valid host name") from None
    labels = ascii_name.removesuffix(".").split(".")
    if len(ascii_name) > 253 or not all(0 < len(x) <= 63 and set(x) <= _NAME_CHARS for x in labels):
        raise ValueError(f"{name!r} is not a valid host name")
    return ".".join(labels)


@dataclass(frozen=True)
class AllowList:
    """Non-public addresses that callbacks may go to anyway: networks and host names.

    A host name here may resolve to any address; a network admits the addresses in it (an
    IPv4-mapped IPv6 address counts as its IPv4 address).
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, raw: str) -> AllowList:
        """``127.0.0.1/32,10.1.2.0/24,hooks.internal``: CIDRs, addresses and host names.

        Raises:
            ValueError: An item is neither a network nor a host name (the message names it).
        """
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in raw.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]")))
                continue
            except ValueError as exc:
                if "/" in item or ":" in item:
                    raise ValueError(f"{item!r} is not a network: {exc}") from None
            if _number(item.rstrip(".").split(".")[-1]) is not None:
                raise ValueError(f"{item!r}: write an address as a dotted quad or a CIDR")
            hosts.add(host_name(item))
        return cls(tuple(networks), frozenset(hosts))

    def allows_address(self, ip: IPAddress) -> bool:
        """True when a network of the list holds ``ip``."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def allows_host(self, name: str) -> bool:
        """True when the list names the host ``name`` (as :func:`host_name` writes it)."""
        return name in self.hosts

    def __str__(self) -> str:
        items = [str(n) for n in self.networks] + sorted(self.hosts)
        return ",".join(items) if items else "none"
