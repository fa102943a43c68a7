"""Callbacks: the guard that decides where a job's webhook may go.

A callback is a request the server makes because a client asked, so without a guard a client
could aim it at anything the server can reach (server-side request forgery): nearline's own API
on loopback (a callback once terminated another caller's job), a cloud metadata service on
169.254.169.254, a database on the private network. The rules:

* only ``https``; ``http`` only where the allow-list (``NEARLINE_CALLBACK_ALLOW``: networks and
  host names) admits the host, as for a receiver on loopback or the private network;
* no ``user:password@`` in the URL (it would be sent as Basic auth);
* every address the host resolves to must be a public unicast address
  (:func:`nearline.addresses.non_public_reason`), unless the allow-list admits the address or
  names the host;
* the request goes to an address that was checked, and the socket's peer is checked again
  before a byte is sent; no proxy, no redirects, bounded timeouts and reply
  (:mod:`nearline.callback_sender`, :mod:`nearline.guarded_transport`).

At submit (:meth:`CallbackGuard.check` and :meth:`CallbackGuard.check_names`), a URL that can
never pass is a ``400``: a scheme, user info, a literal address outside the allow-list in any
spelling (``2130706433``, ``0x7f.1``, ``[::ffff:127.0.0.1]``, ``localhost.``), or a name that
resolves to one. Names are resolved again for each attempt, since they may resolve differently
then. Signing and retrying are :mod:`nearline.webhooks` and :mod:`nearline.deliveries`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from nearline.addresses import (
    AllowList,
    IPAddress,
    host_name,
    ipv4_literal,
    is_localhost_name,
    non_public_reason,
)
from nearline.errors import RequestError
from nearline.settings import CALLBACK_ALLOW

#: Longest ``callback_url`` accepted; longer URLs are refused by many servers and proxies.
MAX_CALLBACK_URL = 2048
#: Longest wait for DNS at submit; past it the name is accepted and checked when sent.
SUBMIT_RESOLVE_S = 2.0
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOW_HINT = f"callbacks go to public addresses only, unless {CALLBACK_ALLOW.name} allows it"
_HTTP_HINT = f"use https, or allow the host in {CALLBACK_ALLOW.name}"

#: Looks a host name up: ``(name, port) -> addresses``, as text. Tests pass a stub.
Resolver = Callable[[str, int], Sequence[str]]


class CallbackRefused(RequestError):
    """A ``callback_url`` the guard will not send to; the message says why (a ``400`` at submit)."""

    code = "CallbackRefused"


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect, and what to tell the receiver.

    Attributes:
        scheme: ``http`` or ``https``.
        host: The host name (as :func:`~nearline.addresses.host_name` writes it) or the address.
        address: The address when the URL gave one (in any spelling); None for a host name.
        port: The port to connect to.
        host_header: ``Host`` as the URL named it (``name`` or ``name:port``).
        path: Path and query, never empty.
    """

    scheme: str
    host: str
    address: IPAddress | None
    port: int
    host_header: str
    path: str

    def url_for(self, address: IPAddress) -> str:
        """This URL with ``address`` for its host: what is actually connected to."""
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{shown}:{self.port}{self.path}"


def configured_allow_list(environ: Mapping[str, str] | None = None) -> AllowList:
    """The allow-list ``NEARLINE_CALLBACK_ALLOW`` sets (``environ`` defaults to the process's)."""
    allow: AllowList = CALLBACK_ALLOW.read(os.environ if environ is None else environ)
    return allow


def check_callback_url(url: str, allow: AllowList) -> Target:
    """Check ``url`` as far as can be done without DNS.

    Raises:
        CallbackRefused: The URL can never be sent to: not https (nor http to an allowed host),
            user info, no host, a bad port, or an address (in any spelling) that is neither
            public nor allowed.
    """
    if len(url) > MAX_CALLBACK_URL:
        raise CallbackRefused(f"is longer than {MAX_CALLBACK_URL} characters")
    if not url.isprintable():  # control characters, lone surrogates
        raise CallbackRefused("contains characters a URL cannot have")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackRefused(f"is not a valid URL: {exc}") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise CallbackRefused("must be an absolute https URL")
    if "@" in parts.netloc:
        raise CallbackRefused("must not carry a user name or password")
    if not parts.hostname or port == 0:
        raise CallbackRefused("must name a host (and a port other than 0)")
    address, host = _host_of(parts.hostname, bracketed="[" in parts.netloc)
    if address is not None:
        why = refusal(address, allow)
        if why is not None:
            written = "" if parts.hostname == host else f"{parts.hostname} = "
            raise CallbackRefused(f"names {written}{why}; {_ALLOW_HINT}")
        if parts.scheme == "http" and not allow.allows_address(address):
            raise CallbackRefused(f"is http to {address}, which the allow-list does not name; {_HTTP_HINT}")
    elif is_localhost_name(host) and not allow.allows_host(host):
        raise CallbackRefused(f"names {host}, a loopback name; {_ALLOW_HINT}")
    port = port or _DEFAULT_PORTS[parts.scheme]
    shown = f"[{host}]" if address is not None and address.version == 6 else host
    header = shown if port == _DEFAULT_PORTS[parts.scheme] else f"{shown}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, address, port, header, path)


def refusal(address: IPAddress, allow: AllowList) -> str | None:
    """Why a callback may not go to ``address`` (``"10.0.0.1, not a public address (private)"``);
    None when it may (public, or allowed)."""
    why = non_public_reason(address)
    if why is None or allow.allows_address(address):
        return None
    return f"{address}, not a public address ({why})"


def _host_of(hostname: str, *, bracketed: bool) -> tuple[IPAddress | None, str]:
    """The URL host as ``(address, text)``: an address in any spelling, or a host name."""
    try:
        if bracketed:
            address: IPAddress | None = ipaddress.ip_address(hostname)
        else:
            address = ipv4_literal(hostname)
        return address, str(address) if address is not None else host_name(hostname)
    except ValueError as exc:
        raise CallbackRefused(f"has an invalid host: {exc}") from None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to for TCP, in the system resolver's order, once each."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class CallbackGuard:
    """Where callbacks may go: the allow-list and the resolver that names are looked up with.

    Args:
        allow: Non-public networks and host names that callbacks may go to anyway (and the
            only ones that ``http`` may go to).
        resolver: Looks host names up (the system resolver; tests pass a stub).
    """

    def __init__(self, allow: AllowList | None = None, *, resolver: Resolver = resolve) -> None:
        self.allow = AllowList() if allow is None else allow
        self.resolver = resolver

    def check(self, url: str) -> Target:
        """:func:`check_callback_url` under this guard's allow-list (no DNS)."""
        return check_callback_url(url, self.allow)

    def check_names(self, url: str) -> None:
        """At submit: refuse a name that resolves to an address the callback may not go to.

        A name that does not resolve now is accepted (DNS may be down for a moment); it is
        resolved again, and checked, for every attempt.

        Raises:
            CallbackRefused: The URL fails :meth:`check`, or its name resolves to a non-public
                address the allow-list does not admit.
        """
        target = self.check(url)
        if target.address is None:
            with contextlib.suppress(Unresolved):
                self.addresses(target)

    def addresses(self, target: Target) -> list[IPAddress]:
        """The addresses to connect to for ``target``, every one of them checked.

        Raises:
            Unresolved: The name does not resolve (now).
            CallbackRefused: One of its addresses is neither public nor allowed (and the
                allow-list does not name the host), or it is ``http`` to a host not allowed.
        """
        if target.address is not None:
            return [target.address]
        try:
            found = [ipaddress.ip_address(a) for a in self.resolver(target.host, target.port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise Unresolved(f"{target.host} does not resolve: {exc}") from None
        if not found:
            raise Unresolved(f"{target.host} resolves to no address")
        if self.allow.allows_host(target.host):
            return found
        for address in found:
            why = refusal(address, self.allow)
            if why is not None:
                raise CallbackRefused(f"names {target.host}, which resolves to {why}; {_ALLOW_HINT}")
            if target.scheme == "http" and not self.allow.allows_address(address):
                raise CallbackRefused(f"is http to {target.host} ({address}), not allowed; {_HTTP_HINT}")
        return found


class Unresolved(Exception):
    """A callback's host name did not resolve: worth another try later, not a refusal."""
