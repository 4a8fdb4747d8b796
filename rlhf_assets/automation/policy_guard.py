"""Human-in-the-loop escalation from the served policy's runtime guard (pure functions; the sensor acts on them).

``rlhf serve-policy`` logs every response with its log-likelihood ratio to the reference (``kl``) and whether it was
guarded (policy_serving/log.py). The sensor reads that log incrementally (automation/log_cursor.py) and carries,
in its cursor, only each alias holder's newest rows (:func:`live_rows`). Per release holding ``production`` or
``canary``, over its newest
``policy_guard_window`` responses served since it took that alias: the share guarded and the mean kl. When either
exceeds the allowed divergence (``max_guarded_share``; for the mean KL the limit the release gate held it to, its
recorded ``measured_kl.limit``, else ``max_live_mean_kl``) on at least
``policy_guard_min_responses`` responses, the release is **escalated**: an ``escalate`` entry in the registry history
for a person, with the evidence, and it is moved out — a canary is ended, production is rolled back to the release
that held it before (none before: the escalation and the alert only, production stays). One escalation per tenure:
a release already escalated since it took its alias is not escalated again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import polars as pl

from rlhf_assets.automation.actions import Action, previous_production
from rlhf_assets.automation.settings import AutomationSettings


@dataclass
class GuardStats:
    alias: str
    release: str
    policy_id: str
    n: int
    guarded_share: float
    mean_kl: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Escalation:
    alias: str
    release: str
    trigger: str
    evidence: dict[str, Any]
    move: Action | None  # end_canary / rollback; None when there is nothing to roll back to


def _since(holder: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(holder["since"]).replace("Z", "+00:00"))


#: What the guard figures need of a logged response (the sensor's cursor carries these rows between ticks).
LIVE_SCHEMA = {"alias": pl.String, "release": pl.String, "policy_id": pl.String, "time": pl.Datetime("us", "UTC"),
               "guarded": pl.Boolean, "kl": pl.Float64}


def guard_rows(log: pl.DataFrame) -> pl.DataFrame:
    """Policy-serving-log rows reduced to LIVE_SCHEMA."""
    if log.height == 0:
        return pl.DataFrame(schema=LIVE_SCHEMA)
    return log.select("alias", "release", "policy_id", pl.col("time").cast(LIVE_SCHEMA["time"]),
                      guarded=pl.col("guard_reasons").list.len() > 0, kl=pl.col("kl").cast(pl.Float64))


def live_rows(kept: pl.DataFrame, new_log: pl.DataFrame, aliases: dict[str, Any], window: int) -> pl.DataFrame:
    """Per alias holder with a policy, its newest ``window`` responses under that alias since it took it, from the
    rows kept at the last tick and the log rows read since (LIVE_SCHEMA)."""
    rows = pl.concat([kept.cast(LIVE_SCHEMA), guard_rows(new_log)]) if kept.height else guard_rows(new_log)
    parts = []
    for alias in ("production", "canary"):
        holder = aliases.get(alias)
        policy = ((holder or {}).get("artifacts") or {}).get("policy")
        if not policy or rows.height == 0:
            continue
        parts.append(rows.filter((pl.col("alias") == alias) & (pl.col("release") == holder["release"])
                                 & (pl.col("policy_id") == policy) & (pl.col("time") >= _since(holder)))
                     .sort("time").tail(window))
    return pl.concat(parts) if parts else pl.DataFrame(schema=LIVE_SCHEMA)


def rows_to_cursor(rows: pl.DataFrame) -> dict[str, list]:
    return rows.with_columns(pl.col("time").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f%z")).to_dict(as_series=False)


def rows_from_cursor(doc: dict[str, list] | None) -> pl.DataFrame:
    if not doc:
        return pl.DataFrame(schema=LIVE_SCHEMA)
    frame = pl.DataFrame(doc).with_columns(pl.col("time").str.to_datetime("%Y-%m-%dT%H:%M:%S%.6f%z"))
    return frame.cast(LIVE_SCHEMA)


def live_guard_stats(live: pl.DataFrame) -> list[GuardStats]:
    """Per alias holder, over its newest responses (:func:`live_rows`): the share guarded and the mean kl."""
    out = []
    for (alias,), part in live.group_by(["alias"], maintain_order=True):
        out.append(GuardStats(alias, part["release"][0], part["policy_id"][0], part.height,
                              float(part["guarded"].mean()), float(part["kl"].mean())))
    return out


def escalations(stats: list[GuardStats], aliases: dict[str, Any], history: list[dict[str, Any]],
                settings: AutomationSettings, release_kl_limits: dict[str, float] | None = None) -> list[Escalation]:
    """``release_kl_limits``: release → the mean-KL limit its gate held it to (policy_serving/kl_limit.py's
    gated_kl_limit); a release without one is held to ``max_live_mean_kl``."""
    out = []
    for s in stats:
        if s.n < settings.policy_guard_min_responses:
            continue
        over = []
        if s.guarded_share > settings.max_guarded_share:
            over.append(f"{s.guarded_share:.0%} of responses guarded > {settings.max_guarded_share:.0%}")
        own = (release_kl_limits or {}).get(s.release)
        kl_limit = own if own is not None else settings.max_live_mean_kl
        if s.mean_kl > kl_limit:
            over.append(f"mean KL to the reference {s.mean_kl:.2f} nats > {kl_limit:g}"
                        + (" (the release's gate limit)" if own is not None else ""))
        if not over:
            continue
        holder = aliases[s.alias]
        if any(e["action"] == "escalate" and e["alias"] == s.alias and e["release"] == s.release
               and e["seq"] > holder["history_seq"] for e in history):
            continue  # already escalated in this tenure; its move is under way or was refused
        trigger = f"{s.alias} {s.release}: {' and '.join(over)} on its last {s.n} served responses"
        evidence = {**s.to_dict(), "max_guarded_share": settings.max_guarded_share,
                    "max_live_mean_kl": kl_limit, "kl_limit_source": "release" if own is not None else "settings"}
        if s.alias == "canary":
            move = Action("end_canary", trigger, evidence, s.release)
        else:
            previous = previous_production(history, s.release)
            move = Action("rollback", trigger, evidence, previous) if previous else None
        out.append(Escalation(s.alias, s.release, trigger, evidence, move))
    return out
