"""The policy service's Prometheus metrics (a registry of its own). ``requests``, ``in_flight`` and ``rejected`` have
the shape serving/app.py's InFlightLimit counts with; the rest are the guard's."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rlhf_assets.serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

KL_BUCKETS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class PolicyMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rlhf_policy_requests", "HTTP requests by model, alias, endpoint and status code.",
                                ["model", "alias", "endpoint", "code"], registry=r)
        self.in_flight = Gauge("rlhf_policy_in_flight", "Requests being served.", registry=r)
        self.rejected = Counter("rlhf_policy_overload_rejections", "Requests refused with 429 (over max_in_flight).",
                                registry=r)
        self.latency = Histogram("rlhf_policy_request_latency_seconds", "Request latency by model.", ["model"],
                                 buckets=LATENCY_BUCKETS + (30.0, 60.0), registry=r)
        self.responses = Counter("rlhf_policy_responses", "Responses by model, alias and what was served (policy, "
                                 "reference, refused).", ["model", "alias", "served"], registry=r)
        self.guarded = Counter("rlhf_policy_guarded", "Guard trips by model, alias and rule (kl, blocklist, regex, "
                               "classifier); a response can trip several.", ["model", "alias", "rule"], registry=r)
        self.kl = Histogram("rlhf_policy_response_kl", "Per-response log-likelihood ratio to the reference (nats).",
                            ["model"], buckets=KL_BUCKETS, registry=r)
        self.model_info = Gauge("rlhf_policy_model_info", "1 per loaded policy: artifact id, reference, release, "
                                "alias.", ["model", "reference", "release", "alias"], registry=r)
        self.reloads = Counter("rlhf_policy_reloads", "Registry alias changes applied (or failed).", ["result"],
                               registry=r)
        self.batch_size = Histogram("rlhf_policy_batch_size", "Prompts per generate call (concurrent requests "
                                    "share one: micro-batching), by model.", ["model"], buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_time = Histogram("rlhf_policy_queue_seconds", "Time a prompt waited for its generate call, by "
                                    "model.", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.kl_limit = Gauge("rlhf_policy_kl_limit", "The per-response KL limit (nats) each loaded policy is guarded "
                              "with, and where it comes from (release, override, no evidence).",
                              ["model", "source"], registry=r)
        self.classifier_errors = Counter("rlhf_policy_classifier_errors", "Classifier calls that failed or timed "
                                         "out (counted as tripped: fail closed).", registry=r)
        self.log_rows = Counter("rlhf_policy_serving_log_rows", "Policy-serving-log rows by outcome.", ["outcome"],
                                registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
