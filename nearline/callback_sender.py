"""One attempt at a callback: POST a signed event to a checked address, and what came of it.

The guard (:mod:`nearline.callbacks`) decides where the request may go; this module makes it
under the rest of the rules: the URL is rewritten to a checked address (the name travels in
``Host`` and TLS SNI), the socket's peer is checked again once connected and before a byte is
sent (:class:`GuardedTransport`), no proxy from the environment, no redirects followed, bounded
connect, write and read timeouts (:data:`TIMEOUT`, and :data:`ATTEMPT_S` for the whole reply),
and at most :data:`MAX_REPLY_BYTES` of the reply read. Retrying is :mod:`nearline.deliveries`.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from nearline.addresses import IPAddress
from nearline.callbacks import CallbackGuard, CallbackRefused, Target, Unresolved, refusal
from nearline.guarded_transport import GuardedTransport, tls_context

#: Timeouts of one attempt: a receiver should answer a webhook at once and do its work later.
TIMEOUT = httpx.Timeout(connect=5.0, write=10.0, read=10.0, pool=5.0)
#: Longest an attempt spends reading a reply; a dispatcher's lease on a delivery is longer than
#: the connect, write and read timeouts and this together.
ATTEMPT_S = 30.0
#: Bytes of the receiver's reply that are read (kept for the delivery's ``lastError``); the rest
#: is never read, however large.
MAX_REPLY_BYTES = 4096


@dataclass(frozen=True)
class Attempt:
    """What one attempt at a callback came to.

    Attributes:
        status: The receiver's HTTP status; None when no answer came.
        error: What went wrong, in a line (None for a 2xx).
        retry_after: Seconds the receiver asked to wait (``Retry-After`` on 429 or 503).
        refused: The guard refused the URL: it will never be sent, so never retried.
    """

    status: int | None
    error: str | None = None
    retry_after: float | None = None
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Worth another attempt: no answer, a timeout (408), 429, or a 5xx."""
        if self.refused or self.delivered:
            return False
        return self.status is None or self.status in (408, 429) or self.status >= 500


class CallbackSender:
    """Makes one attempt at a callback, under the guard of the module docstring.

    Args:
        guard: Where callbacks may go.
        transport: Makes the HTTP transport of one attempt from the check of the connected
            address (default: :class:`GuardedTransport`; tests pass recording ones).
        verify: TLS verification for the default transport (a context trusting a test CA).
    """

    def __init__(
        self,
        guard: CallbackGuard | None = None,
        *,
        transport: Callable[[Callable[[IPAddress], str | None]], httpx.BaseTransport] | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.guard = guard or CallbackGuard()
        self.transport = transport or _guarded(tls_context(verify))  # one TLS context for every attempt

    def post(self, url: str, body: bytes, headers: Mapping[str, str], attempt: int = 0) -> Attempt:
        """POST ``body`` to ``url`` once. Never raises for the network or the receiver.

        ``attempt`` picks which of a name's addresses to use, so retries go round them.
        """
        try:
            target = self.guard.check(url)
            addresses = self.guard.addresses(target)
        except CallbackRefused as exc:
            return Attempt(None, f"refused: callback_url {exc.message}", refused=True)
        except Unresolved as exc:
            return Attempt(None, str(exc))
        address = addresses[attempt % len(addresses)]
        refused: list[str] = []

        named = self.guard.allow.allows_host(target.host)

        def check(peer: IPAddress) -> str | None:
            why = None if peer == address else f"{peer}, not the checked {address}"
            why = why or (None if named else refusal(peer, self.guard.allow))
            if why is not None:
                refused.append(why)
            return why

        try:
            return self._send(target, address, body, headers, self.transport(check))
        except httpx.HTTPError as exc:
            if refused:
                return Attempt(None, f"refused: connected to {refused[0]}", refused=True)
            return Attempt(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    def _send(
        self,
        target: Target,
        address: IPAddress,
        body: bytes,
        headers: Mapping[str, str],
        transport: httpx.BaseTransport,
    ) -> Attempt:
        extensions = {"sni_hostname": target.host} if target.address is None else {}
        with httpx.Client(
            transport=transport, follow_redirects=False, trust_env=False, timeout=TIMEOUT
        ) as client:
            request = client.build_request(
                "POST",
                target.url_for(address),
                content=body,
                headers={**headers, "Host": target.host_header, "Content-Type": "application/json"},
                extensions=extensions,
            )
            response = client.send(request, stream=True)
            status = response.status_code
            try:  # only a refusal's reply says anything worth keeping
                reply = _read_some(response, time.monotonic() + ATTEMPT_S) if status >= 400 else ""
            finally:
                response.close()  # the rest of the reply is never read, however large
        if 200 <= status < 300:
            return Attempt(status)
        if 300 <= status < 400:
            return Attempt(status, f"{status}: a redirect, not followed")
        return Attempt(
            status, f"{status}: {reply}".rstrip(": "), _retry_after(response.headers.get("retry-after"))
        )


def _guarded(tls: ssl.SSLContext) -> Callable[[Callable[[IPAddress], str | None]], httpx.BaseTransport]:
    return lambda check: GuardedTransport(check, tls)


def _read_some(response: httpx.Response, until: float) -> str:
    """At most :data:`MAX_REPLY_BYTES` of the reply, as text, within the attempt's time."""
    if response.is_stream_consumed:  # a transport that read the reply already
        return response.content[:MAX_REPLY_BYTES].decode("utf-8", "replace").strip()[:200]
    got = b""
    for chunk in response.iter_raw():
        got += chunk
        if len(got) >= MAX_REPLY_BYTES or time.monotonic() > until:
            break
    return got[:MAX_REPLY_BYTES].decode("utf-8", "replace").strip()[:200]


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now (delay-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time()) if when.tzinfo is not None else None
