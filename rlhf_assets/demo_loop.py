"""The second half of ``rlhf demo``: the loop running by itself, after release 1 has been decided.

1. ``rlhf serve`` starts on loopback and follows the registry; simulated traffic and human audits flow in;
2. the sensors tick (evaluated against the real instance — the code the daemon runs — their run requests carried out
   in this process): release 1 graduates from canary on its live evidence (or was promoted already);
3. new annotations land and the landing sensor runs the data pillar for them;
4. the traffic drifts (another topic): the drift sensor fires, release 2 is trained, decided and applied, and
   graduates on live evidence in its turn;
5. the humans stop agreeing with release 2 (label drift): the human–RM correlation sensor rolls production back to
   release 1;
6. the registry history shows every alias move with its trigger.

The thresholds are the automation resource's, set for the demo's tiny models and small volumes in
:data:`DEMO_AUTOMATION` (written to a file the definitions read through ``RLHF_AUTOMATION_CONFIG``) and printed.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf_assets.storage import Storage

#: The demo's automation thresholds: windows of 200 scored responses, canaries judged on 20 audited pairs, and a
#: correlation threshold for its tiny reward models (whose test accuracy is about 0.6).
DEMO_AUTOMATION = {"window": 200, "min_window": 100, "pair_window": 100, "null_windows": 30,
                   "canary_min_audits": 20, "min_audits": 20, "audit_window": 150,
                   "min_human_rm_correlation": 0.1, "rollback_correlation": 0.0, "retrain_cooldown_s": 3600.0}
EXTRA_DAY = "2025-06-04"  # annotations that land while the loop runs


def write_automation_config(home: Path) -> Path:
    path = home / "automation.json"
    path.write_text(json.dumps(DEMO_AUTOMATION, indent=2))
    return path


class Service:
    """`rlhf serve` in its own process group on a free loopback port, with a fresh token."""

    def __init__(self, storage: Storage):
        self.token = secrets.token_urlsafe(24)
        env = {**os.environ, "RLHF_SERVE_TOKEN": self.token, "RLHF_STORAGE_ROOT": storage.uri}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rlhf_assets.serving.server", "--port", "0", "--reload-interval-s", "1",
             "--log-flush-s", "1"], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
        line = self.process.stderr.readline()
        match = re.search(r"http://[\d.]+:\d+", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the service did not start: {line}")
        self.url = match.group(0)

    def wait_for(self, artifact: str | None = None, alias: str = "production", timeout: float = 60) -> dict:
        """/readyz once it answers 200 (serving ``artifact`` as ``alias`` when given)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(self.url + "/readyz", timeout=5)
                doc = r.json()
                served = (doc.get(alias) or {}).get("artifact_id")
                if r.status_code == 200 and (artifact is None or artifact == served):
                    return doc
            except Exception:  # noqa: BLE001, S110 - not up yet
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the service never served {artifact or 'a model'}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def run_loop(definitions: Any, instance: Any, storage: Storage, release_run_config: dict,
             land_day: Callable[[str], None], progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Steps 1–6 above; returns what happened (the registry history, the sensors' actions, the alerts)."""
    from rlhf_assets.defs.sensors.ticking import carry_out, evaluate
    from rlhf_assets.registry.aliases import Registry
    from rlhf_assets.serving.traffic import Traffic, run_against_service

    registry = Registry(storage)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    cursors: dict[str, str | None] = {}
    story: list[str] = []

    def tick(sensor: str) -> Any:
        t = evaluate(sensor, instance, cursors.get(sensor), definitions)
        cursors[sensor] = t.cursor
        carry_out(t, instance, definitions, run_configs={"release_chain": release_run_config}, base_config=quiet)
        for request, run in zip(t.run_requests, t.runs):
            what = request.tags.get("rlhf/action") or request.tags.get("rlhf/trigger", "run")
            line = f"{sensor}: {what} → {run.job_def.name} {request.partition_key} " + \
                   ("succeeded" if run.success else "FAILED")
            story.append(line)
            progress("  " + line)
        for event in t.asset_events:
            if getattr(event, "passed", True) is False:
                progress(f"  {sensor}: {event.check_name} — {event.description}")
        return t

    def traffic(drift: str, pairs: int, seed: int) -> None:
        out = run_against_service(service.url, service.token, Traffic(drift=drift, seed=seed, audit_share=0.3),
                                  storage, rate=400, duration_s=120, max_requests=pairs)
        progress(f"  traffic ({drift}): {out['items']} compared pairs, {out['audit_rows']} audit labels")
        time.sleep(2.5)  # the service flushes its log every second

    def holder(alias: str) -> str | None:
        return (registry.current(alias) or {}).get("release")

    # the demo ran the data pillar for its first days itself: the landing sensor starts from a cursor that has seen
    # those files (its first evaluation, whose requests are not carried out), so only new files request runs
    cursors["landing_sensor"] = evaluate("landing_sensor", instance, None, definitions).cursor
    service = Service(storage)
    try:
        progress(f"serving on {service.url} (rlhf serve, following the registry) …")
        service.wait_for()
        progress("traffic and audits on release 1; the sensors tick …")
        traffic("none", 900, seed=1)
        tick("drift_sensor")
        tick("human_rm_correlation_sensor")
        story.append(f"after release 1's live evidence: production {holder('production')}, canary {holder('canary')}")
        progress(f"new annotations land for {EXTRA_DAY} …")
        land_day(EXTRA_DAY)
        tick("landing_sensor")
        tick("annotator_disagreement_sensor")
        production = registry.current("production")
        if production:
            service.wait_for(production["artifacts"]["reward_model"])
        progress("the traffic drifts (another topic) …")
        traffic("prompt", 300, seed=2)
        tick("drift_sensor")
        retrained = holder("canary") if holder("canary") != holder("production") else None
        if retrained:
            canary = registry.current("canary")
            service.wait_for(canary["artifacts"]["reward_model"], "canary")
            progress(f"release {retrained} is canary: live traffic and audits on it …")
            traffic("none", 2500, seed=3)
            tick("drift_sensor")
            tick("human_rm_correlation_sensor")
        production = registry.current("production")
        if production:
            service.wait_for(production["artifacts"]["reward_model"])
            progress(f"humans stop agreeing with {production['release']} (label drift) …")
            traffic("labels", 600, seed=4)
            tick("human_rm_correlation_sensor")
    finally:
        service.stop()
    history = [{k: e.get(k) for k in ("seq", "alias", "release", "action", "actor", "reason")}
               for e in registry.history()]
    return {"service": service.url, "story": story, "history": history,
            "aliases": {a: holder(a) for a in ("production", "canary")}}


def history_lines(loop: dict[str, Any]) -> list[str]:
    lines = ["", "registry history (every alias move, who moved it and why):"]
    for e in loop["history"]:
        reason = (e["reason"] or "")[:150]
        lines.append(f"  #{e['seq']:<3} {e['alias']:10} {str(e['release']):22} {e['action']:9} by {e['actor']}: "
                     f"{reason}")
    lines.append(f"now: production → {loop['aliases']['production'] or '-'}, canary → "
                 f"{loop['aliases']['canary'] or '-'}")
    return lines


def land_annotations(storage: Storage, day: str, seed: int = 7) -> None:
    """A new day of simulated panel judgements of the bundled pairs (what the annotation vendor sends)."""
    from rlhf_assets.preference.sample_data import load_hh_pairs
    from rlhf_assets.preference.simulator import landing_files, simulate_comparisons

    batch = simulate_comparisons(load_hh_pairs(limit=400), dates=[day], labels_per_pair=5, seed=seed,
                                 batch_id=f"hh-panel-{day}")
    for d, (name, data) in landing_files(batch, fmt="jsonl").items():
        storage.write_bytes(storage.landing_dir(d).joinpath(name), data)

