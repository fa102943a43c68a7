"""``nearline endpoints rollout``: move an endpoint's traffic to a deployment step by step, behind gates.

A client-side loop over the HTTP API (docs/deployments.md, "Safe rollouts"): for each step it
gives the deployment its share (``PUT /api/endpoints/{name}/traffic``, the rest taken from the
other deployments in proportion to their shares when the rollout began), waits ``--every``
seconds while printing progress, and judges the deployment's own figures over the step
(``GET /api/endpoints/{name}/compare``): failure rate and p99 latency. Every move and every
verdict is a PUT with a reason, so the server's history lists the rollout. A failed gate, too few
requests in ten times ``--every``, an error, or Ctrl-C puts the split back as it was before the
rollout (``rollback: ...``) and exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from nearline.client import Client
from nearline.client_cli import UsageError, _client, _reporting
from nearline.outcomes import MAX_WINDOW_S

#: Seconds between progress lines while a step runs.
PROGRESS_S = 5.0
#: A step waits at most this many times ``--every`` for ``--min-requests``, then rolls back.
MIN_REQUESTS_PATIENCE = 10


class GateFailed(Exception):
    """A step's figures broke a gate (or never reached ``--min-requests``): roll back."""


@dataclass(frozen=True)
class Gates:
    """What the new deployment must show at each step."""

    max_failure_rate: float
    max_p99_ms: float
    min_requests: int = 20


@dataclass(frozen=True)
class Plan:
    """A rollout: ``deployment`` of ``endpoint`` through ``steps`` percents, ``every_s`` apart."""

    endpoint: str
    deployment: str
    steps: tuple[int, ...]
    every_s: float
    gates: Gates

    def __post_init__(self) -> None:
        if not self.steps or any(not 1 <= s <= 100 for s in self.steps):
            raise UsageError("--steps: give percents from 1 to 100, e.g. 10,50,100")
        if list(self.steps) != sorted(set(self.steps)):
            raise UsageError("--steps: the percents must increase, e.g. 10,50,100")
        if not 0 < self.every_s <= MAX_WINDOW_S:
            raise UsageError(f"--every: give a duration from 1s to {MAX_WINDOW_S}s, e.g. 60s or 5m")


def step_traffic(start: Mapping[str, int], deployment: str, share: int) -> dict[str, int]:
    """The split with ``deployment`` at ``share`` percent, the rest shared by the other
    deployments in proportion to their shares in ``start`` (largest remainders, summing to 100).

    Raises:
        UsageError: the other deployments have no traffic to take from, and ``share`` < 100.
    """
    others = {name: weight for name, weight in start.items() if name != deployment}
    rest, base = 100 - share, sum(others.values())
    if base == 0:
        if rest:
            raise UsageError(f"no other deployment has live traffic to move to {deployment}")
        return {**dict.fromkeys(others, 0), deployment: share}
    exact = {name: rest * weight / base for name, weight in others.items()}
    split = {name: math.floor(value) for name, value in exact.items()}
    by_remainder = sorted(exact, key=lambda n: exact[n] - split[n], reverse=True)
    for name in by_remainder[: rest - sum(split.values())]:
        split[name] += 1
    return {**split, deployment: share}


def verdict(stats: Mapping[str, Any], gates: Gates) -> tuple[bool | None, str]:
    """``(passed, what was measured)``; passed is None while there are too few requests."""
    requests = int(stats.get("requests") or 0)
    if requests < gates.min_requests:
        return None, f"{requests} of {gates.min_requests} requests"
    rate = float(stats.get("failure_rate") or 0.0)
    p99 = stats.get("p99_ms")
    rate_ok = rate <= gates.max_failure_rate
    p99_ok = p99 is not None and p99 <= gates.max_p99_ms
    text = (
        f"failure rate {rate:.3f} {'<=' if rate_ok else '>'} {gates.max_failure_rate:g}, "
        f"p99 {p99 if p99 is None else round(p99)} ms {'<=' if p99_ok else '>'} {gates.max_p99_ms:g}"
    )
    return rate_ok and p99_ok, f"{requests} requests, {text}"


class Rollout:
    """Runs one :class:`Plan` through ``client``; progress goes to ``out``.

    ``clock`` and ``sleep`` are the wall clock's (monotonic) and its pause.
    """

    def __init__(
        self,
        client: Client,
        plan: Plan,
        out: IO[str] = sys.stdout,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client, self.plan, self.out = client, plan, out
        self.clock, self.sleep = clock, sleep

    def run(self) -> int:
        """The rollout; 0 when the last step passed, 1 after a rollback (the reason printed).

        An error on the way (the server refusing or not answering) is raised after the split is
        put back, where the server still takes it.
        """
        plan = self.plan
        doc = self.client.endpoint(plan.endpoint)
        traffic, mirror = dict(doc["traffic"]), dict(doc.get("mirror") or {})
        if plan.deployment not in traffic:
            raise UsageError(
                f"endpoint {plan.endpoint!r} has no deployment {plan.deployment!r}; "
                f"the deployments are: {', '.join(traffic)}"
            )
        self._say(f"rollout of {plan.deployment} on {plan.endpoint}: from {_split_text(traffic)}")
        try:
            for number, share in enumerate(plan.steps, 1):
                self._step(number, share, traffic, mirror)
        except GateFailed as exc:
            self._restore(traffic, mirror, str(exc))
            return 1
        except BaseException as exc:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {exc}"
            with contextlib.suppress(Exception):
                self._restore(traffic, mirror, why)
            raise
        self._say(f"rollout done: {plan.deployment} at {plan.steps[-1]}%")
        return 0

    def _restore(self, traffic: Mapping[str, int], mirror: Mapping[str, int], why: str) -> None:
        self.client.set_traffic(
            self.plan.endpoint, dict(traffic), mirror=dict(mirror), reason=f"rollback: {why}"
        )
        self._say(f"rolled back to {_split_text(traffic)}: {why}")

    def _step(self, number: int, share: int, start: Mapping[str, int], mirror: Mapping[str, int]) -> None:
        plan = self.plan
        label = f"rollout step {number}/{len(plan.steps)}: {plan.deployment} at {share}%"
        split = step_traffic(start, plan.deployment, share)
        kept = {name: pct for name, pct in mirror.items() if split.get(name, 0) == 0}
        self.client.set_traffic(
            plan.endpoint, split, mirror=kept, reason=f"{label}: moving {_split_text(split)}"
        )
        self._say(f"{label}: {_split_text(split)}; checking for {plan.every_s:g} s")
        passed, text = self._watch(label)
        if not passed:
            raise GateFailed(f"{label}: {text}")
        self.client.set_traffic(
            plan.endpoint, split, mirror=kept, reason=f"{label}: {text.split(', ', 1)[1]}"
        )
        self._say(f"{label}: passed: {text}")

    def _watch(self, label: str) -> tuple[bool | None, str]:
        """Wait ``every_s`` (longer while too few requests came), printing progress; the verdict."""
        plan, started = self.plan, self.clock()
        patience = min(plan.every_s * MIN_REQUESTS_PATIENCE, MAX_WINDOW_S)
        next_line = started + PROGRESS_S
        while True:
            elapsed = self.clock() - started
            if elapsed >= plan.every_s:
                passed, text = self._measure(elapsed)
                if passed is not None:
                    return passed, text
                if elapsed >= patience:
                    return False, f"only {text} in {elapsed:.0f} s (--min-requests)"
            if self.clock() >= next_line:
                self._say(f"{label}: {elapsed:.0f} s: {self._measure(elapsed)[1]}")
                next_line += PROGRESS_S
            self.sleep(min(1.0, plan.every_s / 4))

    def _measure(self, elapsed: float) -> tuple[bool | None, str]:
        window = min(MAX_WINDOW_S, max(1, math.ceil(elapsed)))
        doc = self.client.compare(self.plan.endpoint, window)
        stats = doc["deployments"].get(self.plan.deployment, {})
        return verdict(stats, self.plan.gates)

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _split_text(traffic: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {share}%" for name, share in traffic.items())


def parse_steps(text: str) -> tuple[int, ...]:
    """``10,50,100`` → ``(10, 50, 100)``; :class:`Plan` checks the values."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--steps: {text!r} is not a list of percents, e.g. 10,50,100") from None


def parse_duration(text: str) -> float:
    """``60s``, ``5m``, ``90`` (seconds) → seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        return float(number) * unit
    except ValueError:
        raise UsageError(f"--every: {text!r} is not a duration, e.g. 60s or 5m") from None


def arguments(p: argparse.ArgumentParser) -> None:
    """``nearline endpoints rollout``'s own arguments (``--url`` and ``--key`` are added beside)."""
    p.add_argument("endpoint")
    p.add_argument("deployment", help="the deployment to move the traffic to")
    p.add_argument("--steps", default="10,50,100", help="its percents, in order (default: 10,50,100)")
    p.add_argument("--every", default="60s", help="how long each step runs before it is judged (60s)")
    p.add_argument("--max-failure-rate", type=float, default=0.01, help="highest failure rate (0.01)")
    p.add_argument("--max-p99-ms", type=float, default=500.0, help="highest p99 latency in ms (500)")
    p.add_argument("--min-requests", type=int, default=20, help="requests a step needs to be judged (20)")


@_reporting
def cmd_rollout(args: argparse.Namespace) -> int:
    """``nearline endpoints rollout``: 0 promoted, 1 rolled back (why on the last line)."""
    gates = Gates(args.max_failure_rate, args.max_p99_ms, args.min_requests)
    plan = Plan(args.endpoint, args.deployment, parse_steps(args.steps), parse_duration(args.every), gates)
    with _client(args) as client:
        return Rollout(client, plan).run()
