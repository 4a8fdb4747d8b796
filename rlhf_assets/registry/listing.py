"""What ``rlhf release list`` shows: releases with their verdicts, where the aliases point, and the history.

``release_listing(storage)`` is the JSON the CLI prints (``--json``); ``format_listing`` renders it for people.
No Dagster.
"""

from __future__ import annotations

from typing import Any

from rlhf_assets.registry.aliases import ALIASES, Registry
from rlhf_assets.registry.decisions import list_decisions
from rlhf_assets.registry.releases import list_releases
from rlhf_assets.storage import Storage


def release_listing(storage: Storage) -> dict[str, Any]:
    """{"aliases": {alias: release | None}, "releases": [{release, verdict, artifacts}], "history": [{time, alias,
    release, action, reason}]}.

    Releases are every release with a record or a decision (a partition added from the UI has no record), sorted
    by key (keys sort by time). ``verdict`` is None and ``artifacts`` {} until the release is decided.
    """
    registry = Registry(storage)
    state = registry.aliases()
    decisions = list_decisions(storage)
    keys = sorted({r.key for r in list_releases(storage)} | set(decisions))
    releases = [{"release": key, "verdict": decisions.get(key, {}).get("verdict"),
                 "artifacts": dict(decisions.get(key, {}).get("artifacts") or {})} for key in keys]
    history = [{k: e.get(k) for k in ("time", "alias", "release", "action", "reason")} for e in registry.history()]
    return {"aliases": {a: (state[a] or {}).get("release") for a in ALIASES}, "releases": releases,
            "history": history}


def format_listing(listing: dict[str, Any], last: int = 10) -> str:
    """A plain-text table of releases (verdict, which alias points at each), then the last ``last`` changes."""
    pointing: dict[str, list[str]] = {}
    for alias, release in listing["aliases"].items():
        if release:
            pointing.setdefault(release, []).append(alias)
    rows = [("RELEASE", "VERDICT", "ALIAS", "ARTIFACTS")]
    for r in listing["releases"]:
        short = " ".join(f"{name}={aid[:12]}" for name, aid in sorted(r["artifacts"].items()))
        rows.append((r["release"], r["verdict"] or "-", ",".join(pointing.get(r["release"], [])) or "-",
                     short or "-"))
    lines = _table(rows) if listing["releases"] else ["(no releases)"]
    aliases = ", ".join(f"{a} → {rel or '(none)'}" for a, rel in listing["aliases"].items())
    lines += ["", f"aliases: {aliases}"]
    history = listing["history"]
    shown = history[-last:] if last > 0 else []
    lines += ["", f"history (last {len(shown)} of {len(history)}):" if history else "history: (empty)"]
    if shown:
        lines += _table([("TIME", "ALIAS", "ACTION", "RELEASE", "REASON")] +
                        [(h["time"], h["alias"], h["action"], h["release"] or "-", h["reason"]) for h in shown])
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([str(c).ljust(w) for c, w in zip(row, widths)] + [str(row[-1])]).rstrip() for row in rows]
