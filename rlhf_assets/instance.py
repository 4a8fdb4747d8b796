"""The embedded local Dagster instance: SQLite under a project-local DAGSTER_HOME, no server."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path

DEFAULT_DAGSTER_HOME = ".dagster"
TEMPLATE = Path(__file__).with_name("dagster_local.yaml")  # same content as the repository's dagster.yaml

# The daily partitions' window, read by defs/partitions.py when the definitions load (here, so that setting them
# does not import the definitions first).
PARTITIONS_START_ENV = "RLHF_PARTITIONS_START"
PARTITIONS_END_ENV = "RLHF_PARTITIONS_END"
#: Beside the instance: the environment its definitions were loaded with, as shell assignments (`make ui` reads it).
UI_ENV_FILE = "rlhf.env"


def ensure_dagster_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Use $DAGSTER_HOME when set, else ./.dagster; create it with the local instance config if missing."""
    path = Path(home or os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(TEMPLATE.read_text())
    os.environ["DAGSTER_HOME"] = str(path)
    return path


def write_ui_env(home: str | os.PathLike[str], env: Mapping[str, str]) -> Path:
    """Save ``env`` (storage root, partition window) as ``<home>/rlhf.env``, so the UI opened on this instance
    loads the definitions the way the runs on it did."""
    path = Path(home) / UI_ENV_FILE
    path.write_text("".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items()))
    return path
