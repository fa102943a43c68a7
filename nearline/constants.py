"""Defaults and limits shared by every entry point, in one place, with the reason for each."""

from __future__ import annotations

#: Queue names. Azure Service Bus queues and Redis streams carry the same names, so the
#: Kubernetes manifests and the KEDA triggers can name them without a mapping table.
REQUEST_QUEUE = "nearline-requests"
RESPONSE_QUEUE = "nearline-responses"

#: Priority lanes, highest first. Receivers drain a higher lane before looking at a lower one.
LANES = ("high", "normal", "low")
DEFAULT_LANE = "normal"

#: How long a received message stays invisible to other receivers. Long enough for the longest
#: batch on CPU (MiniLM at batch 64 takes ~0.3 s here), short enough that a dead worker's
#: messages come back quickly. Service Bus's own lock duration default is 60 s; keep k8s'
#: terminationGracePeriodSeconds at or above this plus the longest batch.
LEASE_S = 30.0

#: Deliveries after which a message is dead-lettered and its job fails with PoisonMessage.
MAX_DELIVERIES = 5

#: Worker micro-batching (nearline/batching.py): a batch holds at most MAX_BATCH requests, and a
#: free worker takes what is waiting at once (MAX_WAIT_MS 0): what arrives while it computes
#: makes the next batch, so batches fill with the load and a lone request never waits for
#: company (a 5 ms wait was a third of the submit → result time of a trivial pipeline).
MAX_BATCH = 32
MAX_WAIT_MS = 0
#: A worker's window, in batches: when more waits than a batch, it leases up to this many
#: batches' worth and cuts them into batches of similar length (fewer pad tokens: MiniLM on the
#: bench's mix ran ~1.5x faster length-sorted). Never more than it can finish inside a lease.
BATCH_WINDOW = 4

#: HTTP API defaults. Port 7071 is what `func start` uses, so clients need no change.
HTTP_HOST = "127.0.0.1"
HTTP_PORT = 7071
WORKER_PORT = 8081
MAX_BODY_BYTES = 1_048_576
MAX_WAIT_S = 30.0
RETRY_AFTER_S = 1

#: Deepest nesting of arrays and objects in a request body (the body object is level 1) and in
#: a job's output (``nearline.strict_json``). Real inputs nest a few levels; Python's json
#: parser fails near 1,000 levels and encoders of deep records earlier, so the limit sits far
#: below both and is checked on the bytes before parsing.
MAX_JSON_DEPTH = 64

#: Default job deadline when a request names none (seconds). Near-real-time jobs that are not
#: done within a minute are of no use to the caller; the deadline also bounds how long a
#: queued job can hold a record.
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 3600.0

#: Request-queue depth above which submissions are refused with 503 + Retry-After.
MAX_QUEUE_DEPTH = 10_000

#: A client's time to send its request line and headers, and then its whole body (at this
#: default a 1 MiB body needs ~35 KB/s), and the open connections served at once. uvicorn
#: times out neither head nor body: without them a few hundred clients that send a byte a
#: second hold the server's sockets for ever (slowloris).
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 1000

#: Terminal job records are kept this long, then purged.
RETENTION_S = 24 * 3600.0

#: Where the model repository is, unless told otherwise: ``models`` in the working directory,
#: where ``make run`` and ``nearline models build`` put it.
MODELS_DIR = "models"

#: ``nearline serve``'s data directory (the SQLite queue file) when none is named.
DATA_DIR = ".nearline"

#: Worker processes ``nearline serve`` starts. One is enough on a laptop; a second helps only
#: when the cores outnumber what one worker's torch threads use (see docs/benchmarks.md).
SERVE_WORKERS = 1

#: A worker's health and metrics endpoint has no key, so it listens on loopback unless told
#: otherwise. In a pod the kubelet probes the pod's IP and Prometheus scrapes it from another pod:
#: the Kubernetes manifests set NEARLINE_WORKER_HOST for that.
WORKER_HOST = "127.0.0.1"

#: Claim check (``nearline.claim_check``): bodies larger than this go out of line. Service Bus
#: Standard's message limit is 256 KiB, so the same figure everywhere means a body never fits
#: one broker and not another. On Redis it keeps stream entries small: a 32-message read then
#: moves kilobytes, not megabytes, and the worker fetches large bodies with one MGET.
CLAIM_CHECK_BYTES = 256 * 1024

#: Azure Storage containers in the account of NEARLINE_BLOB_STORE: claim-checked bodies of the
#: Service Bus profile, and the tombstones of terminated jobs that workers consult. Two
#: containers, so that roles and the lifecycle rule (docs/azure.md) can name each one.
BODIES_CONTAINER = "nearline-bodies"
TOMBSTONES_CONTAINER = "nearline-terminated"

#: Azure: how old a reading of the request queues' depth may be before a submit refreshes it.
#: Reading it is a management call per lane; Service Bus's own counts lag by seconds anyway,
#: so a fresher reading would cost calls without being truer.
DEPTH_READING_S = 5.0

#: Callback deliveries (``nearline.deliveries``): the first retry after this many seconds, each
#: next one after twice the last (with jitter, never over WEBHOOK_MAX_RETRY_S), until the
#: delivery is WEBHOOK_MAX_AGE_S old or has made WEBHOOK_MAX_ATTEMPTS attempts. A day of
#: retries rides out a receiver's outage overnight (40 attempts at these delays last about a
#: day); the hourly cap keeps a receiver that is back up from waiting long for its events.
WEBHOOK_RETRY_S = 5.0
WEBHOOK_MAX_RETRY_S = 3600.0
WEBHOOK_MAX_AGE_S = 24 * 3600.0
WEBHOOK_MAX_ATTEMPTS = 40

#: ``nearline triton serve``: Triton's own default ports, on loopback unless told otherwise
#: (Triton's endpoints have no authentication of their own).
TRITON_HOST = "127.0.0.1"
TRITON_HTTP_PORT = 8000
TRITON_GRPC_PORT = 8001
TRITON_METRICS_PORT = 8002

# Environment variable names live in one table with their types and defaults:
# ``nearline.settings.VARIABLES``.

#: Request headers that target one deployment of an endpoint (docs/deployments.md): nearline's
#: own, and Azure ML online endpoints' (so an Azure ML client works unchanged). The first is also
#: the response header that names a job's deployment.
DEPLOYMENT_HEADERS = ("nearline-deployment", "azureml-model-deployment")
