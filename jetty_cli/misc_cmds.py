"""``jetty schemas`` and ``jetty replay``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from jetty_cli.home import Home
from jetty_cli.tokens_cmd import nats_for_cli


def event_schemas() -> dict[str, dict[str, Any]]:
    """The envelope's JSON Schema plus one per event type (keyed by type name)."""
    from shared.events.envelope import Envelope
    from shared.events.registry import json_schemas

    return {"envelope": Envelope.model_json_schema(), **json_schemas()}


def run_schemas(args: argparse.Namespace) -> int:
    schemas = event_schemas()
    if args.out is None:
        json.dump(schemas, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas.items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(path)
    return 0


def replay(argv: list[str]) -> int:
    """Delegate to the recorder's replay tool, pointing it at the embedded NATS
    (running stack or a temporary server) unless ``JETTY_NATS_URL`` is set."""
    from services.recorder.replay import main as replay_main

    explicit = any(a == "--nats-url" or a.startswith("--nats-url=") for a in argv)
    if explicit or any(a in ("-h", "--help") for a in argv):
        result = replay_main(argv)
        return result if isinstance(result, int) else 0
    with nats_for_cli(Home()) as (url, _gateway):
        os.environ["JETTY_NATS_URL"] = url
        result = replay_main(argv)
    return result if isinstance(result, int) else 0
