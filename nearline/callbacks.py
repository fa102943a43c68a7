"""Callbacks: POST a job's status document to its ``callback_url`` when it ends, and the guard
that decides where such a request may go.

A callback is a request the server makes because a client asked, so without a guard a client
could aim it at anything the server can reach (server-side request forgery): nearline's own API
on loopback (a callback once terminated another caller's job), a cloud metadata service on
169.254.169.254, a database on the private network. The rules:

* only ``http`` and ``https``; no ``user:password@`` in the URL (it would be sent as Basic auth);
* the host is resolved once, and every address it resolves to must be a public unicast address
  (:func:`nearline.addresses.non_public_reason`), unless the allow-list
  (``NEARLINE_CALLBACK_ALLOW``: networks and host names) admits the address or names the host;
* the request goes to an address that was checked: the URL is rewritten to that address and the
  name travels in the ``Host`` header and, for https, in TLS SNI (the certificate is verified
  against the name), so a second DNS answer cannot move it (DNS rebinding); no proxy from the
  environment, no redirects followed, the response body is not read.

At submit (:func:`check_callback_url`), a URL that can never pass is a ``400``: a scheme, user
info, or a literal address outside the allow-list, in any spelling (``2130706433``, ``0x7f.1``,
``[::ffff:127.0.0.1]``, ``localhost.``). A host name is checked when the callback is sent, since
it may resolve differently then. A callback refused then is logged once, with the reason, and
never sent.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from nearline.addresses import (
    AllowList,
    IPAddress,
    host_name,
    ipv4_literal,
    is_localhost_name,
    non_public_reason,
)
from nearline.errors import RequestError
from nearline.jobs import JobRecord, status_document
from nearline.settings import CALLBACK_ALLOW

log = logging.getLogger("nearline.callbacks")

#: Tries per callback, with a pause of 0.5 s, then 1 s, between them (best effort).
CALLBACK_ATTEMPTS = 3
#: Connect, send and response timeout of each try.
CALLBACK_TIMEOUT_S = 5.0
#: Longest ``callback_url`` accepted; longer URLs are refused by many servers and proxies.
MAX_CALLBACK_URL = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ALLOW_HINT = f"callbacks go to public addresses only, unless {CALLBACK_ALLOW.name} allows it"

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
    """The allow-list ``NEARLINE_CALLBACK_ALLOW`` sets (``environ`` defaults to the process's).

    ``nearline serve`` loads the same variable into its settings at start, so a bad value
    stops it there rather than here.
    """
    allow: AllowList = CALLBACK_ALLOW.read(os.environ if environ is None else environ)
    return allow


def check_callback_url(url: str, allow: AllowList) -> Target:
    """Check ``url`` as far as can be done without DNS; what :meth:`CallbackSender.send` sends to.

    Raises:
        CallbackRefused: The URL can never be sent to: not http(s), user info, no host, a bad
            port, or an address (in any spelling) that is neither public nor allowed.
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
        raise CallbackRefused("must be an absolute http(s) URL")
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


class CallbackSender:
    """Sends callbacks under the guard of the module docstring.

    Args:
        allow: Non-public networks and host names that callbacks may go to anyway.
        resolver: Looks host names up (the system resolver; tests pass a stub).
        transport: Makes the HTTP transport of one callback (a fresh one each, so that no
            connection made for one host name is reused for another at the same address).
        attempts: Tries per callback.
    """

    def __init__(
        self,
        allow: AllowList | None = None,
        *,
        resolver: Resolver = resolve,
        transport: Callable[[], httpx.BaseTransport] = httpx.HTTPTransport,
        attempts: int = CALLBACK_ATTEMPTS,
    ) -> None:
        self.allow = AllowList() if allow is None else allow
        self.resolver = resolver
        self.transport = transport
        self.attempts = attempts

    def send(self, job: JobRecord) -> bool:
        """POST ``job``'s status document to its ``callback_url``; True once a try got a 2xx.

        A refused URL is logged once and not sent; a redirect is not followed; other failures
        are retried up to ``attempts`` times, each try logged.
        """
        if not job.callback_url:
            return False
        try:
            target = check_callback_url(job.callback_url, self.allow)
            addresses = self.addresses_of(target)
        except CallbackRefused as exc:
            log.warning("callback of job %s not sent: callback_url %s", job.id, exc.message)
            return False
        document = status_document(job)
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            address = addresses[attempt % len(addresses)]
            try:
                status = self._post(target, address, document)
            except httpx.HTTPError as exc:
                log.warning("callback of job %s failed (try %d): %s", job.id, attempt + 1, exc)
                continue
            if 200 <= status < 300:
                return True
            if 300 <= status < 400:
                log.warning("callback of job %s got a redirect (%d), not followed", job.id, status)
                return False
            log.warning("callback of job %s got %d (try %d)", job.id, status, attempt + 1)
        return False

    def addresses_of(self, target: Target) -> list[IPAddress]:
        """The addresses to connect to for ``target``, every one of them checked.

        Raises:
            CallbackRefused: The name does not resolve, or one of its addresses is neither
                public nor allowed (and the allow-list does not name the host).
        """
        if target.address is not None:
            return [target.address]
        try:
            found = [ipaddress.ip_address(a) for a in self.resolver(target.host, target.port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise CallbackRefused(f"names {target.host}, which does not resolve: {exc}") from None
        if not found:
            raise CallbackRefused(f"names {target.host}, which resolves to no address")
        if not self.allow.allows_host(target.host):
            for address in found:
                why = refusal(address, self.allow)
                if why is not None:
                    raise CallbackRefused(f"names {target.host}, which resolves to {why}; {_ALLOW_HINT}")
        return found

    def _post(self, target: Target, address: IPAddress, document: object) -> int:
        """One try: POST to ``address``, naming the host as the URL did; the response status."""
        extensions = {"sni_hostname": target.host} if target.address is None else {}
        with httpx.Client(
            transport=self.transport(),
            follow_redirects=False,
            trust_env=False,  # an environment proxy would tunnel to the address, not the name
            timeout=CALLBACK_TIMEOUT_S,
        ) as client:
            request = client.build_request(
                "POST",
                target.url_for(address),
                json=document,
                headers={"Host": target.host_header},
                extensions=extensions,
            )
            response = client.send(request, stream=True)
            response.close()  # the receiver's body is of no interest, however large
            return response.status_code
