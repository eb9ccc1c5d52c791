"""The ``jetty`` command line.

    jetty up                                   run the whole stack in the foreground
    jetty tokens create --collection C [--name N] [--admin] [--scope S]...
                        [--expires-at T] [--allowed-model GLOB]... [--rpm N] [--tpm N]
                        [--budget-usd X [--budget-period total|month]] [--meta K=V]...
    jetty tokens revoke TOKEN
    jetty replay --database-url DSN [...]      rebuild the projection from the stream
    jetty schemas [--out DIR]                  JSON Schemas of the events

Command modules are imported only once a command is chosen: ``--help`` stays
fast, and a Ctrl-C during those imports exits quietly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

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

    # Only listed here: `main` hands replay's arguments to the recorder's own parser.
    sub.add_parser(
        "replay",
        help="rebuild the Postgres projection from the event stream "
        "(jetty replay --database-url DSN; see jetty replay --help)",
        add_help=False,
    )
    return parser


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
        return _load(args.handler)(args)
    except KeyboardInterrupt:
        # Only reachable before a command installs its own handlers (jetty up does).
        print("jetty: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
