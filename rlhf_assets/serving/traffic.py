"""Simulated production traffic and human audits, for the demo, the tests and the drift benchmark.

    rlhf simulate-traffic --drift none|score|prompt|labels --rate R --duration S [--url URL] [--audit-share 0.2]

Each request compares a pair from the bundled data: HH-RLHF (prompt, chosen, rejected), shown in a random order,
sticky per simulated user (``key``). Drift scenarios change what is sent:

- ``score``: the responses are cut to their first few words — a policy that turned terse; the reward model scores
  them differently, so the served score distribution shifts;
- ``prompt``: the prompts come from another source (the bundled SQuALITY story questions): a topic change;
- ``labels``: the traffic is unchanged but the human audits disagree with the model (the annotators prefer the
  response the data calls rejected): the human–RM correlation falls.

With ``url`` the pairs go to a running service (``POST /v1/compare``, which writes the serving log); without it
they are scored in this process with the same engine and the serving-log rows are written directly. A share of the
pairs is audited: ``audit_labels`` simulated annotators label each one, appended to
``landing/audits/date=YYYY-MM-DD/`` in the comparison schema (the human–RM correlation sensor joins them with the
log).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from rlhf_assets.storage import Storage

DRIFTS = ("none", "score", "prompt", "labels")


@dataclass(frozen=True)
class SimPair:
    prompt: str
    better: str  # what the data (the simulated humans' truth) prefers
    worse: str


def pairs_for(drift: str, seed: int = 0) -> list[SimPair]:
    """The pairs a scenario sends (shuffled, seeded)."""
    from rlhf_assets.preference.sample_data import load_hh_pairs, load_squality_comparisons

    if drift not in DRIFTS:
        raise ValueError(f"drift must be one of {', '.join(DRIFTS)}; got {drift!r}")
    if drift == "prompt":
        rows = load_squality_comparisons()
        pairs = [SimPair(r["prompt"], r["response_a"], r["response_b"]) if r["label"] != "b"
                 else SimPair(r["prompt"], r["response_b"], r["response_a"]) for r in rows]
    else:
        pairs = [SimPair(p["prompt"], p["chosen"], p["rejected"]) for p in load_hh_pairs()]
    if drift == "score":
        pairs = [SimPair(p.prompt, _terse(p.better), _terse(p.worse)) for p in pairs]
    random.Random(seed).shuffle(pairs)
    return pairs


def _terse(text: str, words: int = 4) -> str:
    return " ".join(text.split()[:words]) or text


@dataclass
class Traffic:
    """A stream of compare requests and the audits of some of them."""

    drift: str = "none"
    seed: int = 0
    users: int = 50
    audit_share: float = 0.2
    audit_labels: int = 3
    annotator_accuracy: float = 0.9

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.pairs = pairs_for(self.drift, self.seed)
        self.i = 0

    def requests(self) -> Iterator[tuple[dict[str, str], SimPair, bool]]:
        """(request body, the pair, whether response_a is the better one), forever."""
        while True:
            pair = self.pairs[self.i % len(self.pairs)]
            self.i += 1
            a_better = self.rng.random() < 0.5
            a, b = (pair.better, pair.worse) if a_better else (pair.worse, pair.better)
            yield ({"prompt": pair.prompt, "response_a": a, "response_b": b,
                    "key": f"user-{self.rng.randrange(self.users)}"}, pair, a_better)

    def audit(self, body: dict[str, str], a_better: bool, when: datetime) -> list[dict[str, Any]]:
        """The simulated annotators' judgements of one served pair (comparison schema), or [] when not audited."""
        if self.rng.random() >= self.audit_share:
            return []
        prefers_a = a_better if self.drift != "labels" else not a_better  # label drift: humans turned around
        rows = []
        for k in range(self.audit_labels):
            correct = self.rng.random() < self.annotator_accuracy
            label = ("a" if prefers_a else "b") if correct else ("b" if prefers_a else "a")
            rows.append({"comparison_id": uuid.uuid4().hex, "prompt": body["prompt"], "response_a": body["response_a"],
                         "response_b": body["response_b"], "label": label, "annotator_id": f"auditor-{k}",
                         "created_at": when.strftime("%Y-%m-%dT%H:%M:%SZ"), "batch_id": f"audit-{self.drift}"})
        return rows


def write_audits(storage: Storage, rows: list[dict[str, Any]], when: datetime | None = None) -> str | None:
    """Append audit rows to the landing zone as one JSONL file (atomic); returns its path."""
    if not rows:
        return None
    when = when or datetime.now(UTC)
    path = storage.landing_dir(when.strftime("%Y-%m-%d"), "audits").joinpath(
        f"audit-{when:%H%M%S%f}-{uuid.uuid4().hex[:6]}.jsonl")
    storage.write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return str(path)


def run_against_service(url: str, token: str | None, traffic: Traffic, storage: Storage, *, rate: float,
                        duration_s: float, batch: int = 8, max_requests: int | None = None) -> dict[str, Any]:
    """Send compare requests at ``rate`` items/s for ``duration_s`` (in requests of ``batch`` items), audit a share."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    stream, sent, failed, audits = traffic.requests(), 0, 0, []
    start = time.monotonic()
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        while time.monotonic() - start < duration_s and (max_requests is None or sent < max_requests):
            items = [next(stream) for _ in range(batch)]
            bodies = [dict(b) for b, _, _ in items]
            for b in bodies:
                b.pop("key")
            r = client.post("/v1/compare", json={"items": bodies}, headers={"X-Request-Key": items[0][0]["key"]})
            if r.status_code != 200:
                failed += len(items)
            else:
                now = datetime.now(UTC)
                for body, _, a_better in items:
                    audits.extend(traffic.audit(body, a_better, now))
            sent += len(items)
            wait = start + sent / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
    return {"items": sent, "failed": failed, "audit_rows": len(audits), "audit_file": write_audits(storage, audits)}


def write_log_directly(storage: Storage, model: Any, traffic: Traffic, *, items: int, release: str | None,
                       alias: str = "production", when: datetime | None = None) -> dict[str, Any]:
    """Score ``items`` compared pairs with ``model`` (a ServedModel) in this process and write what the service
    would have logged, plus the audits: no server needed (windows for tests and benchmarks)."""
    from rlhf_assets.serving.log import ServingLog

    when = when or datetime.now(UTC)
    stream, rows, audits = traffic.requests(), [], []
    for start in range(0, items, 32):  # 32 pairs (64 texts) per forward pass
        chunk = [next(stream) for _ in range(min(32, items - start))]
        texts = [(body["prompt"], body[f"response_{side}"]) for body, _, _ in chunk for side in ("a", "b")]
        seqs = [model.encode(p, r) for p, r in texts]
        scores, emb = model.run(seqs)
        p_a = model.probability(scores[0::2] - scores[1::2])
        for k, (body, _, a_better) in enumerate(chunk):
            rid = uuid.uuid4().hex
            for j, side in enumerate(("a", "b")):
                seq, response = seqs[2 * k + j], body[f"response_{side}"]
                rows.append({"time": when, "request_id": rid, "item": 0,
                             "key_hash": hashlib.sha256(body["key"].encode()).hexdigest(), "endpoint": "compare",
                             "side": side, "artifact_id": model.artifact_id, "release": release, "alias": alias,
                             "prompt_sha256": hashlib.sha256(body["prompt"].encode()).hexdigest(),
                             "response_sha256": hashlib.sha256(response.encode()).hexdigest(),
                             "prompt_tokens": seq.prompt_tokens, "tokens": len(seq.input_ids),
                             "truncated": seq.truncation, "score": float(scores[2 * k + j]), "p_a": float(p_a[k]),
                             "latency_ms": 0.0, "cache_hit": False,
                             "embedding": np.asarray(emb[2 * k + j], np.float32).tolist(),
                             "prompt": body["prompt"], "response": response})
            audits.extend(traffic.audit(body, a_better, when))
    log = ServingLog(storage, flush_rows=max(len(rows), 1), flush_s=3600, buffer_rows=len(rows) + 1)
    log.append(rows)
    log.close()
    return {"items": items, "rows": len(rows), "audit_rows": len(audits),
            "audit_file": write_audits(storage, audits, when)}
