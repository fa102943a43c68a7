"""Settings: every environment variable nearline reads, in one table, and the frozen settings
each program runs with.

:data:`VARIABLES` is the table: each :class:`Var` is a name, a parser (its type and limits), a
default, a help line and the programs that read it. README.md's "Configuration" section
documents it (``tests/test_settings.py`` holds the two together); the defaults themselves live
in :mod:`nearline.constants`.

A settings class is a frozen dataclass whose fields say where each value comes from: a variable
(:func:`env`), a flag only (:func:`flag`), or another settings class (:func:`nested`).
:func:`load` (every class's ``from_env``) is the one place the environment is read, and a bad
value is a :class:`~nearline.errors.ConfigError` naming the variable. Command lines derive
their flags from the same fields (:func:`add_flags`): a flag shows the value loaded from the
environment as its default, and a flag given wins (:func:`with_flags`).
"""

# env(), flag() and nested() return dataclasses.field(); ruff cannot see through them.
# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nearline import constants as c
from nearline.addresses import AllowList
from nearline.setting_fields import (
    Option,
    Settings,
    Var,
    add_flags,
    env,
    flag,
    load,
    nested,
    option_of,
    with_flags,
)
from nearline.setting_values import OneOf, keys, number, path, paths, switch, text, whole
from nearline.webhooks import WebhookSecret, parse_secrets

# --- the table ----------------------------------------------------------------------------

SERVE, WORKER, TRITON, FUNCTIONS, CLIENT = "serve", "worker", "triton", "functions", "client"


# One row a variable: name, type and limits, default, help, the programs that read it.
_S, _SW, _SWF, _SF = (SERVE,), (SERVE, WORKER), (SERVE, WORKER, FUNCTIONS), (SERVE, FUNCTIONS)
_URLS = "queue / store URL: sqlite:///FILE (serve: in the data dir), memory://, redis://HOST:6379/0, ..."
_PORT_HELP = "port of /healthz, /readyz, /metrics (0: pick a free one; -1: none)"
_TRITON_HELP = "Triton server, e.g. grpc://127.0.0.1:8001 or http://127.0.0.1:8000"
_SECONDS = number(0, inclusive=False)
BROKER = Var("NEARLINE_BROKER", text, None, _URLS, _SWF)
DATA_DIR = Var("NEARLINE_DATA_DIR", path, Path(c.DATA_DIR), "data directory (the SQLite queue)", _S)
MODELS = Var("NEARLINE_MODELS", path, Path(c.MODELS_DIR), "model repository", (SERVE, WORKER, TRITON))
_PIPELINES_HELP = "pipelines files or folders, comma-separated (default: ./pipelines.yaml, else the examples)"
PIPELINES = Var("NEARLINE_PIPELINES", paths, (), _PIPELINES_HELP, _SWF)
API_KEYS = Var("NEARLINE_API_KEYS", keys, (), "API keys, comma-separated (none: no auth)", _S)
_ADMIN_HELP = "admin keys (also API keys), comma-separated; admin routes need one once any key is set"
ADMIN_KEYS = Var("NEARLINE_ADMIN_KEYS", keys, (), _ADMIN_HELP, _S)
MAX_QUEUE_DEPTH = Var("NEARLINE_MAX_QUEUE_DEPTH", whole(1), c.MAX_QUEUE_DEPTH, "request queue limit", _SF)
RETENTION_S = Var("NEARLINE_RETENTION_S", _SECONDS, c.RETENTION_S, "terminal job retention (s)", _SW)
HEADER_TIMEOUT_S = Var("NEARLINE_HEADER_TIMEOUT_S", _SECONDS, c.HEADER_TIMEOUT_S, "request head within s", _S)
BODY_TIMEOUT_S = Var("NEARLINE_BODY_TIMEOUT_S", _SECONDS, c.BODY_TIMEOUT_S, "request body within s", _S)
MAX_CONNECTIONS = Var("NEARLINE_MAX_CONNECTIONS", whole(1), c.MAX_CONNECTIONS, "HTTP connections", _S)
MAX_BATCH = Var("NEARLINE_MAX_BATCH", whole(1), c.MAX_BATCH, "largest micro-batch", _SW)
MAX_WAIT_MS = Var(
    "NEARLINE_MAX_WAIT_MS", number(0), c.MAX_WAIT_MS, "a free worker's wait for a fuller batch (ms)", _SW
)
BATCH_WINDOW = Var("NEARLINE_BATCH_WINDOW", whole(1), c.BATCH_WINDOW, "batches a busy worker holds", _SW)
LEASE_S = Var("NEARLINE_LEASE_S", _SECONDS, c.LEASE_S, "lease (lock) duration (s)", _SW)
MAX_DELIVERIES = Var(
    "NEARLINE_MAX_DELIVERIES", whole(1), c.MAX_DELIVERIES, "deliveries, then dead-letter", _SW
)
WORKER_PORT = Var("NEARLINE_WORKER_PORT", whole(-1, 65535), c.WORKER_PORT, _PORT_HELP, (WORKER,))
WORKER_HOST = Var("NEARLINE_WORKER_HOST", text, c.WORKER_HOST, "health/metrics address", (WORKER,))
MODEL_BACKEND = Var(
    "NEARLINE_MODEL_BACKEND", OneOf("torch", "onnx", "triton"), None, "for every model step", _SW
)
ONNX_THREADS = Var("NEARLINE_ONNX_THREADS", whole(0), 0, "ONNX Runtime intra-op threads (0: its own)", _SW)
ONNX_PROVIDERS = Var("NEARLINE_ONNX_PROVIDERS", keys, (), "ONNX Runtime execution providers", _SW)
_OPTIMIZATIONS = OneOf("disable", "basic", "extended", "all")  # ONNX Runtime's levels; "all" its default
ONNX_OPTIMIZATION = Var("NEARLINE_ONNX_OPTIMIZATION", _OPTIMIZATIONS, "all", "ONNX graph optimisation", _SW)
TRITON_URL = Var("NEARLINE_TRITON_URL", text, None, _TRITON_HELP, _SW)
CLAIM_CHECK_BYTES = Var(
    "NEARLINE_CLAIM_CHECK_BYTES", whole(0), c.CLAIM_CHECK_BYTES, "claim check (0: off)", _SWF
)
_BLOBS_HELP = "Azure: large bodies, tombstones: https://ACCOUNT.blob.core.windows.net or a connection string"
BLOB_STORE = Var("NEARLINE_BLOB_STORE", text, None, _BLOBS_HELP, (WORKER, FUNCTIONS), secret=True)
URL = Var("NEARLINE_URL", text, f"http://{c.HTTP_HOST}:{c.HTTP_PORT}", "API base URL", (CLIENT,))
KEY = Var("NEARLINE_KEY", text, None, "API key (x-functions-key)", (CLIENT,))
SECRET = Var("NEARLINE_SECRET", text, None, "Azure: keyed job ids' HMAC secret (>= 32 chars)", (FUNCTIONS,))
CALLBACK_ALLOW = Var("NEARLINE_CALLBACK_ALLOW", AllowList.parse, AllowList(), "callback_url allow-list", _SF)
WEBHOOK_SECRET = Var(
    "NEARLINE_WEBHOOK_SECRET", parse_secrets, (), "callback signing whsec_ secret(s)", _SF, secret=True
)
WEBHOOK_RETRY_S = Var(
    "NEARLINE_WEBHOOK_RETRY_S", _SECONDS, c.WEBHOOK_RETRY_S, "first callback retry (s)", _SF
)
WEBHOOK_MAX_AGE_S = Var(
    "NEARLINE_WEBHOOK_MAX_AGE_S", _SECONDS, c.WEBHOOK_MAX_AGE_S, "callback retries for (s)", _SF
)
WEBHOOK_MAX_ATTEMPTS = Var(
    "NEARLINE_WEBHOOK_MAX_ATTEMPTS", whole(1), c.WEBHOOK_MAX_ATTEMPTS, "callback attempts", _SF
)

#: Every environment variable nearline reads.
VARIABLES: tuple[Var, ...] = (
    BROKER, DATA_DIR, MODELS, PIPELINES, API_KEYS, ADMIN_KEYS, CALLBACK_ALLOW, MAX_QUEUE_DEPTH, RETENTION_S,
    MAX_BATCH, MAX_WAIT_MS, LEASE_S, MAX_DELIVERIES, WORKER_PORT, WORKER_HOST, MODEL_BACKEND, TRITON_URL,
    CLAIM_CHECK_BYTES, URL, KEY, SECRET, HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MAX_CONNECTIONS, BLOB_STORE,
    ONNX_THREADS, ONNX_PROVIDERS, ONNX_OPTIMIZATION, BATCH_WINDOW,
    WEBHOOK_SECRET, WEBHOOK_RETRY_S, WEBHOOK_MAX_AGE_S, WEBHOOK_MAX_ATTEMPTS,
)  # fmt: skip


# --- the settings -------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSettings(Settings):
    """A scoring worker (``python -m workers``, and each worker ``nearline serve`` starts).

    ``torch_threads`` is not configured: ``nearline serve`` sets it to share the cores out
    between its workers (a worker sets ``OMP_NUM_THREADS`` from it unless that is set already).
    """

    broker: str | None = env(BROKER, "--broker")
    models: Path = env(MODELS, "--models")
    pipelines: tuple[Path, ...] = env(PIPELINES, "--pipelines", many=True)
    max_batch: int = env(MAX_BATCH, "--max-batch")
    max_wait_ms: float = env(MAX_WAIT_MS, "--max-wait-ms")
    batch_window: int = env(BATCH_WINDOW, "--batch-window")
    lease_s: float = env(LEASE_S, "--lease-s")
    max_deliveries: int = env(MAX_DELIVERIES, "--max-deliveries")
    port: int = env(WORKER_PORT, "--port")
    host: str = env(WORKER_HOST, "--host")
    model_backend: str | None = env(MODEL_BACKEND, "--model-backend")
    triton_url: str | None = env(TRITON_URL, "--triton-url")
    onnx_threads: int = env(ONNX_THREADS)
    onnx_providers: tuple[str, ...] = env(ONNX_PROVIDERS)
    onnx_optimization: str = env(ONNX_OPTIMIZATION)
    blob_store: str | None = field(default=None, repr=False, metadata=env(BLOB_STORE).metadata)
    name: str | None = flag("--name", None, text, "worker name in result messages")
    torch_threads: int | None = None


@dataclass(frozen=True)
class WebhookSettings(Settings):
    """How callbacks are signed and retried (docs/webhooks.md): ``nearline serve``'s dispatcher
    and the Azure delivery activity read the same variables."""

    secrets: tuple[WebhookSecret, ...] = env(WEBHOOK_SECRET)
    retry_s: float = env(WEBHOOK_RETRY_S)
    max_age_s: float = env(WEBHOOK_MAX_AGE_S)
    max_attempts: int = env(WEBHOOK_MAX_ATTEMPTS)


@dataclass(frozen=True)
class ApiSettings(Settings):
    """The HTTP API of the embedded and Redis profiles (what ``nearline serve`` serves)."""

    api_keys: tuple[str, ...] = env(API_KEYS)
    admin_keys: tuple[str, ...] = env(ADMIN_KEYS)
    max_queue_depth: int = env(MAX_QUEUE_DEPTH, "--max-queue-depth")
    max_body: int = flag("--max-body", c.MAX_BODY_BYTES, whole(1), "largest request body in bytes")
    callback_allow: AllowList = env(CALLBACK_ALLOW)
    header_timeout_s: float = env(HEADER_TIMEOUT_S)
    body_timeout_s: float = env(BODY_TIMEOUT_S)
    max_connections: int = env(MAX_CONNECTIONS)


@dataclass(frozen=True)
class ServeSettings(Settings):
    """``nearline serve``: its own settings, the API's and its workers' (whose broker and
    pipelines the API shares)."""

    host: str = flag("--host", c.HTTP_HOST, text, "address to listen on")
    port: int = flag("--port", c.HTTP_PORT, whole(0, 65535), "port to listen on")
    data_dir: Path = env(DATA_DIR, "--data-dir")
    workers: int = flag("--workers", c.SERVE_WORKERS, whole(0), "worker processes (threads for memory://)")
    no_workers: bool = flag("--no-workers", False, switch, "API and lifecycle only (workers run elsewhere)")
    insecure: bool = flag("--insecure", False, switch, "allow a non-loopback address without API keys")
    reload: bool = flag("--reload", False, switch, "restart the workers when pipelines, steps, models change")
    retention_s: float = env(RETENTION_S, "--retention-s")
    api: ApiSettings = nested(ApiSettings)
    worker: WorkerSettings = nested(WorkerSettings)
    webhooks: WebhookSettings = nested(WebhookSettings)

    @property
    def broker_url(self) -> str:
        """The broker: the one configured, else a SQLite file in the data directory."""
        return self.worker.broker or f"sqlite:///{(self.data_dir / 'nearline.db').resolve()}"


@dataclass(frozen=True)
class TritonSettings(Settings):
    """``nearline triton serve``."""

    models: Path = env(MODELS, "--models")
    host: str = flag("--host", c.TRITON_HOST, text, "address to bind (loopback only unless told)")
    http_port: int = flag("--http-port", c.TRITON_HTTP_PORT, whole(0, 65535), "KServe v2 HTTP port")
    grpc_port: int = flag("--grpc-port", c.TRITON_GRPC_PORT, whole(0, 65535), "KServe v2 gRPC port")
    metrics_port: int = flag("--metrics-port", c.TRITON_METRICS_PORT, whole(0, 65535), "metrics port")
    only: tuple[str, ...] | None = flag(
        "--only", None, text, "serve only this model (repeatable)", repeat=True, metavar="MODEL"
    )


@dataclass(frozen=True)
class FunctionsSettings(Settings):
    """The Azure Functions app (``function_app.py``): its broker, pipelines and id secret."""

    broker: str | None = env(BROKER)
    pipelines: tuple[Path, ...] = env(PIPELINES)
    secret: str | None = field(default=SECRET.default, repr=False, metadata=env(SECRET).metadata)
    blob_store: str | None = field(default=None, repr=False, metadata=env(BLOB_STORE).metadata)
    max_queue_depth: int = env(MAX_QUEUE_DEPTH)
    webhooks: WebhookSettings = nested(WebhookSettings)


@dataclass(frozen=True)
class ServiceBusSettings(Settings):
    """What the Service Bus broker reads beside its URL: its claim check (a connection string
    may carry an account key, so the store is kept out of ``repr``)."""

    claim_check_bytes: int = env(CLAIM_CHECK_BYTES)
    blob_store: str | None = field(default=None, repr=False, metadata=env(BLOB_STORE).metadata)


@dataclass(frozen=True)
class RedisSettings(Settings):
    """What the Redis broker and status store read beside their URL's options."""

    claim_check_bytes: int = env(CLAIM_CHECK_BYTES)
    retention_s: float = env(RETENTION_S)


@dataclass(frozen=True)
class ClientSettings(Settings):
    """The client commands (``nearline submit``, ``status``, ``terminate``, ``pipelines``)."""

    url: str = env(URL, "--url")
    key: str | None = env(KEY, "--key")


#: The machinery lives in :mod:`nearline.setting_fields`; programs import it from here.
__all__ = [
    "VARIABLES",
    "Option",
    "Settings",
    "Var",
    "add_flags",
    "env",
    "flag",
    "load",
    "nested",
    "option_of",
    "with_flags",
]
