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

#: Worker micro-batching: release a batch when it is this full or this old, whichever first.
MAX_BATCH = 32
MAX_WAIT_MS = 5

#: HTTP API defaults. Port 7071 is what `func start` uses, so clients need no change.
HTTP_HOST = "127.0.0.1"
HTTP_PORT = 7071
WORKER_PORT = 8081
MAX_BODY_BYTES = 1_048_576
MAX_WAIT_S = 30.0
RETRY_AFTER_S = 1

#: Default job deadline when a request names none (seconds). Near-real-time jobs that are not
#: done within a minute are of no use to the caller; the deadline also bounds how long a
#: queued job can hold a record.
DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 3600.0

#: Request-queue depth above which submissions are refused with 503 + Retry-After.
MAX_QUEUE_DEPTH = 10_000

#: Terminal job records are kept this long, then purged.
RETENTION_S = 24 * 3600.0

#: Environment variable names read by the code (k8s manifests must use exactly these).
ENV_BROKER = "NEARLINE_BROKER"
ENV_MODELS = "NEARLINE_MODELS"
ENV_PIPELINES = "NEARLINE_PIPELINES"
ENV_API_KEYS = "NEARLINE_API_KEYS"
ENV_MAX_BATCH = "NEARLINE_MAX_BATCH"
ENV_MAX_WAIT_MS = "NEARLINE_MAX_WAIT_MS"
ENV_LEASE_S = "NEARLINE_LEASE_S"
ENV_MAX_DELIVERIES = "NEARLINE_MAX_DELIVERIES"
ENV_WORKER_PORT = "NEARLINE_WORKER_PORT"
ENV_TRITON_URL = "NEARLINE_TRITON_URL"
ENV_MODEL_BACKEND = "NEARLINE_MODEL_BACKEND"
ENV_MAX_QUEUE_DEPTH = "NEARLINE_MAX_QUEUE_DEPTH"
ENV_RETENTION_S = "NEARLINE_RETENTION_S"
ENV_DATA_DIR = "NEARLINE_DATA_DIR"
ENV_CLAIM_CHECK_BYTES = "NEARLINE_CLAIM_CHECK_BYTES"
