"""Metrics, request ids and log formatting shared by every layer.

Metrics are Prometheus (``prometheus-client``). With several worker processes
(``llamahost serve --workers N``) the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before
anything imports prometheus-client, so every process writes its samples there and
``/metrics`` in any worker reports the sum over all of them.

Label values are always configured names (model ids, replica URLs), never strings a
client sent, so a client cannot blow up the number of series.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# The current request's id; set by the request middleware, read by log records.
request_id_var: ContextVar[str | None] = ContextVar("llamahost_request_id", default=None)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@dataclass(frozen=True)
class UserLogging:
    """How request logs name the end user a request's ``user`` field names
    (``[server] log_users``): ``plain`` as sent; ``hashed`` as ``h:`` and a keyed hash
    (the key is the deployment's, ``Keyring.log_user_hash``: the same user gets the same
    label on every process and every day, so one user's requests can still be followed,
    and ``llamahost log-user USER`` tells which label is whose); ``off``: not at all.
    Team names are logged as they are."""

    mode: Literal["plain", "hashed", "off"] = "off"
    hash_user: Callable[[str], str] | None = None

    def label(self, user: str | None) -> str | None:
        if user is None or self.mode == "plain":
            return user
        if self.mode == "hashed" and self.hash_user is not None:
            return "h:" + self.hash_user(user)
        return None

    def text(self, user: str | None) -> str:
        """The `` user=...`` part of a text log line ("" when off)."""
        return "" if self.mode == "off" else f" user={self.label(user)}"

    def fields(self, user: str | None) -> dict[str, str | None]:
        """The ``user`` field of a JSON log line (none when off)."""
        return {} if self.mode == "off" else {"user": self.label(user)}

REQUESTS = Counter(
    "llamahost_chat_requests",
    "Chat completion requests by model and status: an HTTP status code for requests refused "
    "before generating, 'ok' when completed, 'error' when failed after starting, 'cancelled' "
    "when the client went away.",
    ["model", "status"],
)
PROMPT_TOKENS = Counter("llamahost_prompt_tokens", "Prompt tokens of finished completions", ["model"])
COMPLETION_TOKENS = Counter("llamahost_completion_tokens", "Completion tokens generated", ["model"])
TIME_TO_FIRST_TOKEN = Histogram(
    "llamahost_time_to_first_token_seconds",
    "From the request reaching the chat service to the first generated text or tool call",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
INTER_TOKEN_LATENCY = Histogram(
    "llamahost_inter_token_latency_seconds",
    "Time between two consecutive pieces of generated output of one completion",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5),
)
REQUEST_DURATION = Histogram(
    "llamahost_request_duration_seconds",
    "End-to-end time of a chat completion, from admission to its last event",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
IN_FLIGHT = Gauge(
    "llamahost_requests_in_flight", "Chat completions being generated or waiting", ["model"], multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "llamahost_queue_depth",
    "Requests waiting for a busy embedded engine (upstream engines queue on the upstream side)",
    ["model"],
    multiprocess_mode="livesum",
)
PREFIX_CACHE_TOKENS = Counter(
    "llamahost_prefix_cache_tokens",
    "Prompt tokens the embedded engine took from a slot's KV cache (a shared prefix) instead of computing",
    ["model"],
)
ADAPTER_RELOADS = Histogram(
    "llamahost_adapter_reload_seconds",
    "Embedded engine reloads that added tuned models' LoRA adapters: from fetching the "
    "adapters to the new llama.cpp server taking requests",
    ["model"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
ENGINE_SERVERS = Gauge(
    "llamahost_engine_servers",
    "llama.cpp servers an embedded model runs: 1, or 2 while a replaced one finishes its requests after a reload",
    ["model"],
    multiprocess_mode="livesum",
)
RATE_LIMIT_REJECTIONS = Counter(
    "llamahost_rate_limit_rejections", "Requests refused with 429 by a rate limit, by the limit that refused them", ["limit"]
)
REPLICA_HEALTHY = Gauge(
    "llamahost_upstream_replica_healthy",
    "1 while an upstream replica takes traffic, 0 while it is ejected",
    ["model", "replica"],
    multiprocess_mode="livemin",
)
REPLICA_OUTSTANDING = Gauge(
    "llamahost_upstream_replica_outstanding",
    "Requests in flight to an upstream replica",
    ["model", "replica"],
    multiprocess_mode="livesum",
)
UPSTREAM_ATTEMPTS = Counter(
    "llamahost_upstream_attempts",
    "Requests sent to upstream replicas by outcome: ok, retried (failed before streaming, "
    "tried elsewhere), failed (after streaming), cancelled, error (an upstream error not worth retrying)",
    ["model", "replica", "outcome"],
)

MODERATION_CASCADE = Counter(
    "llamahost_moderation_cascade_decisions",
    "Messages a cascade moderation model judged, by who decided: 'builtin' (P(unsafe) outside "
    "the band) or 'escalated' (inside it: the Llama Guard model decided). The share escalated "
    "is escalated / (builtin + escalated).",
    ["model", "decided_by"],
)
MODERATION_ESCALATION_SECONDS = Histogram(
    "llamahost_moderation_cascade_escalation_seconds",
    "The latency an escalation adds to a cascade moderation call: the Llama Guard model's "
    "call alone (the builtin model's pass before it is paid by every call)",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def process_exiting() -> None:
    """Drop this process's live gauges from the multiprocess files when it stops."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())


def metrics_payload() -> tuple[bytes, str]:
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- logs ------------------------------------------------------------------------

# LogRecord attributes that are not "extra" fields a caller added.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id", "color_message"}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any
    ``extra=`` fields the call passed (the request log passes status, latency, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{line} request_id={rid}" if rid else line


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every upstream request and health check at info: one line per call is
    # the request log's job, not the client library's.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
