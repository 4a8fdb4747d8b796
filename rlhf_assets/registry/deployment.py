"""Applying a release's deployment decision to the registry's aliases — and rollback, which is the same act on an
older release. No Dagster: the ``production_release`` asset calls :func:`apply_decision`.

- ``promote``: ``production`` → this release's artifacts (action ``promote``; ``rollback`` when this release held
  production before and another one holds it now). A canary of the same release ends (it graduated).
- ``canary``: ``canary`` → this release's artifacts with the decision's traffic share.
- ``reject`` / ``escalate``: nothing moves — unless an override reason AND an approver are given; then
  ``production`` moves with action ``override`` and both are recorded.
- Applying a decision whose alias already points at exactly these artifacts changes nothing (no history entry), so
  rematerializing is idempotent.
"""

from __future__ import annotations

from typing import Any, Optional

from rlhf_assets.registry.aliases import Registry
from rlhf_assets.storage import Storage


def _held_production_before(registry: Registry, release: str) -> bool:
    return any(e["alias"] == "production" and e["release"] == release for e in registry.history())


def apply_decision(storage: Storage, release: str, decision: dict[str, Any], *, override_reason: Optional[str] = None,
                   approver: Optional[str] = None, actor: str = "dagster") -> dict[str, Any]:
    """Move the aliases as ``decision`` says; returns {"action", "alias", "reason", "entry", "aliases"}."""
    registry = Registry(storage)
    verdict, artifacts = decision["verdict"], dict(decision["artifacts"])
    share = None
    if verdict in ("reject", "escalate"):
        if not (override_reason and approver):
            return {"action": "none", "alias": None, "entry": None, "aliases": registry.aliases(),
                    "reason": f"verdict {verdict}: nothing moves (an override needs override_reason and approver)"}
        alias, action, who = "production", "override", approver
        reason = f"override of verdict {verdict} approved by {approver}: {override_reason}"
    elif verdict == "canary":
        alias, action, who, share = "canary", "canary", actor, float(decision.get("canary_share") or 0.1)
        reason = f"verdict canary at {share:.0%} of traffic: " + "; ".join(decision.get("reasons", []))
    else:
        alias, who = "production", actor
        holder = registry.current("production")
        back = holder is not None and holder["release"] != release and _held_production_before(registry, release)
        action = "rollback" if back else "promote"
        reason = (f"rollback from {holder['release']} to {release}" if back
                  else "verdict promote: " + ("; ".join(decision.get("reasons", [])) or "every gate passed"))
    current = registry.current(alias)
    if current and current["release"] == release and current["artifacts"] == artifacts and (
            share is None or current.get("share") == share):
        return {"action": "unchanged", "alias": alias, "entry": None, "aliases": registry.aliases(),
                "reason": f"{alias} already points at {release}"}
    entry = registry.set_alias(alias, release, artifacts, action=action, reason=reason, actor=who, share=share)
    canary = registry.current("canary")
    if alias == "production" and canary and canary["release"] == release:
        registry.clear_alias("canary", reason=f"{release} is in production now", actor=who)
    return {"action": action, "alias": alias, "entry": entry, "reason": reason, "aliases": registry.aliases()}
