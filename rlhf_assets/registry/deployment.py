"""Moving the registry's aliases for a release: applying its deployment decision, and rolling back to it. No
Dagster: the ``production_release`` asset calls :func:`apply_decision` (mode ``apply``) or :func:`rollback`
(mode ``rollback``).

:func:`apply_decision`:

- ``promote``: ``production`` → this release's artifacts (action ``promote``; ``rollback`` when this release held
  production before with exactly these artifacts and another one holds it now). A canary of the same release ends
  (it graduated).
- ``canary``: ``canary`` → this release's artifacts with the decision's traffic share.
- ``reject`` / ``escalate``: nothing moves — unless an override reason AND an approver are given; then
  ``production`` moves with action ``override`` and both are recorded.
- Applying a decision whose alias already points at exactly these artifacts changes nothing (no history entry), so
  rematerializing is idempotent.

:func:`rollback` does not look at the decision at all: ``production`` goes back to exactly the artifacts the release
last held IN PRODUCTION according to the history (whether it got there by promote, override or rollback), action
``rollback``. A release that never held production (only canary, or never deployed) raises
:class:`NeverInProduction`, which names the releases that did.

Live evidence moves a canary (the automation sensors, through ``production_release``'s modes): :func:`graduate`
promotes the release holding the canary alias to production (action ``promote``); :func:`end_canary` takes it out of
canary (alias cleared). Every move records ``why`` — the trigger and its evidence — in the history.
"""

from __future__ import annotations

from typing import Any

from rlhf_assets.registry.aliases import NOT_A_MOVE, Registry
from rlhf_assets.storage import Storage


class NeverInProduction(ValueError):
    """Rollback to a release that never held the production alias."""

    def __init__(self, release: str, held: list[str]):
        self.release, self.held = release, held
        did = f"releases that did: {', '.join(held)}" if held else "no release has held production yet"
        super().__init__(f"release {release} never held production, so there is nothing to roll back to ({did})")


def last_in_production(history: list[dict[str, Any]], release: str) -> dict[str, Any] | None:
    """The newest history entry that put ``release`` in production (any action), or None."""
    return next((e for e in reversed(history) if e["alias"] == "production" and e["release"] == release
                 and e["action"] not in NOT_A_MOVE), None)


def production_releases(history: list[dict[str, Any]]) -> list[str]:
    """Every release that has held production, in the order each first did."""
    return list(dict.fromkeys(e["release"] for e in history
                              if e["alias"] == "production" and e["action"] not in NOT_A_MOVE))


def rollback(storage: Storage, release: str, *, actor: str = "dagster", why: str | None = None) -> dict[str, Any]:
    """Point ``production`` back at exactly the artifacts ``release`` last held there (action ``rollback``); returns
    {"action", "alias", "reason", "entry", "aliases", "artifacts", "restored_from"}. ``unchanged`` when it holds them
    now; :class:`NeverInProduction` when it never held production."""
    registry = Registry(storage)
    history = registry.history()
    held = last_in_production(history, release)
    if held is None:
        raise NeverInProduction(release, production_releases(history))
    artifacts, holder = dict(held["artifacts"]), registry.current("production")
    base = {"alias": "production", "artifacts": artifacts, "restored_from": held["seq"]}
    if holder and holder["release"] == release and holder["artifacts"] == artifacts:
        return base | {"action": "unchanged", "entry": None, "aliases": registry.aliases(),
                       "reason": f"production already holds {release}'s artifacts"}
    reason = (f"rollback from {holder['release'] if holder else '(none)'} to {release}: the artifacts it held in "
              f"production at history entry {held['seq']} ({held['action']}, {held['time']})"
              + (f"; trigger: {why}" if why else ""))
    entry = registry.set_alias("production", release, artifacts, action="rollback", reason=reason, actor=actor)
    _end_canary_of(registry, release, actor)
    return base | {"action": "rollback", "entry": entry, "reason": reason, "aliases": registry.aliases()}


class NotInCanary(ValueError):
    """Graduating or ending a canary for a release that does not hold the canary alias."""

    def __init__(self, release: str, holder: str | None):
        super().__init__(f"release {release} does not hold the canary alias ("
                         + (f"{holder} does" if holder else "no release does") + ")")


def graduate(storage: Storage, release: str, *, why: str, actor: str = "dagster") -> dict[str, Any]:
    """The canary release goes to production with the artifacts it served as canary (action ``promote``); its
    canary ends. ``why`` is the live evidence. :class:`NotInCanary` when another release (or none) is canary."""
    registry = Registry(storage)
    canary = registry.current("canary")
    if not canary or canary["release"] != release:
        raise NotInCanary(release, (canary or {}).get("release"))
    reason = f"canary {release} graduated on live evidence: {why}"
    entry = registry.set_alias("production", release, dict(canary["artifacts"]), action="promote", reason=reason,
                               actor=actor)
    _end_canary_of(registry, release, actor)
    return {"action": "promote", "alias": "production", "entry": entry, "reason": reason,
            "aliases": registry.aliases(), "artifacts": dict(canary["artifacts"])}


def end_canary(storage: Storage, release: str, *, why: str, actor: str = "dagster") -> dict[str, Any]:
    """Take ``release`` out of canary (the alias is cleared; production is untouched). :class:`NotInCanary` when
    another release (or none) is canary."""
    registry = Registry(storage)
    canary = registry.current("canary")
    if not canary or canary["release"] != release:
        raise NotInCanary(release, (canary or {}).get("release"))
    reason = f"canary {release} rolled back on live evidence: {why}"
    entry = registry.clear_alias("canary", reason=reason, actor=actor)
    return {"action": "end_canary", "alias": "canary", "entry": entry, "reason": reason,
            "aliases": registry.aliases(), "artifacts": dict(canary["artifacts"])}


def _end_canary_of(registry: Registry, release: str, actor: str) -> None:
    canary = registry.current("canary")
    if canary and canary["release"] == release:
        registry.clear_alias("canary", reason=f"{release} is in production now", actor=actor)


def apply_decision(storage: Storage, release: str, decision: dict[str, Any], *, override_reason: str | None = None,
                   approver: str | None = None, actor: str = "dagster") -> dict[str, Any]:
    """Move the aliases as ``decision`` says; returns {"action", "alias", "reason", "entry", "aliases"}."""
    registry = Registry(storage)
    verdict, artifacts = decision["verdict"], dict(decision["artifacts"])
    share = None
    if verdict in ("reject", "escalate"):
        if not (override_reason and approver):
            return {"action": "none", "alias": None, "entry": None, "aliases": registry.aliases(),
                    "reason": f"verdict {verdict}: nothing moves (an override needs override_reason and approver; to "
                              "restore what it last held in production, roll back to it: `rlhf release rollback`)"}
        alias, action, who = "production", "override", approver
        reason = f"override of verdict {verdict} approved by {approver}: {override_reason}"
    elif verdict == "canary":
        alias, action, who, share = "canary", "canary", actor, float(decision.get("canary_share") or 0.1)
        reason = f"verdict canary at {share:.0%} of traffic: " + "; ".join(decision.get("reasons", []))
    else:
        alias, who = "production", actor
        holder, held = registry.current("production"), last_in_production(registry.history(), release)
        # A rollback only if it restores exactly what this release held (a re-decided release is a new promotion).
        back = holder is not None and holder["release"] != release and held is not None and (
            held["artifacts"] == artifacts)
        action = "rollback" if back else "promote"
        reason = (f"rollback from {holder['release']} to {release}" if back
                  else "verdict promote: " + ("; ".join(decision.get("reasons", [])) or "every gate passed"))
    current = registry.current(alias)
    if current and current["release"] == release and current["artifacts"] == artifacts and (
            share is None or current.get("share") == share):
        return {"action": "unchanged", "alias": alias, "entry": None, "aliases": registry.aliases(),
                "reason": f"{alias} already points at {release}"}
    entry = registry.set_alias(alias, release, artifacts, action=action, reason=reason, actor=who, share=share)
    if alias == "production":
        _end_canary_of(registry, release, who)
    return {"action": action, "alias": alias, "entry": entry, "reason": reason, "aliases": registry.aliases()}
