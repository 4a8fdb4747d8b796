"""The one Definitions object: everything under defs/, plus resources and the executor."""

from pathlib import Path

import dagster as dg

from rlhf_assets.defs.io_manager import StorageIOManager
from rlhf_assets.defs.resources import (
    NotifierResource,
    automation_resource_from_env,
    release_thresholds_from_env,
    storage_resource_from_env,
)
from rlhf_assets.defs.training import training_launcher_from_env


@dg.definitions
def defs() -> dg.Definitions:
    storage = storage_resource_from_env()
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(
            resources={
                "storage": storage,
                "release_thresholds": release_thresholds_from_env(),
                "automation": automation_resource_from_env(),
                "notifier": NotifierResource(webhook_url=dg.EnvVar("RLHF_ALERT_WEBHOOK").get_value(None)),
                # every asset's output: tables as Parquet, typed references as JSON (defs/io_manager.py)
                "io_manager": StorageIOManager(root=storage.root, s3_endpoint_url=storage.s3_endpoint_url),
                # Training runs as its own process or pod (Lightning's launcher / torchrun own the ranks); rank 0
                # reports back through Dagster Pipes. Where: $RLHF_TRAINING_CONFIG (defs/training.py).
                "training_launcher": training_launcher_from_env(),
            },
        ),
    )
