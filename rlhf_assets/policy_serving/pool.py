"""Which policy versions are loaded and how traffic is routed, following the registry's ``production`` and
``canary`` aliases as the reward-model service does (serving/pool.py: load and warm in a thread, switch in one
assignment, the same sticky canary split by request key, the same leases: a request keeps the version it was routed
to until it ends). Each loaded version has two of that service's micro-batchers (serving/batcher.py): one for
generation (sample + the reference's pass for the KL guard + the reward), one for the reference's replacement answers,
so concurrent requests share their passes. Each version carries its release's own KL limit (kl_limit.py).

An alias is served when its release recorded a ``policy`` and its frozen reference ``sft_policy`` (with the
``reward_model`` and ``calibration`` the log's reward comes from): what deployment_decision writes.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from rlhf_assets.policy_serving.engine import PolicyTarget, ServedPolicy
from rlhf_assets.policy_serving.kl_limit import KLLimit, release_kl_limit
from rlhf_assets.policy_serving.metrics import PolicyMetrics
from rlhf_assets.policy_serving.settings import PolicyServeSettings
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.serving.batcher import MicroBatcher
from rlhf_assets.serving.pool import lease, routed_alias
from rlhf_assets.storage import Storage


def policy_target(holder: dict[str, Any] | None) -> PolicyTarget | None:
    arts = (holder or {}).get("artifacts") or {}
    if not (arts.get("policy") and arts.get("sft_policy") and arts.get("reward_model")):
        return None
    return PolicyTarget(arts["policy"], arts["sft_policy"], arts["reward_model"], arts.get("calibration"),
                        holder.get("release"))


@dataclass(frozen=True)
class PolicyRoutes:
    production: PolicyTarget | None = None
    canary: PolicyTarget | None = None
    canary_share: float = 0.0


@dataclass
class PolicySlot:
    model: ServedPolicy
    generate: MicroBatcher   # (prompt, prompt ids) → Generated
    reference: MicroBatcher  # prompt ids → the reference's answer
    kl_limit: KLLimit
    leases: int = 0
    retired: bool = False

    def stop(self) -> None:
        self.generate.stop(timeout=0)  # each finishes its queue in the background, then ends
        self.reference.stop(timeout=0)


@dataclass
class PolicyRoute:
    slot: PolicySlot
    alias: str

    @property
    def target(self) -> PolicyTarget:
        return self.slot.model.target


@dataclass
class PolicyPool:
    storage: Storage
    settings: PolicyServeSettings
    metrics: PolicyMetrics
    routes: PolicyRoutes = field(default_factory=PolicyRoutes)
    slots: dict[PolicyTarget, PolicySlot] = field(default_factory=dict)
    not_ready_reason: str | None = "starting: loading the registry's policies"
    in_flight: Any = lambda: 1 << 30  # the service's count of requests in flight (the batchers read it)
    _refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)

    def route(self, key: str | None) -> PolicyRoute:
        r = self.routes
        alias = routed_alias(r.production is not None, r.canary is not None, r.canary_share, key)
        if alias is None:
            raise LookupError(self.not_ready_reason or "no policy to serve")
        return PolicyRoute(self.slots[r.production if alias == "production" else r.canary], alias)

    def lease(self, route: PolicyRoute) -> contextlib.AbstractContextManager[PolicySlot]:
        return lease(route.slot)

    async def refresh(self) -> bool:
        """Read the aliases; load and warm what changed, then switch. True when the routes changed. One refresh at a
        time (the follow loop and /admin/reload): a version is loaded once, never twice with a leaked copy."""
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> bool:
        aliases = await asyncio.to_thread(Registry(self.storage).aliases)
        production, canary = policy_target(aliases.get("production")), policy_target(aliases.get("canary"))
        share = float((aliases.get("canary") or {}).get("share") or 0.0) if canary else 0.0
        new = PolicyRoutes(production, canary, share)
        if new == self.routes:
            return False
        for target in (production, canary):
            if target is not None and target not in self.slots:
                self.slots[target] = await asyncio.to_thread(self._load, target)
        self.routes = new  # the switch: one assignment
        self.not_ready_reason = None if (production or canary) else (
            "no policy to serve: the registry's production/canary aliases hold no release with a policy and its "
            "sft_policy reference (promote one: `rlhf release promote R`)")
        for target in [t for t in self.slots if t not in (production, canary)]:
            slot = self.slots.pop(target)  # requests holding its slot finish with it; then its batchers stop
            slot.retired = True
            if slot.leases == 0:
                slot.stop()
        self._publish()
        return True

    def _load(self, target: PolicyTarget) -> PolicySlot:
        """Load and warm a version, with its batchers and its release's KL limit (in a worker thread)."""
        s = self.settings
        model = ServedPolicy(ArtifactStore(self.storage), target, temperature=s.temperature,
                             max_new_tokens=s.max_new_tokens, max_prompt_tokens=s.max_prompt_tokens)
        model.warm_up()
        name = target.policy_id[:12]

        def on_batch(size: int, waited: list[float]) -> None:
            self.metrics.batch_size.labels(model=target.policy_id).observe(size)
            for w in waited:
                self.metrics.queue_time.labels(model=target.policy_id).observe(w)

        def batcher(run: Any, length: Any, kind: str) -> MicroBatcher:
            return MicroBatcher(run, max_wait_ms=s.max_wait_ms, max_batch_size=s.max_batch_size,
                                max_batch_tokens=s.max_batch_tokens, name=f"{kind}-{name}", length=length,
                                on_batch=on_batch if kind == "generate" else None,
                                more_expected=lambda in_batch: self.in_flight() > in_batch)

        return PolicySlot(model, batcher(model.run, lambda item: model.item_tokens(item[1]), "generate"),
                          batcher(model.run_reference, model.item_tokens, "reference"),
                          release_kl_limit(self.storage, target.release, target.policy_id, s))

    def _publish(self) -> None:
        r = self.routes
        self.metrics.model_info.clear()
        self.metrics.kl_limit.clear()
        for target, slot in self.slots.items():
            alias = "production" if target == r.production else "canary"
            self.metrics.model_info.labels(model=target.policy_id, reference=target.reference_id,
                                           release=target.release or "", alias=alias).set(1)
            self.metrics.kl_limit.labels(model=target.policy_id, source=slot.kl_limit.source).set(slot.kl_limit.nats)

    def describe(self) -> dict[str, Any]:
        def one(t: PolicyTarget | None) -> dict | None:
            if t is None:
                return None
            limit = self.slots[t].kl_limit if t in self.slots else None
            return {"policy_id": t.policy_id, "reference_id": t.reference_id, "release": t.release,
                    "kl_limit": limit.nats if limit else None, "kl_limit_source": limit.source if limit else None}

        return {"production": one(self.routes.production), "canary": one(self.routes.canary),
                "canary_share": self.routes.canary_share}

    def close(self) -> None:
        for slot in self.slots.values():
            slot.generate.stop()
            slot.reference.stop()
        self.slots.clear()
