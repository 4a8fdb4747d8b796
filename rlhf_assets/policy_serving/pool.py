"""Which policy versions are loaded and how traffic is routed, following the registry's ``production`` and
``canary`` aliases as the reward-model service does (serving/pool.py: load and warm in a thread, switch in one
assignment, the same sticky canary split by request key; a request keeps the version it was routed to until it ends).

An alias is served when its release recorded a ``policy`` and its frozen reference ``sft_policy`` (with the
``reward_model`` and ``calibration`` the log's reward comes from): what deployment_decision writes.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from rlhf_assets.policy_serving.engine import PolicyTarget, ServedPolicy
from rlhf_assets.policy_serving.metrics import PolicyMetrics
from rlhf_assets.policy_serving.settings import PolicyServeSettings
from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactStore
from rlhf_assets.serving.pool import key_share
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

    def route(self, key: str | None) -> PolicyRoute:
        r = self.routes
        if r.production is None:
            if r.canary is not None:
                return PolicyRoute(self.slots[r.canary], "canary")
            raise LookupError(self.not_ready_reason or "no policy to serve")
        if r.canary is not None and r.canary_share > 0:
            if (key_share(key) if key else random.random()) < r.canary_share:
                return PolicyRoute(self.slots[r.canary], "canary")
        return PolicyRoute(self.slots[r.production], "production")

    async def refresh(self) -> bool:
        """Read the aliases; load and warm what changed, then switch. True when the routes changed."""
        aliases = await asyncio.to_thread(Registry(self.storage).aliases)
        production, canary = policy_target(aliases.get("production")), policy_target(aliases.get("canary"))
        share = float((aliases.get("canary") or {}).get("share") or 0.0) if canary else 0.0
        new = PolicyRoutes(production, canary, share)
        if new == self.routes:
            return False
        for target in (production, canary):
            if target is not None and target not in self.slots:
                model = await asyncio.to_thread(self._load, target)
                self.slots[target] = PolicySlot(model)
        self.routes = new  # the switch: one assignment
        self.not_ready_reason = None if (production or canary) else (
            "no policy to serve: the registry's production/canary aliases hold no release with a policy and its "
            "sft_policy reference (promote one: `rlhf release promote R`)")
        for target in [t for t in self.slots if t not in (production, canary)]:
            del self.slots[target]  # requests holding its slot finish with it; then it is garbage
        self._publish()
        return True

    def _load(self, target: PolicyTarget) -> ServedPolicy:
        s = self.settings
        model = ServedPolicy(ArtifactStore(self.storage), target, temperature=s.temperature,
                             max_new_tokens=s.max_new_tokens, max_prompt_tokens=s.max_prompt_tokens)
        model.warm_up()
        return model

    def _publish(self) -> None:
        r = self.routes
        self.metrics.model_info.clear()
        for target in self.slots:
            alias = "production" if target == r.production else "canary"
            self.metrics.model_info.labels(model=target.policy_id, reference=target.reference_id,
                                           release=target.release or "", alias=alias).set(1)

    def describe(self) -> dict[str, Any]:
        def one(t: PolicyTarget | None) -> dict | None:
            return None if t is None else {"policy_id": t.policy_id, "reference_id": t.reference_id,
                                           "release": t.release}

        return {"production": one(self.routes.production), "canary": one(self.routes.canary),
                "canary_share": self.routes.canary_share}
