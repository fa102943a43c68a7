"""``python -m bench.tracing_off``: what tracing costs when it is off (nearline/tracing.py).

Times the calls a job makes on its way (submit and enqueue spans, the message stamp, the
worker's batch and publish spans, the lifecycle's end span) with tracing off, against the same
loop without them, and prints the cost per job. Off means OpenTelemetry is not even imported.
"""

from __future__ import annotations

import contextlib
import sys
import timeit

from nearline import tracing
from nearline.messages import RequestMessage, ResultMessage

ROUNDS = 200_000


def main() -> int:
    tracing.install(None)  # off, whatever the environment says
    message = RequestMessage("job", "identity", {"n": 1}, 1.0)
    result = ResultMessage.completed("job", {"n": 1})

    @tracing.traced("nearline.submit")
    async def submit() -> None:
        return None

    def one_job() -> None:
        coroutine = submit()
        with contextlib.suppress(StopIteration):
            coroutine.send(None)
        with tracing.span("nearline.enqueue"):
            tracing.stamped(message)
        tracing.batch([message], {}, 1.0, 2.0, {"identity": 1.0})
        tracing.published([result], 2.0)
        tracing.ended([(result, 2.0)], 3.0)

    async def plain() -> None:
        return None

    def baseline() -> None:
        coroutine = plain()
        with contextlib.suppress(StopIteration):
            coroutine.send(None)

    traced_s = min(timeit.repeat(one_job, number=ROUNDS, repeat=3)) / ROUNDS
    base_s = min(timeit.repeat(baseline, number=ROUNDS, repeat=3)) / ROUNDS
    imported = sorted(n for n in sys.modules if n.startswith("opentelemetry"))
    print(f"tracing off: {(traced_s - base_s) * 1e6:.2f} µs per job ({ROUNDS} jobs; six tracing calls)")
    print(f"opentelemetry modules imported: {imported or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
