"""Redis connections and errors, shared by the Redis broker and the Redis status store.

:func:`connect` opens a client for a ``redis://`` URL and splits off nearline's own query
options; :func:`redis_error` sorts a Redis failure into one that passes (:class:`BrokerError`,
retried by the worker and answered 503 by the API) and one that fails the same way every time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from nearline.errors import BrokerError, NearlineError

#: Redis errors that pass: retrying the same call later can succeed.
TRANSIENT_ERRORS: tuple[type[redis.RedisError], ...] = (
    redis.ConnectionError,  # refused, reset, closed; also LOADING (BusyLoadingError) after a restart
    redis.TimeoutError,
    redis.exceptions.InvalidResponse,  # a connection cut mid-reply
    redis.exceptions.OutOfMemoryError,  # full under noeviction: consumers free memory
    redis.exceptions.ReadOnlyError,  # a failover in progress: the primary became a replica
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,  # also MASTERDOWN
)
#: Transient replies redis-py has no class for (a pipeline's error puts text before them).
_TRANSIENT_REPLY = re.compile(r"(?:^|: )(?:BUSY|NOREPLICAS) ")


def redis_error(what: str, exc: redis.RedisError) -> NearlineError:
    """``exc`` as nearline's error: :class:`BrokerError` when it passes, else :class:`NearlineError`."""
    if isinstance(exc, TRANSIENT_ERRORS) or _TRANSIENT_REPLY.search(str(exc)):
        return BrokerError(f"{what}: {exc}")
    return NearlineError(f"{what}: Redis refused the operation: {exc}")


def connect(url: str, own_options: Sequence[str]) -> tuple[redis.Redis, dict[str, str], str]:
    """A client for ``url``; nearline's own query options split off; the URL without password.

    Returns:
        ``(client, {option: value} for own_options present, redacted url)``.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    own = {k: v for k, v in query if k in own_options}
    rest = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in own])))
    shown = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    return redis.Redis.from_url(rest), own, urlunsplit(shown)
