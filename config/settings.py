"""mlworker settings: defaults in code, overridden by ``MLWORKER_*`` environment variables.

Every field is documented in the README's configuration table; ``mlworker config`` prints
the effective values (secrets redacted).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _xdg(var: str, fallback: str) -> Path:
    """An XDG base directory (``$XDG_STATE_HOME`` etc.) with the usual fallback under ``~``."""
    return Path(os.environ.get(var) or Path.home() / fallback) / "mlworker"


class Settings(BaseSettings):
    """Everything a worker, the CLI and the client read. Env prefix ``MLWORKER_``."""

    model_config = SettingsConfigDict(env_prefix="MLWORKER_", env_file=None, extra="ignore")

    # --- broker and results -------------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None,
        description="Broker and result backend URL (redis:// or rediss://, password allowed). "
        "Unset: `mlworker up` starts a private redis-server on localhost (password, AOF, the "
        "last port when free) that the other commands find by themselves.",
    )
    redis_password: SecretStr | None = Field(
        None,
        description="Password for a redis_url / result_url that holds none, URL-encoded into "
        "it here: any character (`@`, `/`, `:`, `%`) is safe, unlike a password typed into a "
        "URL. Compose and Kubernetes pass the Redis password this way.",
    )
    result_url: SecretStr | None = Field(
        None, description="Result backend URL when it differs from redis_url."
    )
    result_expires_s: int = Field(7 * 24 * 3600, description="How long results stay in Redis.")
    embedded_redis_fsync: Literal["always", "everysec"] = Field(
        "always",
        description="fsync policy of the append-only file of the redis-server that `mlworker "
        "up` starts: always = no acknowledged job or result is lost, even to a power cut "
        "(tag jobs ran about 25% slower than with everysec in our measurement); everysec = "
        "a machine crash may lose the last second or two.",
    )
    consume_unrouted: bool = Field(
        True,
        description="Workers also consume Celery's default queue `celery`, where a client "
        "without mlworker's routes sends every task, and pass each job on to its family's "
        "queue (an unknown task fails as InvalidInput). Turn off only when another Celery app "
        "on this Redis uses that queue.",
    )
    visibility_timeout_s: int = Field(
        7200,
        description="Redis visibility timeout: an unacked job is redelivered after this long. "
        "Must exceed the longest hard time limit.",
    )

    # --- paths --------------------------------------------------------------------------
    input_root: Path = Field(
        default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "input",
        description="The only directory audio_path / data_path may point into.",
    )
    input_urls: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Object-storage prefixes audio_path / data_path may also name, "
        "comma-separated (`s3://media-in/uploads/`); a prefix ends at a `/`, so "
        "`s3://b/uploads` does not admit `s3://b/uploadsX/`. Empty: no URLs. Credentials and "
        "endpoint come from the standard AWS settings (`AWS_ENDPOINT_URL`, keys, an IAM role).",
    )
    output_root: Path | str = Field(
        default_factory=lambda: _xdg("XDG_DATA_HOME", ".local/share") / "output",
        description="Where AutoML model artifacts and large prediction CSVs are written: a "
        "local directory, or `s3://bucket/prefix` (uploaded once complete, sha256 in the "
        "object's metadata) so any worker can predict with any model.",
    )
    state_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_STATE_HOME", ".local/state"),
        description="The embedded redis-server of `mlworker up`: its data (AOF) in redis/, "
        "its password (0600, made at the first start) and the URL marker; kept 0700.",
    )
    model_cache_dir: Path = Field(
        default_factory=lambda: _xdg("XDG_CACHE_HOME", ".cache") / "models",
        description="Joined bundled models and exported ONNX models.",
    )

    # --- worker processes -----------------------------------------------------------------
    concurrency: int = Field(1, ge=1, description="Child processes per worker.")
    threads_per_child: int = Field(
        0, ge=0, description="torch/ctranslate2 threads per child; 0 = cores // concurrency."
    )
    preload: bool = Field(
        True, description="Load models at child start (worker_process_init); false = lazy."
    )
    proc_alive_timeout_s: float = Field(
        300.0, description="How long a child may take to start (model loads included)."
    )
    max_memory_per_child_mb: int = Field(
        0,
        ge=0,
        description="Recycle a child after a job when its RSS exceeds this; "
        "0 = at memory_hard_rss_mb.",
    )
    gc_every_n_jobs: int = Field(
        200,
        ge=1,
        description="gc + framework cache cleanup every this many jobs, checked once per batch "
        "(at 50 a full gc ran every tag batch and took 11% of the worker's time).",
    )
    max_deliveries: int = Field(
        3, ge=1, description="Deliveries before a job goes to the dead-letter queue."
    )
    shutdown_grace_s: float = Field(
        60.0, description="SIGTERM: time for a running job or batch to finish."
    )
    extra_families: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Job families beyond the built-in ones: comma-separated "
        "'package.module:FAMILY' paths to FamilySpec objects (see README, Adding a job family).",
    )
    test_hooks: bool = Field(
        False,
        description="Honour test-only kwargs (``_test_kill_child``: the child SIGKILLs itself; "
        "``_test_memory_error``: a real MemoryError in normal mode); for tests only, never in "
        "production.",
    )

    # --- memory guard ---------------------------------------------------------------------
    memory_soft_available_mb: int = Field(
        1024, description="Below this much available system memory: lightweight mode."
    )
    memory_hard_available_mb: int = Field(
        256, description="Below this much available system memory: do not start the job."
    )
    memory_soft_rss_mb: int = Field(
        3072, description="Child RSS above this: lightweight mode / smaller batches."
    )
    memory_hard_rss_mb: int = Field(
        6144, description="Child RSS above this: do not start; requeue and recycle the child."
    )
    memory_refusal_countdown_s: float = Field(
        30.0, gt=0, description="A job refused by the hard threshold is requeued this much later."
    )
    memory_refusal_max_retries: int = Field(
        120, ge=0, description="Refusals in a row before the job fails with InsufficientMemory."
    )

    # --- input limits ---------------------------------------------------------------------
    max_b64_bytes: int = Field(
        8 * 1024 * 1024, description="Largest decoded audio_b64 payload accepted."
    )
    max_text_chars: int = Field(100_000, description="Largest text accepted by extract_tags.")
    max_url_input_bytes: int = Field(
        1 << 30,
        ge=1,
        description="Largest object an input URL (audio_path, data_path, model_path) may name; "
        "checked from its size before downloading and counted while it is copied to a "
        "temporary file under TMPDIR (removed after the job).",
    )

    # --- transcription --------------------------------------------------------------------
    whisper_model: str = Field(
        "bundled:whisper-base",
        description="faster-whisper model: 'bundled:whisper-base', a local CTranslate2 dir, "
        "or a hub size/name such as 'small' (needs a reachable hub).",
    )
    whisper_lightweight_model: str | None = Field(
        None, description="Smaller model used by lightweight mode, if any."
    )
    whisper_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Inference device.")
    whisper_compute_type: str = Field(
        "auto", description="CTranslate2 compute type; auto = int8 on CPU, float16 on CUDA."
    )
    whisper_max_wer_delta: float = Field(
        0.05,
        ge=0,
        description="`mlworker models verify whisper` refuses a compute type whose WER on the "
        "speech fixtures exceeds float32's by more than this.",
    )
    whisper_beam_size: int = Field(5, ge=1, description="Default beam size.")
    whisper_min_duration_s: float = Field(0.0, ge=0, description="Shorter audio is rejected.")
    whisper_max_duration_s: float = Field(1800.0, gt=0, description="Longest audio accepted.")
    whisper_over_max: Literal["trim", "reject"] = Field(
        "reject", description="Audio over the maximum: trim to it or reject the job."
    )
    transcribe_batch_size: int = Field(16, ge=1, description="Short clips grouped per flush.")
    transcribe_flush_interval_s: float = Field(
        0.5, gt=0, description="Longest a buffered clip waits for batch-mates."
    )
    transcribe_time_limit_s: int = Field(1800, description="Hard time limit per transcribe job.")
    transcribe_fanout_after_s: float = Field(
        600.0,
        ge=0,
        description="A recording (audio_path) longer than this is split at silences into "
        "chunks that run as their own jobs on any transcribe worker and are stitched under "
        "the job's id; 0 = never.",
    )
    transcribe_fanout_chunk_s: float = Field(
        60.0, ge=5, description="Length a fanned-out recording's chunks aim at (seconds)."
    )
    whisper_batched: Literal["auto", "on", "off"] = Field(
        "auto",
        description="faster-whisper's BatchedInferencePipeline for audio over 30 s and for "
        "short clips grouped into one call; auto = long audio batched on CUDA only (on CPU "
        "plain decoding was as fast and is the accuracy reference: python -m "
        "bench.speech_quality), short clips grouped on every device; off = neither.",
    )
    whisper_batched_chunks: int = Field(
        8, ge=1, description="30 s chunks per BatchedInferencePipeline call (long audio)."
    )
    # --- tags -----------------------------------------------------------------------------
    embedder_model: str = Field(
        "bundled:all-MiniLM-L6-v2",
        description="sentence-transformers model: 'bundled:all-MiniLM-L6-v2', a local dir, "
        "or a hub name.",
    )
    embedder_backend: Literal["auto", "torch", "torch-fp16", "onnx", "onnx-int8"] = Field(
        "auto",
        description="Embedder backend. auto: onnx-int8 on CPU (exported once into the model "
        "cache if missing; torch FP32 if that fails), torch on a CUDA GPU. torch-fp16 needs "
        "CUDA (on CPU it stays FP32).",
    )
    embedder_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Device.")
    embedder_min_cosine: float = Field(
        0.98,
        ge=0,
        le=1,
        description="An exported ONNX/INT8 embedder whose lowest cosine similarity to FP32 on "
        "the fixed sentence set is below this is refused (`mlworker models verify`).",
    )
    embedder_min_tag_agreement: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Likewise for the share of FP32's top-k tags the exported model agrees on.",
    )
    embedder_verify_top_k: int = Field(5, ge=1, description="k of the tag agreement check.")
    batch_idle_flush_s: float = Field(
        0.05,
        ge=0,
        description="Batched tasks flush a partial buffer once no request has arrived for this "
        "long: a lone job starts at once, a burst keeps filling (the flush interval caps the "
        "wait). 0 = flush on the interval timer only (a lone 35 s clip then took 1.06x direct).",
    )
    batch_prefetch: int = Field(
        2,
        ge=1,
        description="Batches a child of a batched queue reserves (its prefetch). 2: the next "
        "batch is buffered while one runs; an urgent job behind a backlog finished in 1.35 "
        "batches' time (p50). 1: 0.92 batches, at 0.94x the docs/s (bench.priority).",
    )
    tags_batch_size: int = Field(64, ge=1, description="Documents grouped per flush.")
    tags_flush_interval_s: float = Field(
        0.2, gt=0, description="Longest a buffered document waits for batch-mates."
    )
    tags_time_limit_s: int = Field(300, description="Hard time limit per tag batch.")
    tags_vector_cache_mb: int = Field(
        32,
        ge=0,
        description="Candidate-phrase vectors a tags child keeps (least recently used dropped "
        "past this size): a phrase seen before is not embedded again, with identical results. "
        "0 = no cache.",
    )

    # --- automl ---------------------------------------------------------------------------
    automl_memory_budget_mb: int = Field(
        4096, ge=64, description="Memory an AutoML job may add to the RSS it starts at."
    )
    automl_n_jobs: int = Field(1, ge=1, description="joblib workers for model search.")
    automl_time_limit_s: int = Field(3600, description="Hard time limit per AutoML job.")
    automl_address_space_headroom_mb: int = Field(
        0,
        ge=0,
        description="Cap a job's virtual memory (RLIMIT_AS) at its size at job start plus this "
        "many MB, so an over-large plan raises MemoryError (and falls back to lightweight) "
        "instead of meeting the OOM killer; 0 = no cap.",
    )
    automl_max_inline_predictions: int = Field(
        10_000,
        ge=0,
        description="automl_predict returns up to this many predictions inline; more are "
        "written to a CSV under the output root.",
    )

    # --- flower ---------------------------------------------------------------------------
    flower_address: str = Field("127.0.0.1", description="Flower bind address.")
    flower_port: int = Field(5555, description="Flower port.")
    flower_basic_auth: SecretStr | None = Field(
        None, description="'user:password' for Flower; required off loopback."
    )

    # --- operations -----------------------------------------------------------------------
    metrics_address: str = Field("127.0.0.1", description="`mlworker metrics` bind address.")
    metrics_port: int = Field(9808, description="`mlworker metrics` port (Prometheus scrape).")
    metrics_enabled: bool = Field(
        True, description="Workers record job, batch and model-load metrics into Redis."
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Worker log lines: auto = JSON when stderr is not a terminal."
    )

    # --- completion callbacks (worker.webhooks) --------------------------------------------
    #: no default: a callback is only signed with a secret the operator chose
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of the X-Mlworker-Signature header on callbacks."
    )
    #: empty: no host is trusted until the operator names it
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma list of hosts (host or host:port; *.example.com = any sub-domain) "
        "a callback_url may name.",
    )
    #: a receiver should answer at once and work later; 10 s leaves room for a slow TLS hop
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one callback POST.")
    #: 8 attempts at base 2 s span ~4 minutes of receiver downtime
    webhook_max_attempts: int = Field(8, ge=1, description="POSTs before a callback gives up.")
    #: doubled each attempt: 2, 4, 8 ... s
    webhook_backoff_s: float = Field(
        2.0, gt=0, description="Delay before the 2nd callback attempt, doubled after each."
    )

    @field_validator("extra_families", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("input_urls", mode="before")
    @classmethod
    def _url_prefixes(cls, value: object) -> object:
        from worker.storage import normalise_prefix

        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return tuple(str(normalise_prefix(str(part))) for part in value)
        return value

    @field_validator("input_root", "state_dir", "model_cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("output_root", mode="before")
    @classmethod
    def _output_location(cls, value: object) -> object:
        """An ``s3://`` URL stays a (normalised) string; anything else is a local path,
        made absolute exactly as the other directories are."""
        from worker.storage import is_url, normalise_prefix

        if is_url(value):
            url = normalise_prefix(str(value))
            if url.scheme != "s3":
                raise ValueError("only s3:// URLs are supported as the output root")
            return str(url)
        if isinstance(value, str | os.PathLike):
            return Path(value).expanduser().resolve()
        return value

    def broker_url(self) -> str | None:
        """The configured broker URL, or None when an embedded server is to be started."""
        return self._with_password(self.redis_url.get_secret_value()) if self.redis_url else None

    def backend_url(self) -> str | None:
        """The result backend URL (defaults to the broker URL)."""
        if self.result_url:
            return self._with_password(self.result_url.get_secret_value())
        return self.broker_url()

    def _with_password(self, url: str) -> str:
        """``url`` with ``redis_password`` URL-encoded into it when it names no credentials."""
        if self.redis_password is None:
            return url
        parts = urlsplit(url)
        if "@" in parts.netloc:
            return url  # the URL's own credentials win
        secret = quote(self.redis_password.get_secret_value(), safe="")
        return urlunsplit(parts._replace(netloc=f":{secret}@{parts.netloc}"))

    def child_threads(self, concurrency: int | None = None) -> int:
        """Threads one child may use so that all ``concurrency`` children (default: the
        configured count) together fit the cores."""
        if self.threads_per_child:
            return self.threads_per_child
        return max(1, (os.cpu_count() or 1) // (concurrency or self.concurrency))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests call ``get_settings.cache_clear()``)."""
    return Settings()
