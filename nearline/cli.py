"""The ``nearline`` command: init, check, serve, worker, models, dlq, and the client commands.

``init``, ``check``, ``serve``, ``worker``, ``models build|import`` and ``triton serve`` own
their flags, derived from :mod:`nearline.settings`. User errors print one line (``prog: ...``,
:func:`fail`) and exit with :func:`nearline.errors.exit_code`'s status; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping

from nearline import __version__
from nearline.constants import LANES
from nearline.errors import NearlineError, exit_code
from nearline.settings import ClientSettings, ServeSettings, add_flags, with_flags

#: The worker settings ``nearline serve`` takes flags for; the rest come from the environment.
SERVE_WORKER_FLAGS = ("broker", "models", "pipelines", "lease_s", "max_batch", "max_wait_ms")


def fail(prog: str, exc: BaseException) -> int:
    """Report ``exc`` as one line on stderr, ``prog: message``; return its exit status.

    Every command's ``main`` ends here for a :class:`~nearline.errors.NearlineError`, an
    ``OSError`` or an interrupt; the status is :func:`nearline.errors.exit_code`'s.
    """
    if isinstance(exc, NearlineError):
        message = exc.message
    elif isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        message = str(exc) or type(exc).__name__
    if not isinstance(exc, KeyboardInterrupt):
        print(f"{prog}: {message}", file=sys.stderr)
    return exit_code(exc)


def serve_parser(settings: ServeSettings) -> argparse.ArgumentParser:
    """``nearline serve``'s flags, their defaults taken from ``settings``."""
    p = argparse.ArgumentParser(
        prog="nearline serve", description="Run the API, the lifecycle and workers in one process tree."
    )
    add_flags(p, settings)
    add_flags(p, settings.worker, only=SERVE_WORKER_FLAGS, prefix="worker.")
    add_flags(p, settings.api, prefix="api.")
    return p


def serve_settings(argv: list[str], environ: Mapping[str, str] | None = None) -> ServeSettings:
    """``nearline serve``'s settings: the environment's, with the flags in ``argv`` over them."""
    settings = ServeSettings.from_env(environ)
    return with_flags(settings, serve_parser(settings).parse_args(argv))


def serve_main(argv: list[str]) -> int:
    """``nearline serve [flags]``; returns the exit status."""
    try:
        settings = serve_settings(argv)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        from nearline.serve import serve

        return serve(settings)
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        return fail("nearline serve", exc)


def _add_client(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    client = ClientSettings.from_env()

    def common(p: argparse.ArgumentParser) -> None:
        add_flags(p, client)

    p = sub.add_parser("submit", help="submit a scoring request")
    p.add_argument("pipeline")
    p.add_argument("file", nargs="?", default="-", help="JSON input file, or - for stdin")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait")
    p.add_argument("--idempotency-key")
    p.add_argument("--priority", choices=LANES)
    p.add_argument("--deployment", help="score with this deployment of the endpoint (docs/deployments.md)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nearline", description="Near-real-time ML scoring.")
    parser.add_argument("--version", action="version", version=f"nearline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the API, the lifecycle and workers in one process tree", add_help=False)
    sub.add_parser(
        "init", help="make a new project: pipelines, steps, a model, a test, a Dockerfile", add_help=False
    )
    sub.add_parser(
        "check", help="load every pipeline and model and run each pipeline's examples", add_help=False
    )
    w = sub.add_parser("worker", help="run a scoring worker (same as python -m workers)", add_help=False)
    w.set_defaults(func=None)
    m = sub.add_parser("models", help="the model repository")
    msub = m.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser("build", help="build the example model repository", add_help=False)
    b.set_defaults(func=None)
    i = msub.add_parser("import", help="import an ONNX or TorchScript model file", add_help=False)
    i.set_defaults(func=None)
    t = sub.add_parser("triton", help="a local Triton Inference Server for the model repository")
    tsub = t.add_subparsers(dest="triton_command", required=True)
    tsub.add_parser("serve", help="serve the model repository with Triton (via pytriton)", add_help=False)
    _add_client(sub)
    from nearline.dlq_cli import add_parser as add_dlq

    add_dlq(sub)
    from nearline.endpoints_cli import add_parser as add_endpoints

    add_endpoints(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `init`, `check`, `serve`, `worker`, `models build|import` and `triton serve` own their flags
    # (and read the environment): hand the rest of the line to them.
    if argv[:1] == ["serve"]:
        return serve_main(argv[1:])
    if argv[:1] == ["check"]:
        from nearline.check import main as check_main

        return check_main(argv[1:])
    if argv[:1] == ["init"]:
        from nearline.project import main as init_main

        return init_main(argv[1:])
    if argv[:1] == ["worker"]:
        from nearline.worker.cli import main as worker_main

        return worker_main(argv[1:], prog="nearline worker")
    if argv[:2] == ["models", "build"]:
        from nearline.models.build import main as build_main

        return build_main(argv[2:])
    if argv[:2] == ["models", "import"]:
        from nearline.models.importer import main as import_main

        return import_main(argv[2:])
    if argv[:2] == ["triton", "serve"]:
        from nearline.triton.server import main as triton_main

        return triton_main(argv[2:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (NearlineError, OSError, KeyboardInterrupt) as exc:
        return fail("nearline", exc)


if __name__ == "__main__":
    sys.exit(main())
