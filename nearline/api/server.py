"""The HTTP server of ``nearline serve``: uvicorn, with limits on what one client can hold.

uvicorn closes an idle keep-alive connection (5 s), but not one that is slow to send its
request: a client sending a header byte a second holds a socket (and a task, for a body) for
ever, and a few hundred such clients hold the server (slowloris, slow POST). So here:

* the request line and headers must arrive within ``header_timeout_s`` of the connection being
  ready for a request (just opened, or its previous response sent); else it is closed, without
  an answer (the client may not even have started a request);
* the body must arrive whole within ``body_timeout_s`` of the headers; else ``408
  RequestTimeout`` and the connection is closed (the adapter's body reader,
  :mod:`nearline.api.app`). The rest of a body the app answered without reading counts as
  part of the next request's head;
* at most ``max_connections`` connections are served: a request arriving on one beyond that is
  answered ``503 Overloaded`` with ``Retry-After`` and its connection closed.

The limits come from :class:`~nearline.settings.ApiSettings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Generator
from typing import ClassVar

import uvicorn
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from nearline.errors import Overloaded, http_error
from nearline.settings import ApiSettings

#: Signals that stop the server; it then returns, and its caller stops the rest.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ApiServer:
    """uvicorn on an address bound when this is made (so that one in use fails first).

    Args:
        host: The address to listen on.
        port: The port; 0: any free one (:attr:`port` says which).
        api: The connection limits (``header_timeout_s``, ``max_connections``).

    Raises:
        OSError: The address cannot be bound (in use, not this machine's).
    """

    def __init__(self, host: str, port: int, api: ApiSettings) -> None:
        self.api = api
        # As uvicorn binds for its worker processes: a name (localhost) binds its IPv4 address.
        # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets that say TCP,
        # and without it a response's body waits behind its head for the client's delayed ACK
        # (40 ms here on a keep-alive connection).
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise OSError(exc.errno, exc.strerror, f"{host}:{port}") from None  # names the address
        # uvicorn listens when it runs: until then a client is refused, not left waiting.
        self.port: int = self.socket.getsockname()[1]

    def run(self, app: ASGIApp, on_start: Callable[[], None] | None = None) -> None:
        """Serve ``app`` until SIGINT or SIGTERM; then return (in-flight requests finished).
        ``on_start`` is called on the server's event loop once it is serving."""
        protocol = type("LimitedProtocol", (LimitedProtocol,), {"limits": self.api})
        config = uvicorn.Config(app, http=protocol, ws="none", log_level="warning", access_log=False)
        _Server(config, on_start).run(sockets=[self.socket])

    def close(self) -> None:
        self.socket.close()


class _Server(uvicorn.Server):
    """uvicorn's server, except that a stop signal is not raised again once it has stopped.

    uvicorn re-raises the signal that stopped it, so that a process running nothing else dies
    of it; ``nearline serve`` has its workers, lifecycle and queue to stop after the server,
    and then exits 0.
    """

    def __init__(self, config: uvicorn.Config, on_start: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._on_start = on_start

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._on_start is not None and not self.should_exit:
            self._on_start()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's head and a connection limit.

    httptools (llhttp, in C) rather than h11 (pure Python): parsing a request and writing its
    response took ~0.5 ms less of every request here, a tenth of a light-load answer
    (docs/benchmarks.md). ``limits`` is set on the subclass :meth:`ApiServer.run` makes (uvicorn
    builds protocols from a class and its own arguments).
    """

    limits: ClassVar[ApiSettings]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, object],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limit_concurrency = None  # uvicorn's own limit answers 503 without Retry-After
        self._app = self.app
        self.app = self._admit
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._head_arrived()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A request pipelined behind this one has its head already: uvicorn starts it now.
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._await_head()

    def _await_head(self) -> None:
        self._head_arrived()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_overdue)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, or ``503`` when more connections are open than the limit."""
        limit = self.limits.max_connections
        if len(self.connections) <= limit:
            await self._app(scope, receive, send)
            return
        error = Overloaded(f"the server has {len(self.connections)} connections open; its limit is {limit}")
        body, status, headers = http_error(error)
        await JSONResponse(body, status, {**headers, "Connection": "close"})(scope, receive, send)
