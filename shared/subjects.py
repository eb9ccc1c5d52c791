"""Every NATS subject, stream and bucket name is spelled here and nowhere else."""

from __future__ import annotations

import re

EVENTS_STREAM = "JETTY_EVENTS"
EVENTS_PREFIX = "jetty.events"
EVENTS_ALL = EVENTS_PREFIX + ".>"

CHAT_REQUEST = "jetty.chat.request"
CHAT_CANCEL = "jetty.chat.cancel"
MODELS_LIST = "jetty.proxy.models"
PROXY_QUEUE = "jetty-proxies"

MODEL_RESOLVE = "jetty.proxy.resolve"

RECORDER_DURABLE = "jetty-recorder"
TOKENS_BUCKET = "jetty_tokens"
CLAIMS_BUCKET = "jetty_claims"
RUNS_BUCKET = "jetty_runs"
# Keys (shared/keys.py): what each key has used (spend, tokens this minute), and
# each gateway replica's request count per key this minute (shared rate limits).
KEY_USAGE_BUCKET = "jetty_key_usage"
KEY_RATES_BUCKET = "jetty_key_rates"
# The console's sign-in sessions (session id hash -> token hash), with a TTL.
CONSOLE_SESSIONS_BUCKET = "jetty_console_sessions"

# Webhooks (shared/webhooks.py): endpoints, delivery records, and the delivery
# service's durable consumer on the events stream.
WEBHOOKS_BUCKET = "jetty_webhooks"
DELIVERIES_BUCKET = "jetty_webhook_deliveries"
WEBHOOKS_DURABLE = "jetty-webhooks"

# The runner's work queue: a durable pull consumer on the events stream that
# sees only runbook.requested events (every runner instance shares it, so each
# run is taken by one runner at a time).
RUNNER_DURABLE = "jetty-runner"
RUNBOOK_REQUESTED_ALL = EVENTS_PREFIX + ".*.runbook.requested"
# Core NATS: the trajectory id of a run to stop; every runner listens.
RUNBOOK_CANCEL = "jetty.runbook.cancel"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def token(name: str) -> str:
    """Turn a free-form name into one valid subject token (no dots, wildcards or spaces)."""
    cleaned = _UNSAFE.sub("_", name)
    return cleaned or "_"


def event_subject(collection: str, event_type: str) -> str:
    """``jetty.events.<collection>.<type>``; the type keeps its dots (``completion.finished``)."""
    return f"{EVENTS_PREFIX}.{token(collection)}.{event_type}"


def collection_events(collection: str) -> str:
    return f"{EVENTS_PREFIX}.{token(collection)}.>"


def run_progress(collection: str) -> list[str]:
    """The subjects of a collection's runbook progress (status, agent steps,
    artifacts); subscribers filter by trajectory id."""
    prefix = f"{EVENTS_PREFIX}.{token(collection)}"
    return [f"{prefix}.runbook.>", f"{prefix}.artifact.>"]
