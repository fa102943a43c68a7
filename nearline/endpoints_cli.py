"""``nearline endpoints show|traffic``: an endpoint's deployments and live split, over HTTP.

``show [NAME]`` prints each endpoint's deployments (models, traffic, mirror) and its recent
split changes; ``traffic NAME blue=90 green=10 [--mirror green=10] [--reason TEXT]`` changes the
split (an admin key: ``--key`` or ``NEARLINE_KEY``) and prints the endpoint as it now is. The
server is ``--url`` or ``NEARLINE_URL``. Exit status as the other client commands
(:mod:`nearline.client_cli`): 0 done; 2 a usage error or a request the server refused (a broken
rule, a key that is not an admin key); 3 the server unreachable or failing.

Subcommands are rows of :data:`SUBCOMMANDS` (``rollout`` is added there).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nearline import rollout
from nearline.client_cli import UsageError, _client, _print_json, _reporting
from nearline.settings import ClientSettings, add_flags

Command = Callable[[argparse.Namespace], int]
#: History entries ``show`` prints per endpoint (the server keeps the last 50).
SHOWN_HISTORY = 5


@dataclass(frozen=True)
class Subcommand:
    """One ``nearline endpoints`` command: its name, help, own arguments and what runs it."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Command


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``endpoints`` and each of :data:`SUBCOMMANDS` to ``nearline``'s parser."""
    e = sub.add_parser("endpoints", help="show endpoints and change their traffic split")
    esub = e.add_subparsers(dest="endpoints_command", required=True)
    client = ClientSettings.from_env()
    for command in SUBCOMMANDS:
        p = esub.add_parser(command.name, help=command.help)
        command.arguments(p)
        add_flags(p, client)
        p.set_defaults(func=command.run)


# --- show -----------------------------------------------------------------------------------


def _show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="one endpoint (default: every endpoint)")
    p.add_argument("--json", action="store_true", help="print the endpoint documents as JSON")


@_reporting
def cmd_show(args: argparse.Namespace) -> int:
    """``nearline endpoints show [NAME] [--json]``."""
    with _client(args) as client:
        docs = [client.endpoint(args.name)] if args.name else client.endpoints()
    if args.json:
        _print_json(docs[0] if args.name else docs)
    else:
        print("\n\n".join(endpoint_text(doc) for doc in docs))
    return 0


def endpoint_text(doc: dict[str, Any], history: int = SHOWN_HISTORY) -> str:
    """An endpoint document as a table of its deployments, then its last ``history`` changes."""
    rows = [("DEPLOYMENT", "TRAFFIC", "MIRROR", "MODELS")]
    for d in doc.get("deployments", []):
        models = ", ".join(f"{m['model']}:{m['version']}" for m in d.get("models", [])) or "-"
        mirror = f"{d['mirror']}%" if d.get("mirror") else "-"
        rows.append((str(d["name"]), f"{d.get('traffic', 0)}%", mirror, models))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"endpoint {doc.get('name')}"]
    lines += [f"  {a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {m}" for a, b, c, m in rows]
    changes = doc.get("history") or []
    if changes:
        lines.append(f"  changes (newest first, {min(len(changes), history)} of {len(changes)}):")
    for change in changes[:history]:
        reason = f"  {json.dumps(change['reason'], ensure_ascii=False)}" if change.get("reason") else ""
        mirror = f"  mirror {_pairs(change['mirror'])}" if change.get("mirror") else ""
        lines.append(f"    {change['at']}  {_pairs(change['traffic'])}{mirror}{reason}")
    return "\n".join(lines)


def _pairs(split: dict[str, int]) -> str:
    return " ".join(f"{name}={weight}" for name, weight in split.items())


# --- traffic --------------------------------------------------------------------------------


def _traffic_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the endpoint")
    p.add_argument("weights", nargs="+", metavar="DEPLOYMENT=PERCENT", help="e.g. blue=90 green=10")
    p.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="DEPLOYMENT=PERCENT",
        help="also copy this share of requests to a deployment at 0 (repeatable; default: none)",
    )
    p.add_argument("--reason", default="", help="why, kept in the endpoint's history")


@_reporting
def cmd_traffic(args: argparse.Namespace) -> int:
    """``nearline endpoints traffic NAME d=P ... [--mirror d=P] [--reason TEXT]``."""
    traffic = parse_pairs(args.weights, "traffic")
    mirror = parse_pairs([p for item in args.mirror for p in item.split(",") if p], "--mirror")
    with _client(args) as client:
        doc = client.set_traffic(args.name, traffic, mirror=mirror, reason=args.reason)
    print(endpoint_text(doc))
    return 0


def parse_pairs(items: list[str], what: str) -> dict[str, int]:
    """``["blue=90", "green=10"]`` → ``{"blue": 90, "green": 10}``; UsageError naming a bad one.

    The server checks the rules (sums, names); this only reads the form.
    """
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.strip().lstrip("-").isdigit():
            raise UsageError(f"{what}: {item!r} is not DEPLOYMENT=PERCENT (e.g. green=10)")
        if name in out:
            raise UsageError(f"{what}: {name} is given twice")
        out[name] = int(value)
    return out


#: ``nearline endpoints`` commands, in help order; a new one is a row here.
SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "show", "an endpoint's deployments, models, live split and recent changes", _show_arguments, cmd_show
    ),
    Subcommand(
        "traffic",
        "change an endpoint's traffic split and mirror (an admin key)",
        _traffic_arguments,
        cmd_traffic,
    ),
    Subcommand(
        "rollout",
        "move an endpoint's traffic to a deployment step by step, behind gates (an admin key)",
        rollout.arguments,
        rollout.cmd_rollout,
    ),
]
