"""Service settings: one ``Settings`` object, read once at start-up.

Every field can be set by an environment variable named ``PETE_`` + the field name in upper case
(``PETE_MAX_BATCH_SIZE=64``); keyword arguments to ``Settings(...)`` win over the environment. Units are in the
field names or descriptions: ``_ms`` milliseconds, ``_s`` seconds, ``_bytes`` bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.batching import reserve

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "model" / "checkpoints" / "default"


class Settings(BaseSettings):
    """All knobs of the service. Invalid values raise ``pydantic.ValidationError`` at start-up."""

    model_config = SettingsConfigDict(env_prefix="PETE_", extra="ignore",
                                      protected_namespaces=())

    # ---- model ----------------------------------------------------------------------------
    model_path: Path = Field(
        DEFAULT_MODEL_PATH,
        description="Checkpoint directory holding config.json, model.safetensors and tokenizer.json "
                    "(written by SentenceEncoder.save_pretrained).")
    model_name: str | None = Field(
        None, description="Name reported as `model` in responses and /info; default: the checkpoint "
                          "directory's name.")
    materialize_embeddings: bool = Field(
        False, description="Precompute the PETE embedding table at load (V*d*4 more bytes); ignored for "
                           "embedding kinds without one. Off by default: bench/results/serving.md measured "
                           "no speed-up (the MLP runs once per distinct id of a batch) and ~75 MB more RSS.")
    backend: Literal["torch", "onnx"] = Field(
        "torch", description="`torch`: the PyTorch runner (app/inference.py). `onnx`: ONNX Runtime "
                             "(app/onnx_runner.py; no torch imported), serving the graphs `pete-export CHECKPOINT` "
                             "writes beside the checkpoint; PETE_QUANTIZE picks its float32 or int8 encoder graph, "
                             "PETE_MATERIALIZE_EMBEDDINGS does not apply (the export holds the embedding table), "
                             "PETE_TORCH_THREADS sets its intra-op threads.")
    quantize: Literal["auto", "none", "int8"] = Field(
        "auto", description="`int8`: the encoder's linear layers run as int8 (per-channel weights, "
                            "per-token activations: model/quantize.py, SentenceEncoder.quantize) from load on; "
                            "answers independent of batch-mates, STS-B test within 0.5 Spearman points "
                            "(model/checkpoints/default/int8/REPORT.md); faster only on CPUs with int8 "
                            "dot-product instructions (AVX512-VNNI, AMX), many times slower on AVX2-only "
                            "ones. `none`: serve float32. `auto`: int8 where a start-up measurement on the "
                            "model's layer shape finds it faster (model.quantize.resolve_quantization), "
                            "else float32; /info says which. With PETE_BACKEND=onnx: the same scheme in "
                            "pete-export's model_int8.onnx (model/onnx_int8.py), `auto` timing both graphs "
                            "on probe batches at load. With several workers pete-serve resolves `auto` once, before "
                            "starting them, so that all serve the same weights (app.cli.shared_quantization).")
    torch_threads: int = Field(
        1, ge=0, description="torch intra-op threads per worker; 0 keeps torch's default (one per core). 1 "
                             "measured best (bench/results/torch_threads: the event loop needs a core of its "
                             "own); use more cores through PETE_WORKERS.")

    # ---- batching -------------------------------------------------------------------------
    max_batch_size: int = Field(
        32, ge=1, description="Most work items (texts to embed, or NLI pairs) gathered into one batch, "
                              "and most sequences in one encoder forward pass.")
    max_batch_tokens: int = Field(
        1024, ge=1, description="Most padded tokens (rows x longest row) in one encoder forward pass; a "
                                "batch is sorted by length and split into passes that respect it. Bounds the "
                                "activation memory of a pass, and with it the peak RSS, which the warm-up's "
                                "worst-case batch sets (ONNX int8 service: 2048 -> 1024 took it from 321 to 219 "
                                "MiB; 8192 raised the torch service's by ~70 MB). A pair's or a full batch of "
                                "short sentences' pass is far smaller: single-pair throughput did not change "
                                "measurably (bench/results/memory/README.md).")
    max_padding: float | None = Field(
        None, gt=0, le=1, description="Most padding, as a fraction of a forward pass's tokens (rows x "
                                      "longest row), before a length-sorted batch is split into another pass: "
                                      "mixed-length batches otherwise spend most of their attention (and, on ONNX "
                                      "Runtime, all their compute) on padding. Unset: the backend's measured best "
                                      "(bench/results/padding/padding.md: onnx 0.2, over twice the sentences/s "
                                      "of no split; torch 1, i.e. no split: its packed encoder wastes padding only "
                                      "in attention, and splitting did not pay).")
    max_wait_ms: float = Field(
        0.0, ge=0, description="0 (default): continuous batching: when the model is free the batcher takes "
                               "what is queued (up to the batch limits) and runs it at once, and work arriving "
                               "during a forward pass gathers in the queue for the next one. A positive value "
                               "makes an idle model wait up to this many milliseconds for more work after a "
                               "batch's first item (bigger batches at low load, for that much latency).")
    retry_after_s: int = Field(
        1, ge=1, description="Seconds in the Retry-After header of every 429 (queue full) and 503 (loading, "
                             "draining) answer, /readyz's included.")
    queue_capacity: int = Field(
        768, ge=1, description="Most work items waiting in the queue (a similarity pair counts 2, an NLI "
                               "pair or an embedding input 1); a request that does not fit gets 429. Room for 5 "
                               "requests of 128 items beside a reserve of 1/8 for smaller ones, so clients sending "
                               "the largest requests wait in the queue instead of spinning on 429s "
                               "(reliability/attacks.py: 512 let six such clients slow a single-pair client 5-11x), "
                               "and about 0.5 s of short-text work on 2 cores, so the backlog an overload leaves "
                               "drains within a second (reliability/overload.py; 1024 took 1.06 s).")
    queue_capacity_tokens: int = Field(
        131_072, ge=1, description="Most estimated tokens waiting in the queue (each text charged its estimated "
                                  "token count, at most max_tokens_per_text): expensive requests fill it before "
                                  "cheap ones fill queue_capacity, so load shedding (429) sees cost, not only "
                                  "count. 7/8 of it at least 2 * max_items_per_request * max_tokens_per_text (the last "
                                  "1/8 is kept for requests smaller than that 1/8); "
                                  "the default, 8 such requests, is ~15 s of worst-case work, within request_timeout_s: "
                                  "queued clients wait instead of spinning on 429s.")
    batch_token_budget: int = Field(
        1024, ge=1, description="Most a batch may cost, in token-equivalents: n texts padded to the longest one's "
                                "estimated tokens T cost n * T * (1 + T / 128) (app.batching.pass_cost; a batch "
                                "always takes at least one item). The shortest requests go first, so a short request "
                                "rides in the next batch; the default lets a full batch of texts of up to 26 tokens "
                                "or four 128-token texts (~60 ms) into a pass, and short texts run beside such a pass "
                                "in the fast lane (fast_lane_tokens). 480 (two long texts a pass) cost 8-10% of "
                                "short-request throughput for no gain under attack (reliability/attacks.py).")
    fast_lane_tokens: int = Field(
        32, ge=0, description="While a pass holding a text of more estimated tokens than this runs, batches of "
                              "texts of at most this many run beside it on a second inference thread, so short "
                              "requests do not wait for long ones (reliability/attacks.py: a single-pair client "
                              "beside 6 clients sending 64 texts of 10,000 characters); 0: one pass at a time.")

    # ---- request limits ---------------------------------------------------------------------
    max_items_per_request: int = Field(
        64, ge=1, validation_alias=AliasChoices("max_items_per_request", "PETE_MAX_ITEMS_PER_REQUEST",
                                                "PETE_MAX_PAIRS_PER_REQUEST"),
        description="Most items in one request: pairs in /similarity or /nli, inputs in /embeddings; more "
                    "gets 413. (PETE_MAX_PAIRS_PER_REQUEST, its former name, is still read.)")
    max_chars_per_text: int = Field(
        10_000, ge=1, description="Longest text, in characters; a longer one gets 422 naming the field.")
    max_tokens_per_text: int = Field(
        128, ge=3, description="Token limit per encoded sequence, special tokens included (capped by the "
                               "model's max_len); longer texts (or NLI pairs with the cross head) are "
                               "truncated and flagged `truncated`, never rejected.")
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest request body, in bytes; checked on Content-Length and on the "
                                     "bytes actually received; more gets 413.")
    body_timeout_s: float = Field(
        10.0, gt=0, description="Longest time, in seconds, to receive a request's whole body once the service "
                                "starts reading it; a slower upload (or `Expect: 100-continue` with no body) gets "
                                "408 and its connection is closed. Bounds what a slow client holds, and so the "
                                "graceful shutdown of every entry point: it must be less than shutdown_timeout_s.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest time, in seconds, a request may wait for its results (queue + "
                                "inference); past it the request gets 504.")
    api_key: SecretStr | None = Field(
        None, description="When set, POST endpoints require `Authorization: Bearer <key>` or "
                          "`X-API-Key: <key>` (401 otherwise). /healthz, /readyz, /info, /metrics stay open.")

    # ---- server -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `pete-serve` binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port `pete-serve` listens on.")
    workers: int = Field(1, ge=1, description="Worker processes, each with its own model copy and batcher; "
                                              "pete-serve merges their /metrics. For N cores: N workers with "
                                              "PETE_TORCH_THREADS=1 (bench/results/workers).")
    shutdown_timeout_s: float = Field(
        20.0, gt=0, description="On shutdown, longest time, in seconds, that pete-serve waits for open "
                                "requests (uvicorn's graceful timeout) and the batcher's accepted work; "
                                "keep it below the deploy's grace period minus its preStop delay (Kubernetes: "
                                "30 - 5 s, tests/test_deploy_k8s.py checks the margin) and above body_timeout_s "
                                "(slow uploads get their 408 first; reliability/faults.py).")
    log_level: str = Field("info", description="uvicorn log level (critical, error, warning, info, debug).")

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value() else None

    @property
    def max_request_cost(self) -> int:
        """The most estimated tokens one request can cost: max_items_per_request pairs of two texts of
        max_tokens_per_text each."""
        return 2 * self.max_items_per_request * self.max_tokens_per_text

    @model_validator(mode="after")
    def _slow_uploads_end_before_shutdown(self) -> "Settings":
        # a slow upload gets its 408 before the graceful shutdown gives up on it (uvicorn would cancel
        # its task then: a 500 and a stack trace), so SIGTERM is never held past shutdown_timeout_s
        if self.body_timeout_s >= self.shutdown_timeout_s:
            raise ValueError("body_timeout_s must be less than shutdown_timeout_s, so that slow uploads end "
                             "(408) before the graceful shutdown's bound")
        return self

    @model_validator(mode="after")
    def _request_fits_queue(self) -> "Settings":
        # a request of 1/8 of a capacity or more may fill the queue only to the other 7/8 (MicroBatcher.admits)
        if self.queue_capacity - reserve(self.queue_capacity) < 2 * self.max_items_per_request:
            raise ValueError("queue_capacity less its reserve for small requests (1/8) must be at least "
                             "2 * max_items_per_request, or a full /similarity request could never be accepted")
        if self.queue_capacity_tokens - reserve(self.queue_capacity_tokens) < self.max_request_cost:
            raise ValueError("queue_capacity_tokens less its reserve for small requests (1/8) must be at least "
                             "2 * max_items_per_request * max_tokens_per_text, or a full /similarity request of "
                             "long texts could never be accepted")
        return self
