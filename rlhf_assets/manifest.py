"""Manifests: what exactly a table partition or artifact holds, so a release can pin the data it used."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from rlhf_assets import __version__
from rlhf_assets.preference.schema import SCHEMA_VERSION


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a digest of the package's Python sources: changes whenever the code does."""
    h = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"


def table_manifest(asset: str, partition: str | None, sha256: str, rows: int, columns: list[str],
                   **extra: Any) -> dict[str, Any]:
    return {
        "asset": asset,
        "partition": partition,
        "sha256": sha256,
        "rows": rows,
        "columns": columns,
        "schema_version": SCHEMA_VERSION,
        "code_version": code_version(),
        **extra,
    }
