"""The embedded local Dagster instance: SQLite under a project-local DAGSTER_HOME, no server."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DAGSTER_HOME = ".dagster"
TEMPLATE = Path(__file__).with_name("dagster_local.yaml")  # same content as the repository's dagster.yaml


def ensure_dagster_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Use $DAGSTER_HOME when set, else ./.dagster; create it with the local instance config if missing."""
    path = Path(home or os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(TEMPLATE.read_text())
    os.environ["DAGSTER_HOME"] = str(path)
    return path
