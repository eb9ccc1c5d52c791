"""The ``jetty`` command line.

    jetty up                                   run the whole stack in the foreground
    jetty tokens create --collection C [--name N] [--admin] [--scope S]...
                        [--expires-at T] [--allowed-model GLOB]... [--rpm N] [--tpm N]
                        [--budget-usd X [--budget-period total|month]] [--meta K=V]...
    jetty tokens revoke TOKEN
    jetty replay --database-url DSN [...]      rebuild the projection from the stream
    jetty schemas [--out DIR]                  JSON Schemas of the events
    jetty upload FILE... [--collection C]      upload files; prints each file's path
    jetty run --agent A --runbook R.md [...]   run a runbook with live progress
    jetty trajectories ls|show ID|tail ID      read trajectories, follow a running one
    jetty events tail [--since 10m] [--type T] the event stream, one event per line

The client commands (upload, run, trajectories) talk to ``JETTY_URL`` with
``JETTY_API_TOKEN`` (or ``--url``/``--token``; from a checkout, the running
``jetty up`` stack and its development token). Their errors are one line on
stderr and exit code 1.

Command modules are imported only once a command is chosen: ``--help`` stays
fast, and a Ctrl-C during those imports exits quietly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

UP_ENVIRONMENT = (
    "Environment: JETTY_HOME (state, default <checkout>/.jetty), JETTY_HOST and "
    "JETTY_PORT (gateway, default 127.0.0.1:8080), JETTY_NATS_URL / JETTY_DATABASE_URL "
    "(use existing servers instead of the embedded ones), JETTY_BOOTSTRAP_TOKEN, "
    "JETTY_BOOTSTRAP_COLLECTION (default 'default'), OPENAI_API_KEY, OPENAI_BASE_URL."
)


def add_key_arguments(create: argparse.ArgumentParser) -> None:
    """The key's policy (the same fields as the admin API's, docs/operations.md)."""
    create.add_argument(
        "--admin", action="store_true", help="add the 'admin' scope (manage the collection's keys)"
    )
    create.add_argument(
        "--scope",
        action="append",
        choices=("api", "read", "admin"),
        help="a scope of the key (repeatable; default api)",
    )
    create.add_argument("--expires-at", help="RFC 3339 time after which the key is refused")
    create.add_argument(
        "--allowed-model", action="append", metavar="GLOB", help="a model pattern (repeatable)"
    )
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--budget-usd", help="spend limit in US dollars")
    create.add_argument("--budget-period", choices=("total", "month"), default="total")
    create.add_argument(
        "--meta", action="append", metavar="KEY=VALUE", help="a metadata entry (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jetty", description="Jetty Flows: run the embedded stack and manage it."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="run NATS, PostgreSQL and the services in the foreground",
        description=UP_ENVIRONMENT,
    )
    up.set_defaults(handler="jetty_cli.up:run")

    tokens = sub.add_parser("tokens", help="create or revoke API tokens")
    actions = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a token and print it")
    create.add_argument("--collection", required=True, help="the collection the token belongs to")
    create.add_argument("--name", default="", help="a label to recognise the token by")
    add_key_arguments(create)
    create.set_defaults(handler="jetty_cli.tokens_cmd:run_create")
    revoke = actions.add_parser("revoke", help="revoke a token")
    revoke.add_argument("token", help="the token, or - to read it from stdin")
    revoke.set_defaults(handler="jetty_cli.tokens_cmd:run_revoke")

    schemas = sub.add_parser("schemas", help="print or write the JSON Schemas of all events")
    schemas.add_argument("--out", type=Path, default=None, help="directory to write them to")
    schemas.set_defaults(handler="jetty_cli.misc_cmds:run_schemas")

    _client_commands(sub)

    # Only listed here: `main` hands replay's arguments to the recorder's own parser.
    sub.add_parser(
        "replay",
        help="rebuild the Postgres projection from the event stream "
        "(jetty replay --database-url DSN; see jetty replay --help)",
        add_help=False,
    )
    return parser


CLIENT_MODULES = ("jetty_cli.run_cmd:", "jetty_cli.trajectories_cmd:", "jetty_cli.events_cmd:")


def add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="the gateway (default $JETTY_URL)")
    parser.add_argument("--token", default=None, help="API token (default $JETTY_API_TOKEN)")


def _client_commands(sub: Any) -> None:
    upload = sub.add_parser("upload", help="upload files for runbooks; prints their paths")
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    upload.add_argument("--collection", default=None, help="default: the token's collection")
    upload.add_argument("--json", action="store_true", help="print each upload's record as JSON")
    add_target_options(upload)
    upload.set_defaults(handler="jetty_cli.run_cmd:run_upload")

    run = sub.add_parser(
        "run",
        help="run a runbook: upload its files, show its progress, download its artifacts",
        description="Exit code 0 when the run completed, 1 otherwise; Ctrl-C asks "
        "whether to cancel the run.",
    )
    run.add_argument("prompt", nargs="?", default=None, help="the task (the user message)")
    run.add_argument("--agent", required=True, help="claude-code, codex or gemini-cli")
    run.add_argument("--runbook", required=True, type=Path, help="the runbook (Markdown)")
    run.add_argument("--file", action="append", type=Path, default=[], help="a file to upload")
    run.add_argument("--model", default="claude-sonnet-4-6", help="the model the agent uses")
    run.add_argument("--task", default="cli", help="the task the run is filed under")
    run.add_argument("--collection", default=None, help="default: the token's collection")
    run.add_argument("--timeout", type=int, default=None, help="the agent's limit in seconds")
    run.add_argument(
        "--out", type=Path, default=None, help="artifacts folder (default jetty-runs/<id>)"
    )
    run.add_argument("--json", action="store_true", help="print the final result as JSON")
    add_target_options(run)
    run.set_defaults(handler="jetty_cli.run_cmd:run_run")

    trajectories = sub.add_parser("trajectories", help="list, show or follow trajectories")
    actions = trajectories.add_subparsers(dest="trajectories_command", required=True)
    ls = actions.add_parser("ls", help="the collection's trajectories, newest first")
    ls.add_argument("--task")
    ls.add_argument("--status", choices=("pending", "running", "completed", "failed", "cancelled"))
    ls.add_argument("--model")
    ls.add_argument("--since", help="ISO 8601 or epoch seconds")
    ls.add_argument("--limit", type=int, default=20)
    ls.set_defaults(handler="jetty_cli.trajectories_cmd:run_ls")
    show = actions.add_parser("show", help="one trajectory with its steps")
    show.set_defaults(handler="jetty_cli.trajectories_cmd:run_show")
    tail = actions.add_parser("tail", help="follow a runbook run to its end")
    tail.set_defaults(handler="jetty_cli.trajectories_cmd:run_tail")
    for command in (show, tail):
        command.add_argument("trajectory_id", metavar="ID")
    for command in (ls, show, tail):
        command.add_argument("--json", action="store_true", help="print JSON")
        add_target_options(command)

    events = sub.add_parser("events", help="read the event stream (NATS)")
    event_actions = events.add_subparsers(dest="events_command", required=True)
    etail = event_actions.add_parser("tail", help="print events as they happen")
    etail.add_argument("--since", help="start this far back (10m, 2h, 1d) or at an ISO time")
    etail.add_argument("--type", help="completion.failed, runbook.*, ...")
    etail.add_argument("--collection")
    etail.add_argument("--limit", type=int, default=0, help="stop after this many events")
    etail.add_argument(
        "--no-follow", action="store_true", help="stop at the newest event (with --since)"
    )
    etail.add_argument("--nats", default=None, help="NATS URL (default $JETTY_NATS_URL)")
    etail.add_argument("--json", action="store_true", help="JSON lines (the envelopes)")
    etail.set_defaults(handler="jetty_cli.events_cmd:run_tail")


def _load(handler: str) -> Callable[[argparse.Namespace], int]:
    module, _, name = handler.partition(":")
    func: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    return func


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        if args_list[:1] == ["replay"]:
            from jetty_cli.misc_cmds import replay

            return replay(args_list[1:])
        args = build_parser().parse_args(args_list)
        handler = _load(args.handler)
    except KeyboardInterrupt:
        print("jetty: interrupted", file=sys.stderr)
        return 130
    from jetty_cli.client import CliError

    try:
        return handler(args)
    except CliError as exc:
        print(f"jetty: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:
        if not args.handler.startswith(CLIENT_MODULES):
            raise
        # The client commands promise one line, never a traceback.
        print(f"jetty: unexpected {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # Only reachable before a command installs its own handlers (jetty up does).
        print("jetty: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
