"""An httpx transport whose sockets are checked once connected, before a byte is sent.

The callback guard checks the addresses a name resolves to and connects to one of them by
address; this transport checks again what the socket actually reached (its peer), so that
nothing between the check and the connection (a rebinding resolver, a transparent proxy, a
routing trick) can send a callback somewhere the guard refused. One connection per transport,
no proxy from the environment.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from typing import Any

import httpcore
import httpx

from nearline.addresses import IPAddress


class _CheckedBackend(httpcore.NetworkBackend):
    """Connects as httpcore does, then checks the peer address before anything is sent."""

    def __init__(self, check: Callable[[IPAddress], str | None]) -> None:
        self._inner = httpcore.SyncBackend()
        self._check = check

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        sock = stream.get_extra_info("socket")
        why = self._check(ipaddress.ip_address(sock.getpeername()[0].split("%")[0]))
        if why is not None:
            stream.close()
            raise httpcore.ConnectError(f"connected to {why}")
        return stream

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise httpcore.ConnectError("callbacks never use unix sockets")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """httpx's transport, one connection, no proxy, whose sockets are checked once connected.

    Args:
        check: Why the connected address is refused, or None (see the callback sender).
        tls: The TLS context of https connections (build it once: loading the CA bundle takes
            tens of milliseconds, more than a callback does).
    """

    def __init__(self, check: Callable[[IPAddress], str | None], tls: ssl.SSLContext) -> None:
        # Not HTTPTransport.__init__, which would build a TLS context and a pool of its own for
        # nothing; its request handling only needs ``_pool``.
        self._pool = httpcore.ConnectionPool(
            ssl_context=tls, max_connections=1, network_backend=_CheckedBackend(check)
        )


def tls_context(verify: ssl.SSLContext | bool = True) -> ssl.SSLContext:
    """The TLS context callbacks verify receivers with (True: the system's CAs, as httpx does)."""
    return (
        verify
        if isinstance(verify, ssl.SSLContext)
        else httpx.create_ssl_context(verify=verify, trust_env=False)
    )
