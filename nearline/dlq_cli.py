"""``nearline dlq list|show|redrive|purge``: the dead-letter tools on the command line.

The broker is ``--broker``, else ``NEARLINE_BROKER``, else the SQLite file of ``nearline
serve``'s data directory (``NEARLINE_DATA_DIR``); the status store is the one beside it (none on
Service Bus). Exit status: 0 done; 2 a usage error, or an id given that is not a dead letter
(redrive and purge act on the others); 3 the broker unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nearline import dead_letters as dl
from nearline.brokers import open_broker, scheme_of
from nearline.brokers.base import Broker
from nearline.constants import REQUEST_QUEUE
from nearline.errors import ConfigError, JobNotFound
from nearline.settings import ServeSettings
from nearline.sqlite_db import parse_url
from nearline.store import open_store


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipeline", help="only dead letters of this pipeline")
    p.add_argument("--reason", help="only dead letters whose reason contains this (any case)")
    p.add_argument("--older-than", type=float, metavar="SECONDS", help="dead-lettered this long ago")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``dlq`` and its four commands to ``nearline``'s parser."""
    d = sub.add_parser("dlq", help="list, show, redrive and purge dead-lettered requests")
    dsub = d.add_subparsers(dest="dlq_command", required=True)
    commands = {
        "list": "list dead letters, oldest first",
        "show": "print one dead letter with its request message",
        "redrive": "send dead letters back to their queue, their jobs back to Pending",
        "purge": "delete dead letters for good",
    }
    for name, helptext in commands.items():
        p = dsub.add_parser(name, help=helptext)
        p.add_argument("--broker", help="broker URL (default: NEARLINE_BROKER, else serve's)")
        p.add_argument("--queue", default=REQUEST_QUEUE, help=f"queue (default: {REQUEST_QUEUE})")
        if name == "show":
            p.add_argument("id", help="the dead letter's message id (its job id)")
        else:
            _filters(p)
            p.add_argument("--limit", type=int, default=100, help="at most this many (default: 100)")
            p.add_argument("--json", action="store_true", help="print JSON")
        if name in ("redrive", "purge"):
            p.add_argument("ids", nargs="*", metavar="ID", help="message ids (job ids)")
            p.add_argument("--all", action="store_true", help="every dead letter the filters match")
        p.set_defaults(func=run)


def _broker_url(args: argparse.Namespace) -> str:
    """The broker to act on; a SQLite file must exist (a wrong path would show an empty queue)."""
    url = str(args.broker or ServeSettings.from_env().broker_url)
    if scheme_of(url) == "sqlite" and not parse_url(url).path.is_file():
        where = "--broker" if args.broker else "NEARLINE_BROKER or NEARLINE_DATA_DIR"
        raise ConfigError(f"no SQLite file at {parse_url(url).path}: nothing has run there (check {where})")
    return url


def _filter(args: argparse.Namespace) -> dl.Filter:
    if args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    if args.older_than is not None and not args.older_than >= 0:  # NaN too
        raise ConfigError("--older-than must be a number of seconds, 0 or more")
    return dl.Filter(args.pipeline, args.reason, args.older_than)


def _targets(broker: Broker, args: argparse.Namespace) -> list[str]:
    """The ids a redrive or purge acts on: those named, or with ``--all`` those the filters match."""
    if bool(args.ids) == bool(args.all):
        raise ConfigError(f"dlq {args.dlq_command}: give dead letter ids or --all (with filters), not both")
    if args.all:
        return [d.message_id for d in dl.matching(broker, args.queue, _filter(args), args.limit)]
    wanted = set(args.ids)
    dead = dl.matching(broker, args.queue, _filter(args), dl.SCAN_LIMIT)
    found = [d.message_id for d in dead if d.message_id in wanted]
    missing = [mid for mid in args.ids if mid not in found]
    for mid in missing:
        print(f"nearline dlq: {mid}: no such dead letter in {args.queue}", file=sys.stderr)
    return found


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _list(broker: Broker, args: argparse.Namespace) -> int:
    found = dl.matching(broker, args.queue, _filter(args), args.limit)
    if args.json:
        _print([dl.summary(d) for d in found])
        return 0
    for d in found:
        s = dl.summary(d)
        print(f"{s['id']}  {s['pipeline'] or '-'}  {s['lane']}  deliveries={s['deliveryCount']}", end="")
        print(f"  {s['deadLetteredTime'] or '-'}  {s['reason']}")
    print(f"{len(found)} dead letter(s) in {args.queue}", file=sys.stderr)
    return 0


def _act(broker: Broker, url: str, args: argparse.Namespace) -> int:
    ids = _targets(broker, args)
    missing = bool(args.ids) and len(ids) < len(set(args.ids))
    if args.dlq_command == "purge":
        done = dl.purge(broker, args.queue, ids)
        result: dict[str, Any] = {"purged": done, "ids": ids}
    else:
        store = None if scheme_of(url) == "servicebus" else open_store(url)
        try:
            result = {"redriven": dl.redrive(broker, store, args.queue, ids)}
        finally:
            if store is not None:
                store.close()
    if args.json:
        _print(result)
    else:
        count = result["purged"] if args.dlq_command == "purge" else len(result["redriven"])
        print(f"{count} dead letter(s) {'purged' if args.dlq_command == 'purge' else 'redriven'}")
    return 2 if missing else 0


def run(args: argparse.Namespace) -> int:
    """Run ``nearline dlq ...``; returns the exit status (errors propagate to :func:`nearline.cli.fail`)."""
    url = _broker_url(args)
    broker = open_broker(url)
    try:
        if args.dlq_command == "list":
            return _list(broker, args)
        if args.dlq_command == "show":
            dead = dl.find(broker, args.queue, args.id)
            if dead is None:
                raise JobNotFound(f"{args.id}: no such dead letter in {args.queue}")
            _print(dl.detail(dead))
            return 0
        return _act(broker, url, args)
    finally:
        broker.close()
