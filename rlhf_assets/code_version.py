"""The code version stamped on every table manifest and artifact: the package version plus a source digest."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from rlhf_assets import __version__


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus a digest of the package's Python sources: changes whenever the code does."""
    h = hashlib.sha256()
    package = Path(__file__).parent
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode())
        h.update(path.read_bytes())
    return f"{__version__}+{h.hexdigest()[:12]}"
