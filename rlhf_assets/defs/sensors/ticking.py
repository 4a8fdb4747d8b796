"""Evaluating a sensor by hand against a real instance — what the daemon does on each tick — and carrying out what it
asks for in this process. The demo runs the loop this way without a daemon; tests use it too. The sensor code is the
same the daemon runs; only who executes the run requests differs (here: ``execute_in_process``, in order)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg


@dataclass
class Tick:
    sensor: str
    result: Any  # dg.SensorResult (or the sensor's raw return)
    runs: list[Any] = field(default_factory=list)  # ExecuteInProcessResult per run request carried out

    @property
    def cursor(self) -> str | None:
        return getattr(self.result, "cursor", None)

    @property
    def run_requests(self) -> list[dg.RunRequest]:
        return list(getattr(self.result, "run_requests", None) or [])

    @property
    def asset_events(self) -> list[Any]:
        return list(getattr(self.result, "asset_events", None) or [])


def evaluate(name: str, instance: dg.DagsterInstance, cursor: str | None, definitions: dg.Definitions) -> Tick:
    sensor = definitions.resolve_sensor_def(name)
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=definitions,
                                 resources=definitions.resources) as context:
        return Tick(name, sensor(context))


def carry_out(tick: Tick, instance: dg.DagsterInstance, definitions: dg.Definitions,
              run_configs: dict[str, dict] | None = None, base_config: dict | None = None) -> Tick:
    """Apply the tick the way the daemon would: dynamic partitions added, asset events stored, each run request
    executed (in order, in this process, with its own run config merged over ``base_config`` and over
    ``run_configs[job name]``, e.g. the tiny presets the demo trains with)."""
    result = tick.result
    sensor = definitions.resolve_sensor_def(tick.sensor)
    for request in getattr(result, "dynamic_partitions_requests", None) or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    for event in tick.asset_events:
        instance.report_runless_asset_event(event)
    for request in tick.run_requests:
        job_name = request.job_name or (sensor.job_name if sensor.has_jobs else None)
        job = definitions.resolve_job_def(job_name)
        config = _merge(_merge(base_config or {}, (run_configs or {}).get(job.name, {})), dict(request.run_config or {}))
        tick.runs.append(job.execute_in_process(partition_key=request.partition_key, instance=instance,
                                                tags=dict(request.tags), run_config=config, raise_on_error=False))
    return tick


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
