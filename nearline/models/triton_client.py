"""Talking to a Triton server: the URL form, the retry policy, one asyncio client per backend.

URL: ``grpc://host:8001`` or ``http://host:8000`` (the scheme is required; the port defaults to
those), options in the query string: ``grpc://triton:8001?timeout_s=10&retry_s=15``. The
constructor arguments of :class:`~nearline.models.triton_backend.TritonBackend` override them.

* ``timeout_s`` — each request's deadline (gRPC ``client_timeout``, and an asyncio timeout around
  every request whatever the protocol). A request that times out is not retried: the server is
  up but slow, and sending it again would only add load. Default 10 s.
* ``retry_s`` — how long a call keeps retrying while Triton is *unavailable*: connection refused
  or reset, gRPC ``UNAVAILABLE``, HTTP 502/503/504, or the model unknown / not ready (what a
  server answers while it restarts and loads its models). Backoff starts at 50 ms, doubles up to
  1 s, with jitter so a fleet of workers does not reconnect in step. When the window is spent
  the call raises :class:`~nearline.errors.ModelError` naming the URL, the model, the attempts
  and the last error. Default 15 s. Any other error (a bad request, the model raising) is not
  retried. So one call takes at most ``retry_s + timeout_s``; keep that under the worker's lease
  (``--lease-s``, 30 s) or a message may be leased to a second worker while the first waits.

Thread safety: every client lives on one event loop that runs in a private daemon thread shared
by the process (gRPC's asyncio channels and aiohttp sessions belong to the loop that made them);
any thread may call :meth:`TritonClient.run`, and concurrent calls are concurrent requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, urlsplit

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from nearline.errors import ConfigError, ModelError

T = TypeVar("T")

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
#: Per-request deadline. MiniLM at batch 64 takes ~0.3 s on CPU here; 10 s leaves room for a
#: queue at the server without letting a stuck request hold a batch for long.
DEFAULT_TIMEOUT_S = 10.0
#: How long to ride out an unavailable server (a Triton pod restarting takes a few seconds to
#: come back and load its models). With the timeout, under the worker's 30 s lease.
DEFAULT_RETRY_S = 15.0
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
#: gRPC reconnects after a failure with exponential backoff up to 120 s by default: a server back
#: after 10 s would then stay unreachable for a minute. Cap it at the retry backoff's maximum.
_GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", KeepAliveOptions().keepalive_time_ms),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX_S * 1000)),
]
#: Server answers that mean "not now" rather than "never": retried within ``retry_s``. A model
#: unknown (gRPC NOT_FOUND, HTTP 404) or not ready is what a restarting Triton answers until it
#: has loaded its models; ``load`` has checked at start-up that the server does serve them.
_UNAVAILABLE_STATUS = {"StatusCode.UNAVAILABLE", "StatusCode.NOT_FOUND", "404", "502", "503", "504"}
_NOT_LOADED = ("unknown model", "not ready")

#: ``grpc_aio.InferenceServerClient`` or ``http_aio.InferenceServerClient`` (tritonclient is untyped).
Client: TypeAlias = Any


@dataclass(frozen=True)
class TritonTarget:
    """A parsed Triton URL: protocol, ``host:port`` and the request policy."""

    protocol: str
    address: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    retry_s: float = DEFAULT_RETRY_S

    @property
    def url(self) -> str:
        """The URL without options, as messages show it."""
        return f"{self.protocol}://{self.address}"

    @classmethod
    def parse(cls, url: str, *, timeout_s: float | None = None, retry_s: float | None = None) -> TritonTarget:
        """Parse ``grpc://host:port?timeout_s=..&retry_s=..`` or ``http://...``.

        Raises:
            ConfigError: Another scheme, no host, or an unknown or invalid option.
        """
        parts = urlsplit(url)
        if parts.scheme not in PROTOCOLS or not parts.hostname:
            raise ConfigError(
                f"Triton URL {url!r}: expected grpc://host:port or http://host:port "
                "(options ?timeout_s=&retry_s=)"
            )
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ConfigError(f"Triton URL {url!r}: invalid port") from None
        options = {"timeout_s": DEFAULT_TIMEOUT_S, "retry_s": DEFAULT_RETRY_S}
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            if key not in options:
                raise ConfigError(f"Triton URL {url!r}: unknown option {key!r}; expected timeout_s, retry_s")
            try:
                options[key] = float(values[-1])
            except ValueError:
                raise ConfigError(f"Triton URL {url!r}: {key} must be a number of seconds") from None
        options.update({k: v for k, v in (("timeout_s", timeout_s), ("retry_s", retry_s)) if v is not None})
        if options["timeout_s"] <= 0 or options["retry_s"] < 0:
            raise ConfigError(f"Triton URL {url!r}: timeout_s must be > 0 and retry_s >= 0")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(parts.scheme, f"{host}:{port}", options["timeout_s"], options["retry_s"])


def unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the server (or the model) is not there *now*: worth retrying."""
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError):
        return True
    if isinstance(exc, InferenceServerException):
        message = (exc.message() or "").lower()
        return exc.status() in _UNAVAILABLE_STATUS or any(m in message for m in _NOT_LOADED)
    return False


def describe(exc: BaseException) -> str:
    """A one-line description of a client error."""
    if isinstance(exc, InferenceServerException):
        return f"{exc.status() or 'error'}: {exc.message()}"
    return f"{type(exc).__name__}: {exc}"


class TritonClient:
    """One asyncio Triton client (gRPC or HTTP) that any thread may use through :meth:`run`.

    Args:
        target: Where the server is and the request policy.
    """

    def __init__(self, target: TritonTarget) -> None:
        self.target = target
        self._client: Client | None = None

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` (a coroutine of this client) on the shared loop; wait for its result.

        Call it from any thread but the loop's own. The policy bounds every request; the wait
        here is bounded too, in case the loop itself is stuck.

        Raises:
            ModelError: As :meth:`call` does, or the loop did not finish the work in time.
        """
        future = asyncio.run_coroutine_threadsafe(work, _loop())
        limit = self.target.retry_s + 2 * self.target.timeout_s + 5
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ModelError(f"Triton at {self.target.url}: no answer within {limit:g} s") from None

    async def infer(
        self, model: str, version: int, arrays: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray | None]:
        """One inference request (binary tensors) under the policy; outputs by name (None if absent).

        Raises:
            ModelError: See :meth:`call`.
        """
        grpc = self.target.protocol == "grpc"
        inputs: list[Any] = []
        for name, array in arrays.items():
            if grpc:
                tensor: Any = grpc_aio.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array)
            else:
                tensor = http_aio.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        if grpc:
            wanted: list[Any] = [grpc_aio.InferRequestedOutput(n) for n in outputs]
            extra: dict[str, Any] = {"client_timeout": self.target.timeout_s}
        else:
            wanted, extra = [http_aio.InferRequestedOutput(n, binary_data=True) for n in outputs], {}

        async def request(client: Client) -> dict[str, np.ndarray | None]:
            result = await client.infer(model, inputs, model_version=str(version), outputs=wanted, **extra)
            return {name: result.as_numpy(name) for name in outputs}

        return await self.call(f"model '{model}' version {version}", request)

    async def problem(self, model: str, version: int) -> str | None:
        """Why ``model`` cannot be served now (server down, model not ready), or None. No retry."""
        try:
            client = await self._connect()
            if not await asyncio.wait_for(client.is_server_live(), self.target.timeout_s):
                return "the server is not live"
            ready = await asyncio.wait_for(client.is_model_ready(model, str(version)), self.target.timeout_s)
        except Exception as exc:  # unreachable, timed out, refused: all mean "not now"
            return f"the server is not reachable ({describe(exc)})"
        return None if ready else f"model '{model}' version {version} is not ready (not loaded?)"

    async def tensors(self, model: str, version: int) -> dict[str, str]:
        """The served model's inputs and outputs: name → Triton datatype (e.g. ``FP32``).

        Raises:
            ModelError: See :meth:`call`.
        """

        async def request(client: Client) -> dict[str, str]:
            meta = await client.get_model_metadata(model, str(version), **_as_json(client))
            return {t["name"]: t["datatype"] for t in (*meta.get("inputs", ()), *meta.get("outputs", ()))}

        return await self.call(f"model '{model}' version {version} metadata", request)

    async def call(self, what: str, request: Callable[[Client], Awaitable[T]]) -> T:
        """One request under the policy: a deadline per attempt, retries while unavailable.

        Args:
            what: What is asked, for error messages (e.g. ``model 'digits' version 1``).
            request: Makes the request with the given client.

        Raises:
            ModelError: Timed out, unavailable for the whole retry window, or failed; the
                message names the URL and ``what``.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay, attempts = BACKOFF_FIRST_S, 0
        while True:
            attempts += 1
            try:
                return await asyncio.wait_for(request(await self._connect()), self.target.timeout_s)
            except TimeoutError:
                raise ModelError(
                    f"Triton at {self.target.url}: {what} did not answer within "
                    f"timeout_s={self.target.timeout_s:g} s"
                ) from None
            except Exception as exc:  # tritonclient and aiohttp raise many types; sorted below
                if not unavailable(exc):
                    raise ModelError(f"Triton at {self.target.url}: {what} failed: {describe(exc)}") from None
                last = exc
            remaining = started + self.target.retry_s - loop.time()
            if remaining <= 0:
                raise ModelError(
                    f"Triton at {self.target.url}: {what} unavailable after {attempts} attempts over "
                    f"{loop.time() - started:.1f} s (retry_s={self.target.retry_s:g}): {describe(last)}"
                )
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), remaining))
            delay = min(delay * 2, BACKOFF_MAX_S)

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        if self._client is not None and _LOOP is not None:
            asyncio.run_coroutine_threadsafe(self._close(), _LOOP).result(timeout=10)

    async def _connect(self) -> Client:
        # Made on the loop: gRPC channels and aiohttp sessions belong to the loop that creates them.
        if self._client is None:
            if self.target.protocol == "grpc":
                self._client = grpc_aio.InferenceServerClient(
                    self.target.address, channel_args=_GRPC_CHANNEL_ARGS
                )
            else:
                self._client = http_aio.InferenceServerClient(
                    self.target.address, conn_timeout=self.target.timeout_s
                )
        return self._client

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _as_json(client: Client) -> dict[str, Any]:
    # The gRPC client returns protobuf unless asked for JSON; the HTTP client always returns JSON.
    return {"as_json": True} if isinstance(client, grpc_aio.InferenceServerClient) else {}


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """The process's Triton client loop, started on first use in a daemon thread."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="nearline-triton", daemon=True).start()
            _LOOP = loop
        return _LOOP
