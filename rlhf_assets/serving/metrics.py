"""The service's Prometheus metrics, in a registry of its own (several services can live in one process: tests).

Every series that is about a model carries its artifact id, and ``rlhf_rm_model_info`` maps each loaded artifact to
its release and alias, so a dashboard can tell which version produced what it shows.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("rlhf_rm_requests", "HTTP requests by model, alias, endpoint and status code.",
                                ["model", "alias", "endpoint", "code"], registry=r)
        self.items = Counter("rlhf_rm_items", "Items scored, by model and alias.", ["model", "alias"], registry=r)
        self.latency = Histogram("rlhf_rm_request_latency_seconds", "Request latency by model and endpoint.",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("rlhf_rm_queue_seconds", "Time an item waited for its batch, by model.",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("rlhf_rm_batch_size", "Items per forward pass, by model.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.cache = Counter("rlhf_rm_cache", "Score-cache lookups by result (hit, miss).", ["result"], registry=r)
        self.in_flight = Gauge("rlhf_rm_in_flight", "Requests being served.", registry=r)
        self.rejected = Counter("rlhf_rm_overload_rejections", "Requests refused with 429 (over max_in_flight).",
                                registry=r)
        self.model_info = Gauge("rlhf_rm_model_info", "1 for each loaded model version: artifact id, release, alias.",
                                ["model", "release", "alias", "backend"], registry=r)
        self.reloads = Counter("rlhf_rm_reloads", "Registry alias changes applied (or failed), by result.",
                               ["result"], registry=r)
        self.cascade = Counter("rlhf_rm_cascade_items", "Compared items under the student → teacher cascade, by who "
                               "decided them (student, teacher: escalated from the uncertainty band).",
                               ["decided_by"], registry=r)
        self.log_rows = Counter("rlhf_rm_serving_log_rows", "Serving-log rows by outcome (written, dropped, failed).",
                                ["outcome"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def set_models(self, rows: list[tuple[str, str, str, str]]) -> None:
        """The loaded versions now: (artifact id, release, alias, backend) each; the old series are removed."""
        self.model_info.clear()
        for model, release, alias, backend in rows:
            self.model_info.labels(model=model, release=release, alias=alias, backend=backend).set(1)
