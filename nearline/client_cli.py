"""The client commands of ``nearline``: ``submit``, ``status``, ``terminate``, ``pipelines``.

Their arguments are defined in :mod:`nearline.cli`; each command here returns the exit code
(:func:`nearline.errors.exit_code`): 0 success; 1 the job ended Failed or Terminated, or did not
end within ``--timeout``; 2 a user error (unreadable or invalid input file, bad URL, a request
the server refused); 3 the server unreachable, overloaded or failing (try again later). Errors
are one line on stderr, ``nearline: ...``; never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from nearline.client import Client, ClientError
from nearline.errors import ConfigError, exit_code

Command = Callable[[argparse.Namespace], int]


class UsageError(ConfigError):
    """The command line or the input file is wrong."""

    code = "UsageError"


def _reporting(command: Command) -> Command:
    """Turn the client's errors into one line on stderr and an exit code."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ClientError, UsageError) as exc:
            return _fail(exc, exit_code(exc))

    return run


def _fail(exc: Exception, code: int) -> int:
    print(f"nearline: {exc}", file=sys.stderr)
    return code


@_reporting
def cmd_submit(args: argparse.Namespace) -> int:
    """``nearline submit PIPELINE [FILE|-]``: print the 202 body, or with ``--wait`` the output."""
    payload = read_input(args.file)
    with _client(args) as client:
        job = client.submit(
            args.pipeline,
            payload,
            idempotency_key=args.idempotency_key,
            priority=args.priority,
            deployment=args.deployment,
        )
        if not args.wait:
            _print_json(job.links.accepted_body())
            return 0
        with Progress(job.id, sys.stderr) as progress:
            output = job.result(args.timeout, on_update=progress.update)
    _print_json(output)
    return 0


@_reporting
def cmd_status(args: argparse.Namespace) -> int:
    """``nearline status ID``: print the job's status document."""
    with _client(args) as client:
        _print_json(client.get(args.id))
    return 0


@_reporting
def cmd_terminate(args: argparse.Namespace) -> int:
    """``nearline terminate ID [--reason R]``: ask the server to end the job."""
    with _client(args) as client:
        client.job(args.id).terminate(args.reason)
    print(f"job {args.id}: terminate requested")
    return 0


@_reporting
def cmd_pipelines(args: argparse.Namespace) -> int:
    """``nearline pipelines``: a table of the pipelines and their required input fields."""
    with _client(args) as client:
        pipelines = client.pipelines()
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    print(pipeline_table(pipelines, width))
    return 0


def read_input(path: str) -> Any:
    """The JSON input in ``path`` (``-``: stdin); UsageError naming the file and the problem."""
    name = "stdin" if path == "-" else path
    try:
        if path == "-":
            if sys.stdin.isatty():
                print("nearline: reading the input JSON from stdin (end with Ctrl-D)", file=sys.stderr)
            text = sys.stdin.read()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {name}: not UTF-8 text ({exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def pipeline_table(pipelines: list[dict[str, Any]], width: int | None = None) -> str:
    """Name, required input fields (with their types) and description, one pipeline a row.

    Args:
        pipelines: What ``GET /api/pipelines`` lists.
        width: Cut rows to this many characters (a terminal's width); None: no limit.
    """
    rows = [("NAME", "REQUIRED INPUT", "DESCRIPTION")]
    for p in pipelines:
        rows.append(
            (
                str(p.get("name", "")),
                _required(p.get("inputSchema")),
                " ".join(str(p.get("description") or "").split()),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows]
    return "\n".join(
        line if width is None or len(line) <= width else line[: width - 1] + "…" for line in lines
    )


def _required(schema: Any) -> str:
    if not isinstance(schema, dict) or not schema.get("required"):
        return "-"
    props = schema.get("properties") or {}
    fields = []
    for name in schema["required"]:
        kind = props.get(name, {}).get("type") if isinstance(props.get(name), dict) else None
        fields.append(f"{name} ({kind})" if isinstance(kind, str) else str(name))
    return ", ".join(fields)


def _client(args: argparse.Namespace) -> Client:
    try:
        return Client(args.url, args.key)
    except ValueError as exc:
        raise UsageError(f"--url: {exc}") from None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


class Progress:
    """A job's status on ``stream`` while ``--wait`` waits.

    On a terminal: one live line (status and elapsed seconds), redrawn a few times a second and
    cleared at the end. Otherwise (a log, a pipe): one line per status change.
    """

    TICK_S = 0.2

    def __init__(self, job_id: str, stream: IO[str]) -> None:
        self.job_id = job_id
        self.stream = stream
        self.live = stream.isatty()
        self.status = "Submitted"
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="nearline-progress", daemon=True)

    def __enter__(self) -> Progress:
        if self.live:
            self._ticker.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.live:
            self._stop.set()
            self._ticker.join()
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def update(self, document: dict[str, Any]) -> None:
        """Take a status document with a new ``runtimeStatus``."""
        self.status = str(document.get("runtimeStatus"))
        if not self.live:
            print(f"job {self.job_id}: {self.status} ({self._elapsed():.1f} s)", file=self.stream, flush=True)

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _tick(self) -> None:
        while not self._stop.wait(self.TICK_S):
            self.stream.write(f"\r\x1b[Kjob {self.job_id}: {self.status} {self._elapsed():.1f} s")
            self.stream.flush()
