"""Every knob of the reward-model service, declared once (flags of ``rlhf serve`` are generated from it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

PositiveInt = Annotated[int, Field(ge=1)]

TOKEN_ENV = "RLHF_SERVE_TOKEN"


@settings
class ServeSettings(FileConfig):
    """How ``rlhf serve`` listens, batches, caches, follows the registry and logs."""

    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback needs a token (RLHF_SERVE_TOKEN)."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    """TCP port (0: any free port, printed at start)."""
    model: str | None = None
    """Artifact id (or unique prefix) or `latest`: served as `pinned` while the registry has no production alias."""
    backend: Literal["torch", "onnx"] = "torch"
    """Inference backend: PyTorch (inference mode) or ONNX Runtime (exported once from the safetensors, cached)."""
    threads: Annotated[int, Field(ge=0)] = 0
    """Intra-op threads of the backend (0: the machine's cores)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16: the torch backend's matmuls in bfloat16 (autocast): faster on CPUs with AVX512-BF16/AMX and on GPUs,
    scores within ~1e-2 of fp32 (rank agreement 0.9999 on HH-RLHF, bench/serving.py); fp32 is exact."""

    max_client_batch: PositiveInt = 32
    """Items one request may carry."""
    max_body_bytes: PositiveInt = 2 * 1024 * 1024
    """Largest request body; a larger one is refused while it is being read (413)."""
    max_in_flight: PositiveInt = 256
    """Requests being served at once; more get 429 with Retry-After at once."""
    max_wait_ms: Annotated[float, Field(ge=0)] = 4.0
    """How long the first item of a batch waits for others to share its forward pass."""
    max_batch_size: PositiveInt = 64
    """Items per forward pass."""
    max_batch_tokens: PositiveInt = 16384
    """Tokens (padded: items × longest) per forward pass."""

    cascade_student: str | None = None
    """Artifact id (or unique prefix, or `latest`) of a distilled student (rm_distilled): /v1/compare then scores
    every item with it and sends only those whose calibrated P(a ≻ b) is within cascade_band of 0.5 to the routed
    model (the teacher). None: no cascade. Requests for one version (/v1/models/{id}/…) never cascade."""
    cascade_band: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    """Half-width of the cascade's uncertainty band: |P − 0.5| ≤ band goes to the teacher (0.5: everything)."""

    cache_entries: Annotated[int, Field(ge=0)] = 100_000
    """Scores kept in the LRU cache (0: no cache)."""
    cache_bytes: Annotated[int, Field(ge=0)] = 64 * 1024 * 1024
    """Memory the cache may hold, in bytes."""
    pinned_models: PositiveInt = 4
    """Versions pinned through /v1/models/{id}/… kept loaded besides the aliases' (least recently used leaves)."""

    reload_interval_s: Annotated[float, Field(gt=0)] = 5.0
    """How often the registry's aliases are read; a change loads, warms and switches the model without a restart."""

    log_texts: bool = True
    """Keep prompt and response texts in the serving log (the audit sampling needs them)."""
    log_flush_rows: PositiveInt = 5000
    """Rows per serving-log file at most (a file is written when this many are buffered)."""
    log_flush_s: Annotated[float, Field(gt=0)] = 10.0
    """Buffered rows are written at least this often."""
    log_buffer_rows: PositiveInt = 100_000
    """Rows the log buffer holds; when full, new rows are dropped and counted (a request never waits on the log)."""

    insecure_no_auth: bool = False
    """Serve without a token; only allowed on a loopback address."""
    metrics_auth: bool = True
    """/metrics needs the token too (Prometheus sends it with `authorization: {credentials: …}`)."""

    CONFIG_LABEL = "serve"

    def __post_init__(self) -> None:
        if self.backend == "onnx" and self.precision != "fp32":
            raise ValueError("ServeSettings.precision: the onnx backend runs in fp32; bf16 needs --backend torch")
