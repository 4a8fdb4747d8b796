"""Every knob of the policy service, declared once (flags of ``rlhf serve-policy`` are generated from it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from rlhf_assets.config_schema import FileConfig, settings

PositiveInt = Annotated[int, Field(ge=1)]


@settings
class PolicyServeSettings(FileConfig):
    """How ``rlhf serve-policy`` listens, samples, guards what it serves and logs it (the blocklist and regexes are
    evaluation/response_filters.py's ResponseFilterSettings, flags of the same command)."""

    host: str = "127.0.0.1"
    """Interface to bind; anything but loopback needs a token (RLHF_SERVE_TOKEN)."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8090
    """TCP port (0: any free port, printed at start)."""
    threads: Annotated[int, Field(ge=0)] = 0
    """Intra-op threads of torch (0: the machine's cores)."""

    max_client_batch: PositiveInt = 16
    """Prompts one request may carry."""
    max_body_bytes: PositiveInt = 256 * 1024
    """Largest request body; a larger one is refused while it is being read (413)."""
    max_in_flight: PositiveInt = 64
    """Requests being served at once; more get 429 with Retry-After at once."""
    max_prompt_chars: PositiveInt = 8000
    """Longest prompt accepted (422 above it); the policy sees its last max_prompt_tokens tokens."""

    temperature: Annotated[float, Field(gt=0)] | None = None
    """Sampling temperature (None: the policy's own, from its train_config). The KL and the logged log-probs are
    those of softmax(logits / T), the distribution sampled from."""
    max_new_tokens: PositiveInt | None = None
    """Response length cap (None: the policy's train_config)."""
    max_prompt_tokens: PositiveInt | None = None
    """Prompt tokens kept, the end of the prompt (None: the policy's train_config)."""

    max_wait_ms: Annotated[float, Field(ge=0)] = 20.0
    """How long the first prompt of a batch waits for concurrent requests' prompts to share its generate call (the
    reward-model service's micro-batcher, serving/batcher.py; no wait when no other request is in flight)."""
    max_batch_size: PositiveInt = 32
    """Prompts per generate call (sampling, the reference's pass for the KL guard and the reward, batched)."""
    max_batch_tokens: PositiveInt = 8192
    """Tokens per generate call, each prompt counted as its tokens plus max_new_tokens (items × longest)."""

    kl_limit: Annotated[float, Field(gt=0)] | None = None
    """Per-response limit on log π(y|x) − log π_ref(y|x) (nats, on the generated tokens): over it, the response is
    guarded. None: each release's own limit, kl_limit_factor × its measured KL (policy_serving/kl_limit.py); a
    number overrides that for every release."""
    kl_limit_factor: Annotated[float, Field(gt=0)] = 3.0
    """A release's own limit: this many times the upper end of the mean KL its kl_within_budget check measured."""
    kl_limit_floor: Annotated[float, Field(gt=0)] = 1.0
    """The least a release's own limit may be (nats): a policy that stayed very close to its reference is not
    guarded on the noise of single-response ratios."""
    kl_limit_max: Annotated[float, Field(gt=0)] = 32.0
    """The most a release's own limit may be (nats), and the limit of a release without KL evidence (no ppo_policy
    reference recording a measured KL for its policy, e.g. one promoted by hand)."""
    on_guard: Literal["reference", "refuse"] = "reference"
    """A guarded response is replaced by the reference policy's answer (itself filtered; refused if it trips a
    filter), or refused with refusal_text."""
    refusal_text: str = "I can't help with that."
    """What a refused request gets as its response."""
    classifier_url: str | None = None
    """A running `rlhf serve` (reward-model service) that scores each response (token: $RLHF_SERVE_TOKEN); a score
    below classifier_min_score trips the filter. None: no classifier."""
    classifier_min_score: float = 0.0
    """The lowest reward-model score a served response may have (with classifier_url)."""
    classifier_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    """A classifier call slower than this (or failing) counts as tripped: fail closed."""

    reload_interval_s: Annotated[float, Field(gt=0)] = 5.0
    """How often the registry's aliases are read; a change loads the new policy without a restart."""
    log_flush_rows: PositiveInt = 2000
    """Rows per policy-serving-log file at most."""
    log_flush_s: Annotated[float, Field(gt=0)] = 10.0
    """Buffered rows are written at least this often."""
    log_buffer_rows: PositiveInt = 50_000
    """Rows the log buffer holds; when full, new rows are dropped and counted (a request never waits on the log)."""

    insecure_no_auth: bool = False
    """Serve without a token; only allowed on a loopback address."""
    metrics_auth: bool = True
    """/metrics needs the token too."""

    CONFIG_LABEL = "serve-policy"

