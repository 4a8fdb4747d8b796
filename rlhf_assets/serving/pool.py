"""Which model versions are loaded, which alias each serves, and how traffic is routed between them.

The pool follows the registry's aliases (``production``, ``canary`` with its share; rlhf_assets/registry/aliases.py):
on a change it loads the new version in the background, warms it, then switches the routes in one assignment, so a
request is routed either wholly before or wholly after. A request holds a lease on the version that took it;
a version no alias or pin needs any more is stopped once its last lease ends. Promotion, canary and rollback
(rematerializing an older ``production_release``) all reach the service this way, without a restart.

All pool state is owned by the event loop (no locks); only loading runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.registry.artifacts import ArtifactNotFound, ArtifactStore
from rlhf_assets.serving.batcher import MicroBatcher
from rlhf_assets.serving.engine import ServedModel
from rlhf_assets.serving.metrics import ServiceMetrics
from rlhf_assets.serving.settings import ServeSettings
from rlhf_assets.storage import Storage

REWARD_KINDS = ("reward_model", "judge_reward_model")
STUDENT_KIND = "rm_distilled"  # the cascade's student (rlhf_assets/reward/distill_release.py)
STUDENT_ALIAS = "cascade-student"


@dataclass(frozen=True)
class Target:
    """One version an alias points at: its reward model, the calibration it is served with, and its release."""

    artifact_id: str
    calibration_id: str | None = None
    release: str | None = None


@dataclass(frozen=True)
class Routes:
    """Where traffic goes; replaced whole on every change."""

    production: Target | None = None
    production_alias: str = "production"  # "pinned" when --model stands in for an empty registry
    canary: Target | None = None
    canary_share: float = 0.0
    registry_seq: int | None = None


@dataclass
class Slot:
    model: ServedModel
    batcher: MicroBatcher
    target: Target
    leases: int = 0
    retired: bool = False

    def stop(self) -> None:
        self.batcher.stop(timeout=0)  # finishes its queue in the background, then ends


@dataclass
class Route:
    """The version a request is served by: what the response and the log name."""

    slot: Slot
    alias: str

    @property
    def artifact_id(self) -> str:
        return self.slot.target.artifact_id

    @property
    def release(self) -> str | None:
        return self.slot.target.release


def key_share(key: str) -> float:
    """A request key's fixed place in [0, 1): the same key always lands on the same side of the canary split."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64


def routed_alias(has_production: bool, has_canary: bool, canary_share: float, key: str | None) -> str | None:
    """Which alias serves a request: the canary for its share of keys (sticky by key; random without one), or all
    of it while nothing is in production; None when neither alias is loaded. Both services route with this."""
    if not has_production:
        return "canary" if has_canary else None
    if has_canary and canary_share > 0 and (key_share(key) if key else random.random()) < canary_share:
        return "canary"
    return "production"


@contextlib.contextmanager
def lease(slot: Any) -> Iterator[Any]:
    """A request holds the slot (a loaded version, with ``leases``, ``retired`` and ``stop()``) it was routed to:
    a retired slot's batchers stop when its last lease ends, never under a request. Both services' pools use it."""
    slot.leases += 1
    try:
        yield slot
    finally:
        slot.leases -= 1
        if slot.retired and slot.leases == 0:
            slot.stop()


def targets_from_registry(aliases: dict[str, Any]) -> tuple[Target | None, Target | None, float, int | None]:
    def target(holder: dict | None) -> Target | None:
        if not holder or not (holder.get("artifacts") or {}).get("reward_model"):
            return None
        arts = holder["artifacts"]
        return Target(arts["reward_model"], arts.get("calibration"), holder.get("release"))

    canary = aliases.get("canary")
    share = float((canary or {}).get("share") or 0.0)
    seq = max((h or {}).get("history_seq") or 0 for h in (aliases.get("production"), canary)) or None
    return target(aliases.get("production")), target(canary), share, seq


@dataclass
class ModelPool:
    storage: Storage
    settings: ServeSettings
    metrics: ServiceMetrics
    routes: Routes = field(default_factory=Routes)
    slots: dict[str, Slot] = field(default_factory=dict)
    pinned: OrderedDict[str, None] = field(default_factory=OrderedDict)
    loading: dict[str, asyncio.Task] = field(default_factory=dict)
    not_ready_reason: str | None = "starting: loading the registry's models"
    pinned_model: Target | None = None  # --model, resolved once
    in_flight: Any = lambda: 1 << 30  # the service's count of requests in flight (the batchers read it)
    student: Slot | None = None  # the cascade's distilled student (ServeSettings.cascade_student), loaded once

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.storage)

    # routing ---------------------------------------------------------------------------------------------------
    def route(self, key: str | None) -> Route:
        r = self.routes
        alias = routed_alias(r.production is not None, r.canary is not None, r.canary_share, key)
        if alias is None:
            raise LookupError(self.not_ready_reason or "no model to serve")
        if alias == "canary":
            return Route(self.slots[r.canary.artifact_id], "canary")
        return Route(self.slots[r.production.artifact_id], r.production_alias)

    async def pinned_route(self, spec: str) -> Route:
        """A request for one version (/v1/models/{id}/…): loaded on first use, kept among the pinned LRU."""
        artifact_id = self._resolve(spec)
        if artifact_id not in self.slots:
            await self._ensure([self._target_for(artifact_id)])
        self.pinned[artifact_id] = None
        self.pinned.move_to_end(artifact_id)
        while len(self.pinned) > self.settings.pinned_models:
            old, _ = self.pinned.popitem(last=False)
            self._retire_if_unused(old)
        return Route(self.slots[artifact_id], "version")

    def _resolve(self, spec: str) -> str:
        for loaded in self.slots:
            if loaded == spec:
                return loaded
        try:
            artifact_id = self.store.resolve_id(spec)
            kind = self.store.manifest(artifact_id).get("kind")
        except (ArtifactNotFound, ValueError, OSError):
            raise KeyError(spec) from None
        if kind not in REWARD_KINDS:
            raise KeyError(spec)
        return artifact_id

    def _target_for(self, artifact_id: str) -> Target:
        """A version requested by id: served with the newest calibration artifact made for it, if any."""
        calibrations = [r for r in self.store.list("calibration")
                        if artifact_id in (self.store.manifest(r.id).get("parent_ids") or [])]
        return Target(artifact_id, calibrations[0].id if calibrations else None, None)

    def lease(self, route: Route) -> contextlib.AbstractContextManager[Slot]:
        return lease(route.slot)

    # following the registry ------------------------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Read the registry's aliases; load, warm and switch to what changed. True when the routes changed."""
        await self._ensure_student()
        aliases = await asyncio.to_thread(Registry(self.storage).aliases)
        production, canary, share, seq = targets_from_registry(aliases)
        alias = "production"
        if production is None and self.settings.model:
            if self.pinned_model is None:
                spec = self.settings.model
                kind_id = await asyncio.to_thread(self.store.resolve_id, spec, "reward_model")
                self.pinned_model = await asyncio.to_thread(self._target_for, kind_id)
            production, alias = self.pinned_model, "pinned"
        new = Routes(production, alias, canary, share if canary else 0.0, seq)
        if new == self.routes:
            return False
        if production is None and canary is None:
            self.not_ready_reason = ("no model to serve: the registry has no production or canary alias (promote a "
                                     "release: `rlhf release promote R`) and no --model was given")
        await self._ensure([t for t in (production, canary) if t is not None])
        old, self.routes = self.routes, new  # the switch: one assignment
        if production is not None or canary is not None:
            self.not_ready_reason = None
        for target in (old.production, old.canary):
            if target is not None:
                self._retire_if_unused(target.artifact_id)
        self._publish()
        return True

    async def _ensure(self, targets: list[Target]) -> None:
        for target in targets:
            current = self.slots.get(target.artifact_id)
            if current is not None and current.target.calibration_id == target.calibration_id:
                current.target = target if target.release else current.target
                current.retired = False
                continue
            task = self.loading.get(target.artifact_id)
            if task is None:
                task = asyncio.create_task(asyncio.to_thread(self._load, target))
                self.loading[target.artifact_id] = task
            try:
                slot = await task
            finally:
                self.loading.pop(target.artifact_id, None)
            previous = self.slots.get(target.artifact_id)
            self.slots[target.artifact_id] = slot
            if previous is not None and previous is not slot:
                previous.retired = True
                if previous.leases == 0:
                    previous.stop()

    async def _ensure_student(self) -> None:
        """Load the cascade's student the first time (its calibrator is the one stored with it)."""
        if not self.settings.cascade_student or self.student is not None:
            return
        try:
            artifact_id = await asyncio.to_thread(self.store.resolve_id, self.settings.cascade_student, STUDENT_KIND)
            kind = (await asyncio.to_thread(self.store.manifest, artifact_id)).get("kind")
        except (ArtifactNotFound, ValueError) as exc:
            raise ValueError(f"cascade_student {self.settings.cascade_student!r}: {exc}") from None
        if kind not in (STUDENT_KIND, *REWARD_KINDS):
            raise ValueError(f"cascade_student {self.settings.cascade_student!r} is a {kind!r} artifact, not a "
                             f"reward model ({STUDENT_KIND} or {', '.join(REWARD_KINDS)})")
        self.student = await asyncio.to_thread(self._load, Target(artifact_id), True)
        self._publish()

    def student_route(self) -> Route | None:
        return Route(self.student, STUDENT_ALIAS) if self.student is not None else None

    def _load(self, target: Target, student: bool = False) -> Slot:
        """Load and warm a version (in a worker thread)."""
        store = self.store
        calibrator = None
        if student:
            from rlhf_assets.reward.distill_release import student_calibrator

            calibrator = student_calibrator(store.get(target.artifact_id))
        elif target.calibration_id:
            doc = json.loads((store.get(target.calibration_id) / "calibration.json").read_text())
            calibrator = doc.get("calibrator")
        model = ServedModel(store.get(target.artifact_id), target.artifact_id, calibrator=calibrator,
                            calibration_id=target.calibration_id, backend=self.settings.backend,
                            threads=self.settings.threads, precision=self.settings.precision)
        model.warm_up()
        s = self.settings
        name = target.artifact_id[:12]

        def on_batch(size: int, waited: list[float]) -> None:
            self.metrics.batch_size.labels(model=target.artifact_id).observe(size)
            for w in waited:
                self.metrics.queue_time.labels(model=target.artifact_id).observe(w)

        batcher = MicroBatcher(model.run, max_wait_ms=s.max_wait_ms, max_batch_size=s.max_batch_size,
                               max_batch_tokens=s.max_batch_tokens, name=name, on_batch=on_batch,
                               more_expected=lambda in_batch: self.in_flight() > in_batch)
        return Slot(model, batcher, target)

    def _needed(self) -> set[str]:
        r = self.routes
        return {t.artifact_id for t in (r.production, r.canary) if t is not None} | set(self.pinned)

    def _retire_if_unused(self, artifact_id: str) -> None:
        slot = self.slots.get(artifact_id)
        if slot is None or artifact_id in self._needed():
            return
        del self.slots[artifact_id]
        slot.retired = True
        if slot.leases == 0:
            slot.stop()
        self._publish()

    def _publish(self) -> None:
        r = self.routes
        rows = []
        for artifact_id, slot in self.slots.items():
            alias = ("canary" if r.canary and r.canary.artifact_id == artifact_id else
                     r.production_alias if r.production and r.production.artifact_id == artifact_id else "version")
            rows.append((artifact_id, slot.target.release or "", alias, slot.model.backend.name))
        if self.student is not None:
            rows.append((self.student.target.artifact_id, "", STUDENT_ALIAS, self.student.model.backend.name))
        self.metrics.set_models(rows)

    def describe(self) -> dict[str, Any]:
        r = self.routes

        def one(t: Target | None) -> dict | None:
            return None if t is None else {"artifact_id": t.artifact_id, "release": t.release,
                                           "calibration_id": t.calibration_id}

        return {"production": one(r.production), "production_alias": r.production_alias, "canary": one(r.canary),
                "canary_share": r.canary_share, "loaded": sorted(self.slots), "registry_seq": r.registry_seq}

    def close(self) -> None:
        for slot in [*self.slots.values(), *([self.student] if self.student is not None else [])]:
            slot.batcher.stop()
        self.slots.clear()
        self.student = None
