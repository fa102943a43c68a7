"""The ``nearline`` command: serve, worker, models, and the client commands.

User errors print one line (``nearline: ...``) and exit non-zero; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from nearline import __version__
from nearline import constants as c
from nearline.errors import NearlineError

DEFAULT_URL = f"http://{c.HTTP_HOST}:{c.HTTP_PORT}"


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the API, the lifecycle and workers in one process tree")
    p.add_argument("--host", default=c.HTTP_HOST)
    p.add_argument("--port", type=int, default=c.HTTP_PORT)
    p.add_argument(
        "--broker",
        default=os.environ.get(c.ENV_BROKER),
        help="queue URL: sqlite:///file.db (default, under --data-dir), memory://, redis://host:6379/0",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (threads for memory://)")
    p.add_argument("--no-workers", action="store_true", help="API and lifecycle only (workers run elsewhere)")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get(c.ENV_DATA_DIR, ".nearline")))
    p.add_argument("--models", type=Path, default=Path(os.environ.get(c.ENV_MODELS, "models")))
    p.add_argument("--pipelines", type=Path, default=os.environ.get(c.ENV_PIPELINES))
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without API keys")
    p.add_argument(
        "--max-queue-depth", type=int, default=int(os.environ.get(c.ENV_MAX_QUEUE_DEPTH, c.MAX_QUEUE_DEPTH))
    )
    p.add_argument(
        "--retention-s", type=float, default=float(os.environ.get(c.ENV_RETENTION_S, c.RETENTION_S))
    )
    p.add_argument("--max-body", type=int, default=c.MAX_BODY_BYTES, help="largest request body in bytes")
    p.add_argument("--lease-s", type=float, default=float(os.environ.get(c.ENV_LEASE_S, c.LEASE_S)))
    p.add_argument("--max-batch", type=int, default=int(os.environ.get(c.ENV_MAX_BATCH, c.MAX_BATCH)))
    p.add_argument(
        "--max-wait-ms", type=float, default=float(os.environ.get(c.ENV_MAX_WAIT_MS, c.MAX_WAIT_MS))
    )
    p.set_defaults(func=_serve)


def _add_client(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("NEARLINE_URL", DEFAULT_URL), help="API base URL")
        p.add_argument("--key", default=os.environ.get("NEARLINE_KEY"), help="API key (x-functions-key)")

    p = sub.add_parser("submit", help="submit a scoring request")
    p.add_argument("pipeline")
    p.add_argument("file", nargs="?", default="-", help="JSON input file, or - for stdin")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait")
    p.add_argument("--idempotency-key")
    p.add_argument("--priority", choices=c.LANES)
    common(p)
    p.set_defaults(func=_client_command("submit"))
    for name, helptext in (("status", "print a job's status document"), ("terminate", "terminate a job")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("id")
        if name == "terminate":
            p.add_argument("--reason", default="")
        common(p)
        p.set_defaults(func=_client_command(name))
    p = sub.add_parser("pipelines", help="list pipelines and their input schemas")
    common(p)
    p.set_defaults(func=_client_command("pipelines"))


def _client_command(name: str):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        from nearline import client_cli

        return int(getattr(client_cli, f"cmd_{name}")(args))

    return run


def _serve(args: argparse.Namespace) -> int:
    from nearline.serve import ServeConfig, serve

    keys = tuple(k.strip() for k in os.environ.get(c.ENV_API_KEYS, "").split(",") if k.strip())
    cfg = ServeConfig(
        host=args.host,
        port=args.port,
        broker=args.broker,
        workers=args.workers,
        no_workers=args.no_workers,
        data_dir=args.data_dir,
        models=args.models,
        pipelines=args.pipelines,
        insecure=args.insecure,
        api_keys=keys,
        max_queue_depth=args.max_queue_depth,
        retention_s=args.retention_s,
        max_body=args.max_body,
        lease_s=args.lease_s,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
    )
    return serve(cfg)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nearline", description="Near-real-time ML scoring.")
    parser.add_argument("--version", action="version", version=f"nearline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    w = sub.add_parser("worker", help="run a scoring worker (same as python -m workers)", add_help=False)
    w.set_defaults(func=None)
    m = sub.add_parser("models", help="the model repository")
    msub = m.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser("build", help="build the example model repository", add_help=False)
    b.set_defaults(func=None)
    t = sub.add_parser("triton", help="a local Triton Inference Server for the model repository")
    tsub = t.add_subparsers(dest="triton_command", required=True)
    tsub.add_parser("serve", help="serve the model repository with Triton (via pytriton)", add_help=False)
    _add_client(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `worker`, `models build` and `triton serve` own their flags: hand the rest of the line to them.
    if argv[:1] == ["worker"]:
        from workers.cli import main as worker_main

        return worker_main(argv[1:])
    if argv[:2] == ["models", "build"]:
        from nearline.models.build import main as build_main

        return build_main(argv[2:])
    if argv[:2] == ["triton", "serve"]:
        from nearline.triton.server import main as triton_main

        return triton_main(argv[2:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except NearlineError as exc:
        print(f"nearline: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
